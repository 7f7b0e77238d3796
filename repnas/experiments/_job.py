"""One task of the GPU session, run in its own process: ``python -m repnas.experiments._job SPEC.json``.

The scheduler (:mod:`repnas.experiments._schedule`) starts one process per task so that packed runs
have their own CUDA contexts and a crash costs one task. A task writes exactly one result (a JSON,
atomically) and exits 0, or writes nothing and exits non-zero. Kinds:

- ``check_train``: ``repnas train rep_vgg6`` (the command line, in this process) for one epoch, then
  the checkpoint's model and its materialized copy compared on the device, in fp32 and under the
  trainer's bf16 autocast + channels_last (CUDA); the loss must be finite.
- ``check_search``: ``repnas search`` with ``--workers W --gpus-per-trial g``: every trial must
  complete, on the device.
- ``check_report``: ``repnas report`` of that search.
- ``bench_run``: one training run of the hand-made recipe (VGG11, 15 epochs): its seconds.
- ``run``: one (model, seed) of an experiment (``run_experiment`` writes its JSON).
- ``search``: a search chunk: start or resume a search until it holds ``target`` trials.

A check always writes its JSON (pass or fail, with the error's first line); the session reruns a
failed check next time.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from repnas._io import atomic_write_text
from repnas.experiments._runner import _torch_version

__all__ = ["main"]


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run ``repnas ARGV`` in this process; (exit code, what it printed)."""
    from repnas.cli import main as repnas_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = repnas_main(argv)
    return code, out.getvalue()


def _relative_error(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_train(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from repnas.rescale import materialize
    from repnas.train import RunConfig, resolve_device
    from repnas.train._trainer import _build_model, channels_last, load_splits

    work = Path(spec["work"])
    shutil.rmtree(work, ignore_errors=True)
    argv = ["train", spec["model"], "--dataset", spec["dataset"], "--device", spec["device"], "--out", str(work),
            "--json", "--quiet", *(["--data-dir", spec["data_dir"]] if spec.get("data_dir") else []),
            *(["--batch-size", str(spec["batch_size"])] if spec.get("batch_size") else []),
            *(["--steps", str(spec["steps"])] if spec.get("steps") else ["--epochs", str(spec.get("epochs", 1))])]
    code, text = _cli(argv)
    if code != 0:
        raise RuntimeError(f"repnas {' '.join(argv)} exited {code}: {text.strip().splitlines()[-1:]}")
    metrics = json.loads(text.strip().splitlines()[-1])
    losses = [metrics.get("train_loss"), metrics.get("val_loss"), metrics.get("test_loss")]
    finite = all(v is not None and math.isfinite(v) for v in losses)

    device = resolve_device(spec["device"])
    state = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = RunConfig.from_dict(state["config"])
    data = load_splits(cfg)
    model = _build_model(cfg, data)
    model.load_state_dict(state["model"])
    model = model.to(device).eval()
    plain = materialize(model).to(device).eval()
    torch.manual_seed(0)
    x = torch.randn(64, data.in_channels, *data.image_size, device=device)
    with torch.no_grad():
        fp32 = _relative_error(plain(x), model(x))
        cuda = device.type == "cuda"
        if cuda:
            model, plain = channels_last(model), channels_last(plain)
            xc = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = _relative_error(plain(xc), model(xc))
        else:
            bf16 = None
    tol_fp32, tol_bf16 = spec.get("tol_fp32", 1e-3), spec.get("tol_bf16", 3e-2)  # TF32 convs; bf16 operands
    ok = finite and fp32 <= tol_fp32 and (bf16 is None or bf16 <= tol_bf16)
    errors = [] if finite else [f"loss not finite: {losses}"]
    if fp32 > tol_fp32:
        errors.append(f"materialized != repeated in fp32: relative error {fp32:.2e} > {tol_fp32:g}")
    if bf16 is not None and bf16 > tol_bf16:
        errors.append(f"materialized != repeated under bf16: relative error {bf16:.2e} > {tol_bf16:g}")
    return {"pass": ok, "error": "; ".join(errors), "details": {
        "command": "repnas " + " ".join(argv), "train_loss": losses[0], "val_loss": losses[1],
        "test_accuracy": metrics.get("test_accuracy"), "train_seconds": metrics.get("train_seconds"),
        "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "fp32 (CPU)",
        "materialized_rel_error_fp32": fp32, "materialized_rel_error_bf16": bf16, "params": metrics.get("params"),
        "physical_params": metrics.get("physical_params")}}


def check_search(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    work = Path(spec["work"])
    shutil.rmtree(work, ignore_errors=True)
    argv = ["search", "--space", spec["space"], "--dataset", spec["dataset"], "--budget", str(spec["budget"]),
            "--trials", str(spec["trials"]), "--workers", str(spec["workers"]), "--gpus-per-trial",
            str(spec["gpus_per_trial"]), "--epochs", str(spec["epochs"]), "--device", spec["device"],
            # the check is that every trial completes on the device: no early stopping may prune one
            "--early-stop", "none", "--out", str(work), "--quiet",
            *(["--data-dir", spec["data_dir"]] if spec.get("data_dir") else [])]
    code, text = _cli(argv)
    if code != 0:
        raise RuntimeError(f"repnas search exited {code}: {text.strip().splitlines()[-1:]}")
    rows = pd.read_parquet(work / "trials.parquet")
    kind = spec["device"].split(":")[0]
    complete = rows[rows["status"] == "complete"]
    on_device = complete["worker"].astype(str).str.contains(f":{kind}").sum()
    workers = sorted(set(rows["worker"].astype(str)))
    ok = len(complete) == spec["trials"] and on_device == spec["trials"]
    error = "" if ok else (f"{len(complete)}/{spec['trials']} trials complete, {on_device} on {kind}; "
                           f"errors: {sorted(set(rows['error'].astype(str)) - {''})[:2]}")
    return {"pass": bool(ok), "error": error, "details": {
        "command": "repnas " + " ".join(argv), "trials": len(rows), "complete": len(complete),
        "complete_on_device": int(on_device), "workers": workers,
        "val_accuracy": [round(float(v), 4) for v in complete["val_accuracy"]]}}


def check_report(spec: dict[str, Any]) -> dict[str, Any]:
    run = Path(spec["run"])
    if not (run / "trials.parquet").is_file():
        return {"pass": False, "error": f"no search run at {run} (the search check did not finish)", "details": {}}
    html = Path(spec["work"]) / "report.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    argv = ["report", str(run), "--out", str(html), "--quiet"]
    code, text = _cli(argv)
    size = html.stat().st_size if html.is_file() else 0
    ok = code == 0 and size > 10_000
    return {"pass": ok, "error": "" if ok else f"exit {code}, {size} bytes: {text.strip().splitlines()[-1:]}",
            "details": {"command": "repnas " + " ".join(argv), "html_bytes": size}}


def bench_run(spec: dict[str, Any]) -> dict[str, Any]:
    from repnas.train import RunConfig, train

    t0 = time.perf_counter()
    result = train(RunConfig.from_dict(spec["config"]), progress=False)
    wall = time.perf_counter() - t0
    return {"model": spec["config"]["model"], "epochs": result["epochs"], "seconds": wall,
            "train_seconds": result["train_seconds"], "images_per_second": result["images_per_second"],
            "test_accuracy": result["test_accuracy"], "flops": result["flops"], "params": result["params"],
            "recipe": spec["config"]["recipe"], "dataset": result["dataset"],
            "note": "seconds: the whole run in one process (data load, model build, training, evaluations); "
                    "train_seconds: the optimisation steps only"}


def run_one(spec: dict[str, Any]) -> int:
    from repnas.experiments._gpu_queue import queue_experiment
    from repnas.experiments._runner import run_experiment

    exp = queue_experiment(Path(spec["experiment"]), spec["smoke"])
    if spec.get("data_dir"):
        exp.dataset["data_dir"] = spec["data_dir"]
    outcome = run_experiment(exp, spec["out"], models=[spec["model"]], seeds=[spec["seed"]], device=spec["device"],
                             progress=False, extra=spec.get("extra"))
    return 1 if outcome.failed else 0


def search_chunk(spec: dict[str, Any]) -> int:
    from repnas.cli import build_parser
    from repnas.cli.search import build_search_config, resume_search_config
    from repnas.runs._rundir import RunDir
    from repnas.search import run_optuna_search

    out = Path(spec["out"])
    resume = RunDir(out).search_yaml.is_file()
    argv = ["search", "--out", str(out), "--trials", str(spec["target"]), "--workers", str(spec["workers"]),
            "--gpus-per-trial", str(spec["gpus_per_trial"]), "--device", spec["device"], "--quiet",
            *(["--data-dir", spec["data_dir"]] if spec.get("data_dir") else [])]
    if resume:
        args = build_parser().parse_args([*argv, "--resume"])
        search, out = resume_search_config(args)
    else:
        # a relative journal path: the run directory is committed and resumed on other machines, where
        # the default (an absolute path) would point nowhere
        args = build_parser().parse_args([*argv, "--space", spec["space"], "--dataset", spec["dataset"],
                                          "--storage", str(out / "journal.log"),
                                          "--budget", str(spec["budget"]), "--epochs", str(spec["epochs"]),
                                          "--seed", str(spec.get("seed", 0))])
        search, out = build_search_config(args)
        search.recipe = {k: v for k, v in spec["recipe"].items() if k != "epochs"}
    run_optuna_search(search, out, resume=resume, progress=False)
    return 0


_CHECKS = {"check_train": check_train, "check_search": check_search, "check_report": check_report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    kind = spec["kind"]
    if spec.get("threads"):  # CPU: packed processes share the cores
        import torch

        torch.set_num_threads(int(spec["threads"]))
    if kind in ("run", "search"):
        return (run_one if kind == "run" else search_chunk)(spec)
    from repnas.experiments._runner import hardware_name
    from repnas.train import resolve_device

    t0 = time.perf_counter()
    head = {"name": spec["name"], "device": spec["device"],
            "hardware": hardware_name(str(resolve_device(spec["device"]))), "torch": _torch_version()}
    if kind == "bench_run":
        record = {**head, **bench_run(spec)}
    else:
        try:
            body = _CHECKS[kind](spec)
        except Exception as exc:  # a failed check is a result: write it, with the error's first line
            traceback.print_exc()
            body = {"pass": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    "details": {}}
        record = {**head, "check": spec["name"], **body}
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["smoke"] = bool(spec.get("smoke"))
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    Path(spec["result"]).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec["result"], json.dumps(record, indent=1, default=float) + "\n")
    print(json.dumps({k: record[k] for k in ("name", "pass", "error", "seconds") if k in record}))
    return 0 if record.get("pass", True) else 1


if __name__ == "__main__":
    sys.exit(main())
