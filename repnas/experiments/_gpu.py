"""``python -m repnas.experiments gpu``: turn one lent-GPU command into checks, benchmarks and results.

A lent GPU is rare and short (one command of at most 10 minutes), so one command does, in order,
what ``results/`` does not hold yet for this kind of GPU, and starts nothing that would end after
``--time-limit``:

0. the self-check (``_selfcheck``, every session): each speed path (fused weights, weight groups,
   bf16 + channels_last, CUDA-graph capture, torch.compile) on a tiny repeated model against the
   reference; a path that fails is switched off (its environment variable) for every later task,
   and the benchmarks that measure it wait for a later session.
a. CUDA checks: ``repnas train`` (bf16, channels_last, materialized == repeated), a packed Optuna
   search (``--workers 4 --gpus-per-trial 0.25``), ``repnas report``; one JSON each.
b. benchmarks: ``benchmarks/repeat_overhead.py`` (and its ``--host`` mode, and with per-layer
   fused weights: the A/B of the weight groups), ``step_profile.py``, ``trainer_throughput.py``,
   ``packed_trials.py``, ``batched_seeds.py`` and the seconds of one 15-epoch VGG11 run; one JSON
   each, with the GPU's name and torch version, per speed revision (``SPEED_REVISIONS``: a new
   revision measures them all again and the old figures stay beside the new).
c. the experiment queue (``experiments/gpu_queue.yaml``), runs packed several at once on the GPU.
d. tables, ``docs/results.md`` and one ``results.tgz`` of every file the command wrote.

Checks and benchmarks measure the GPU, so they are kept per kind of GPU
(``results/gpu/<slug of torch.cuda.get_device_name()>/{checks,bench}/*.json``); an experiment run is
a result whatever GPU made it (``results/<experiment>/runs/*.json`` records the hardware), so the
queue skips a run any GPU has finished.

Estimates: each task's duration is a declared planning figure (:data:`DECLARED`) until something was
measured on this kind of GPU (the task's own last time, earlier runs of the same model, the VGG11
benchmark), and is then derived from that (the task log says which). Packing follows one rule:
``pack_of``: a model runs ``k`` at once where ``benchmarks/packed_trials.py`` measured that ``k`` copies
of a model with at least its FLOPs per image gave the most trials per hour on this GPU; without that
measurement, one at a time.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repnas._io import atomic_path, atomic_write_text
from repnas.errors import UserError
from repnas.experiments._gpu_queue import (
    DECLARED,
    SMOKE_DECLARED,
    SPEED_REVISION,
    GpuQueue,
    QueueItem,
    bench_path,
    blocked_reason,
    item_runs,
    queue_experiment,
)
from repnas.experiments._runner import read_run, run_path
from repnas.experiments._schedule import Task, run_tasks

__all__ = ["DECLARED", "PHASES", "Assumed", "GpuSession", "device_slug", "is_result_file", "phase_tasks", "plan_queue",
           "run_gpu_session", "write_archive"]

#: speed paths each benchmark measures on CUDA (on a CPU only the per-layer A/B forces one): while
#: the self-check has one of them off, the benchmark waits for a later session (its figure would be
#: of a path no run uses, and it is kept for the whole speed revision)
_BENCH_PATHS = {"bench/repeat_overhead": ("fused", "group", "bf16_channels_last"),
                "bench/repeat_overhead_per_layer": ("fused", "bf16_channels_last"),
                "bench/repeat_overhead_host": ("fused", "group", "bf16_channels_last"),
                "bench/trainer_throughput": ("bf16_channels_last",), "bench/batched_seeds": ("bf16_channels_last",)}
_BENCH_PATHS_CPU = {"bench/repeat_overhead_per_layer": ("fused",)}
#: benchmarks whose script is another's in a different mode (issue 18: ``--host``)
_BENCH_SCRIPT = {"bench/repeat_overhead_host": "repeat_overhead", "bench/repeat_overhead_per_layer": "repeat_overhead"}
#: measured estimates are multiplied by this before a start is decided (machines vary between leases)
SAFETY = 1.15
#: seconds a search chunk spends before its first trial (processes, imports, data)
SEARCH_STARTUP = {False: 30.0, True: 10.0}
#: targets the benchmarks are judged against (issue 10; repeat overhead: issue 18)
TARGETS = {"repeat_overhead": ("ratio", "<=", 1.05), "trainer_throughput": ("ratio", ">=", 10.0),
           "packed_trials": ("ratio", ">=", 3.0)}


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: a folder name per kind of GPU."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


@dataclass
class Assumed:
    """What a ``--plan`` forecast takes as done beyond what ``results/`` holds: the files the tasks it
    simulated would have written, the search trials they would have added, the GPU seconds they would
    have spent. Nothing is written for them; a real session never has one."""

    paths: set[Path] = field(default_factory=set)
    search_trials: dict[Path, int] = field(default_factory=dict)
    ledger: dict[str, float] = field(default_factory=dict)


@dataclass
class GpuSession:
    """Where one session reads and writes, and what it runs on."""

    results: Path
    device: str
    hardware: str
    queue: GpuQueue
    smoke: bool = False
    data_dir: str | None = None
    work: Path = Path("runs/gpu-work")
    python: str = sys.executable
    root: Path = field(default_factory=Path.cwd)
    #: a forecast's simulated results (:class:`Assumed`); None in a real session
    assumed: Assumed | None = None
    #: FLOPs per image of the queue's models, by model config and dataset (see ``_flops_of``)
    flops_cache: dict[str, int] = field(default_factory=dict, repr=False)
    #: switches every task gets after the self-check (``REPNAS_FUSED=0`` for a failed fused path, ...)
    speed_env: dict[str, str] = field(default_factory=dict)
    #: speed paths the self-check did not pass (name -> verdict): benchmarks of them wait
    paths_off: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return device_slug(self.hardware)

    @property
    def gpu_dir(self) -> Path:
        return self.results / "gpu" / self.slug

    @property
    def declared(self) -> dict[str, float]:
        return SMOKE_DECLARED if self.smoke else DECLARED

    def assumes(self, path: Path) -> bool:
        """Whether a forecast takes the result file ``path`` as written (always False in a session)."""
        return self.assumed is not None and Path(path) in self.assumed.paths

    def has(self, path: Path) -> bool:
        """Whether the result file ``path`` exists (or, in a forecast, would exist by now)."""
        return Path(path).exists() or self.assumes(path)

    def rebase(self, path: str | Path) -> Path:
        """A ``results/...`` path of a config file, inside this session's results folder."""
        parts = Path(path).parts
        return self.results.joinpath(*parts[1:]) if parts and parts[0] == "results" else Path(path)

    # ------------------------------------------------------------------ measurements so far
    def timings(self) -> dict[str, float]:
        data = _read_json(self.gpu_dir / "timings.json")
        return data if isinstance(data, dict) else {}

    def record_timings(self, records: list[dict[str, Any]]) -> None:
        timings = self.timings()
        for r in records:
            if r.get("rc") == 0:
                timings[r["task"]] = r["seconds"]
        self.gpu_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.gpu_dir / "timings.json", json.dumps(timings, indent=1, sort_keys=True) + "\n")

    def estimate(self, name: str) -> tuple[float, str]:
        measured = self.timings().get(name)
        if measured:
            return SAFETY * float(measured), f"measured {measured:.0f} s on {self.slug}"
        return float(self.declared[name]), "declared"

    def bench(self, name: str) -> dict[str, Any] | None:
        """Benchmark ``name`` on this GPU: the newest speed revision's that exists (an older one still
        plans better than a declared figure)."""
        for revision in range(SPEED_REVISION, 0, -1):
            data = _read_json(bench_path(self.gpu_dir, name, revision))
            if isinstance(data, dict):
                return data
        return None

    def ledger(self) -> dict[str, float]:
        data = _read_json(self.results / "gpu" / "ledger.json")
        ledger = dict(data) if isinstance(data, dict) else {}
        for item, seconds in (self.assumed.ledger if self.assumed else {}).items():
            ledger[item] = ledger.get(item, 0.0) + seconds
        return ledger

    def add_to_ledger(self, spent: dict[str, float]) -> None:
        ledger = self.ledger()
        for item, seconds in spent.items():
            ledger[item] = round(ledger.get(item, 0.0) + seconds, 1)
        (self.results / "gpu").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.results / "gpu" / "ledger.json", json.dumps(ledger, indent=1, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ tasks
    def job(self, name: str, spec: dict[str, Any], estimate: float, basis: str, share: float = 1.0) -> Task:
        """A task running ``repnas.experiments._job`` on ``spec`` (written beside the work folder)."""
        specs = self.work / "specs"
        specs.mkdir(parents=True, exist_ok=True)
        path = specs / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.json"
        threads = self.cpu_threads(share)
        spec = {"name": name, "device": self.device, "smoke": self.smoke, "threads": threads, **spec}
        atomic_write_text(path, json.dumps(spec, indent=1) + "\n")
        return self.task(name, [self.python, "-m", "repnas.experiments._job", str(path)], estimate, basis, share)

    def cpu_threads(self, share: float) -> int | None:
        """Torch threads of a task on the CPU: its share of the cores (None on a GPU: leave as is)."""
        if self.device.startswith("cuda"):
            return None
        return max(1, int((os.cpu_count() or 1) * share))

    def task(self, name: str, argv: list[str], estimate: float, basis: str, share: float = 1.0) -> Task:
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(self.root), os.environ.get("PYTHONPATH")) if p),
               "PYTHONUNBUFFERED": "1", **self.speed_env}
        threads = self.cpu_threads(share)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        log = self.gpu_dir / "logs" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.log"
        return Task(name=name, argv=argv, estimate=estimate, share=share, basis=basis, log=log, env=env)


# ---------------------------------------------------------------------------------- a. checks
def check_tasks(s: GpuSession) -> list[Task]:
    dataset = "digits" if s.smoke else "cifar10"
    search_dir = s.work / "check-search"
    specs = {
        # smoke: a repeated model of small physical shape (rep_vgg6 has VGG11's: seconds per eval on a CPU)
        "check/train": {"kind": "check_train", "model": "rep_wrn16_2" if s.smoke else "rep_vgg6", "dataset": dataset,
                        "epochs": 1,
                        "steps": 2 if s.smoke else None, "batch_size": 16 if s.smoke else None,
                        "work": str(s.work / "check-train")},
        "check/search": {"kind": "check_search", "space": "quick" if s.smoke else "vgg-depth", "dataset": dataset,
                         "budget": "12k" if s.smoke else "600k", "trials": 2 if s.smoke else 4,
                         "workers": s.queue.search_workers if not s.smoke else 2,
                         "gpus_per_trial": s.queue.search_gpus_per_trial, "epochs": 1, "work": str(search_dir)},
        "check/report": {"kind": "check_report", "run": str(search_dir), "work": str(s.work / "check-report")},
    }
    results = {name: s.gpu_dir / "checks" / f"{name.split('/')[1]}.json" for name in specs}
    passed = {name: s.assumes(results[name]) or bool((_read_json(results[name]) or {}).get("pass"))
              for name in specs}
    if not passed["check/report"] and not s.has(search_dir / "trials.parquet"):
        passed["check/search"] = False  # the report check reads that search: run it again first
    tasks = []
    for name, spec in specs.items():
        if passed[name]:
            continue
        result = results[name]
        estimate, basis = s.estimate(name)
        task = s.job(name, {**spec, "data_dir": s.data_dir, "result": str(result)}, estimate, basis)
        task.info["produces"] = [result] + ([search_dir / "trials.parquet"] if name == "check/search" else [])
        if name == "check/report":
            task.needs = [t.name for t in tasks if t.name == "check/search"]
        tasks.append(task)
    return tasks


# ------------------------------------------------------------------------------ b. benchmarks
def bench_tasks(s: GpuSession) -> list[Task]:
    """Every benchmark that this speed revision (``SPEED_REVISION``) lacks on this GPU."""
    scripts = s.root / "benchmarks"
    data = ["--data-dir", s.data_dir] if s.data_dir else []
    if s.smoke:
        argv = {
            "bench/repeat_overhead": ["--batch-size", "2", "--steps", "1", "--warmup", "0", "--rounds", "1"],
            "bench/repeat_overhead_per_layer": ["--batch-size", "2", "--steps", "1", "--warmup", "0", "--rounds", "1",
                                                "--pair", "rep_wrn16_4", "--weights", "fused"],
            # smoke: the WRN pair only (building VGG11's 9.4M weights costs seconds on a CPU)
            "bench/repeat_overhead_host": ["--host", "--steps", "1", "--warmup", "0", "--rounds", "1",
                                           "--pair", "rep_wrn16_4"],
            "bench/step_profile": ["--image", "8", "--pair", "rep_wrn16_4"],
            "bench/trainer_throughput": ["--dataset", "digits", "--model", "vgg4", "--steps", "3", "--batch-size", "32",
                                         "--workers", "0"],
            "bench/packed_trials": ["--dataset", "digits", "--models", "vgg4", "--steps", "2", "--trials", "1",
                                    "--packs", "2"],
            "bench/batched_seeds": ["--models", "vgg4", "--seeds", "2", "--batch-size", "8", "--image", "8",
                                    "--steps", "1", "--warmup", "0", "--rounds", "1"],
        }
    else:
        # the per-layer fused weight in the same session: the A/B of the model-wide groups
        argv = {"bench/repeat_overhead": ["--batch-size", "256"],
                "bench/repeat_overhead_per_layer": ["--batch-size", "256", "--weights", "fused"],
                "bench/repeat_overhead_host": ["--host", "--steps", "50", "--warmup", "10"],
                "bench/step_profile": [], "bench/trainer_throughput": [*data],
                "bench/packed_trials": [*data], "bench/batched_seeds": []}
    tasks = []
    for name, extra in argv.items():
        result = bench_path(s.gpu_dir, name.split("/")[1])
        if s.has(result):
            continue
        estimate, basis = s.estimate(name)
        script = _BENCH_SCRIPT.get(name, name.split("/")[1])
        command = [s.python, str(scripts / f"{script}.py"), "--device", s.device, *extra,
                   "--out", str(result)]
        tasks.append(s.task(name, command, estimate, basis))
        tasks[-1].info["produces"] = [result]
        tasks[-1].info["paths"] = (_BENCH_PATHS if s.device.startswith("cuda") else _BENCH_PATHS_CPU).get(name, ())
    result = bench_path(s.gpu_dir, "vgg11_15ep")
    if not s.has(result):
        recipe_exp = queue_experiment(s.root / "experiments" / "c1c2_vgg_depth.yaml", s.smoke)
        recipe = {**recipe_exp.recipe, "epochs": 1 if s.smoke else 15}
        # smoke: vgg4 stands in (VGG11 on a CPU costs seconds per evaluation, even of 8x8 digits)
        config = {"model": {"family": "vgg4" if s.smoke else "vgg11"}, "recipe": recipe, "seed": 0, "device": s.device,
                  "dataset": {**recipe_exp.dataset, "data_dir": s.data_dir or _data_dir(recipe_exp)}}
        estimate, basis = s.estimate("bench/vgg11_15ep")
        tasks.append(s.job("bench/vgg11_15ep", {"kind": "bench_run", "config": config, "result": str(result)},
                           estimate, basis))
        tasks[-1].info["produces"] = [result]
    return tasks


def _data_dir(exp) -> str | None:
    from repnas.experiments._config import resolve_data_dir

    return resolve_data_dir(exp.dataset.get("data_dir"))


# ------------------------------------------------------------------------------- c. the queue
def model_flops(entry, dataset: dict[str, Any]) -> int:
    """Forward FLOPs per image of an experiment's model on its dataset (the packing rule's input); an
    experiment's ``image_size`` (a resized smoke dataset) wins over the dataset's own."""
    from repnas.rescale import count_flops
    from repnas.spaces import build_model, dataset_info

    info = dataset_info(dataset["name"])
    size = int(dataset.get("image_size") or info.image_size)
    model = build_model(entry.model, info.num_classes, info.in_channels)
    return int(count_flops(model, (info.in_channels, size, size)))


def _flops_of(s: GpuSession, entry, dataset: dict[str, Any]) -> Callable[[], int]:
    """``model_flops`` of ``entry``, computed when first asked for (most plans never need it) and once
    per session (a forecast plans the queue many times; building a G-CNN costs seconds)."""
    key = json.dumps([entry.model, dataset.get("name"), dataset.get("image_size")], sort_keys=True, default=str)

    def flops() -> int:
        if key not in s.flops_cache:
            s.flops_cache[key] = model_flops(entry, dataset)
        return s.flops_cache[key]

    return flops


def pack_of(s: GpuSession, flops: float | Callable[[], float]) -> tuple[int, float]:
    """(runs at once, measured speed-up at that many) for a model of ``flops`` per image (a number, or
    a function giving it: called only when a packing benchmark exists).

    The rule: take the benchmarked model with the fewest FLOPs that still has at least ``flops``; use
    the number of copies that gave it the most trials per hour (capped by ``max_pack``). A model
    heavier than every benchmarked one, or no benchmark on this GPU: (1, 1.0).
    """
    bench = s.bench("packed_trials")
    if not (bench or {}).get("models"):
        return 1, 1.0
    flops = flops() if callable(flops) else flops
    rows = sorted((r for r in (bench or {}).get("models", []) if r.get("flops", 0) >= flops),
                  key=lambda r: r["flops"])
    if not rows:
        return 1, 1.0
    row = rows[0]
    speedups = {int(k): float(v) for k, v in row.get("speedup", {}).items() if int(k) <= s.queue.max_pack}
    if not speedups:
        return 1, 1.0
    k = max(speedups, key=lambda n: (speedups[n], -n))
    return (k, speedups[k]) if speedups[k] > 1.0 else (1, 1.0)


def run_estimate(s: GpuSession, exp, entry, flops: int | Callable[[], int]) -> tuple[float, str]:
    """Seconds one run of ``entry`` takes alone on this GPU, and on what the figure rests (``flops``: a
    number or a function giving it, called only when the estimate scales the VGG11 benchmark)."""
    epochs = exp.recipe.get("epochs")
    measured = []
    for path in s.results.glob("*/runs/*.json"):
        r = read_run(path)
        if (r and r.get("model") == entry.name and r.get("hardware") == s.hardware
                and r.get("epochs") == epochs and bool(r.get("smoke")) == s.smoke):
            # a packed run's wall time x its share x the measured speed-up = its time alone
            measured.append(float(r["wall_seconds"]) * float(r.get("gpu_share", 1.0))
                            * float(r.get("pack_speedup", 1.0)))
    if measured:
        return SAFETY * max(measured), f"measured: {len(measured)} earlier run(s) of {entry.name}"
    bench = s.bench("vgg11_15ep")
    if bench and bench.get("dataset") == exp.dataset.get("name") and epochs and bench.get("epochs"):
        flops = flops() if callable(flops) else flops
        scale = epochs / bench["epochs"] * max(1.0, flops / max(1, bench.get("flops", 1)))
        return SAFETY * bench["seconds"] * scale, "from the VGG11 benchmark (epochs, FLOPs)"
    return s.queue.default_run_seconds, "declared (gpu_queue.yaml default_run_seconds)"


@dataclass
class QueuePlan:
    tasks: list[Task] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    #: task name -> queue item (for the GPU-time ledger)
    owner: dict[str, str] = field(default_factory=dict)


def plan_queue(s: GpuSession, log: Callable[[str], None] = print) -> QueuePlan:
    """The queue's tasks in priority order: what is done is skipped, what waits says why, and each
    item stops at its ``gpu_minutes`` cap (GPU seconds spent so far from the ledger + the plan)."""
    plan = QueuePlan()
    claimed: set[Path] = set()
    ledger = s.ledger()
    for item in s.queue.items:
        reason = blocked_reason(item)
        if reason:
            plan.notes.append({"item": item.name, "status": "waiting", "reason": reason})
            log(f"  queue {item.name}: skipped, {reason}")
            continue
        cap = None if item.gpu_minutes is None else 60.0 * item.gpu_minutes
        spent = ledger.get(item.name, 0.0)
        if item.search:
            note = _plan_search(s, item, plan, cap, spent)
        else:
            note = _plan_runs(s, item, plan, cap, spent, claimed)
        plan.notes.append(note)
        log(f"  queue {item.name}: {note['status']}" + (f" ({note['reason']})" if note.get("reason") else ""))
    return plan


def _plan_runs(s: GpuSession, item: QueueItem, plan: QueuePlan, cap: float | None, spent: float,
               claimed: set[Path]) -> dict[str, Any]:
    exp = queue_experiment(item.experiment, s.smoke)
    out = s.rebase(Path("results") / exp.name)
    pairs = item_runs(item, exp, s.queue.runs_per_item)
    done, planned, capped = 0, 0, 0
    for entry, seed in pairs:
        path = run_path(out, entry, seed)
        if path in claimed:
            continue
        claimed.add(path)
        if s.has(path):
            done += 1
            continue
        flops = _flops_of(s, entry, exp.dataset)
        alone, basis = run_estimate(s, exp, entry, flops)
        k, speedup = pack_of(s, flops)
        estimate = alone * k / speedup
        if cap is not None and spent + estimate / k > cap:
            capped += 1
            continue
        spent += estimate / k
        name = f"queue/{item.name}/{entry.file_stem}/seed{seed}"
        spec = {"kind": "run", "experiment": str(item.experiment), "model": entry.name, "seed": seed,
                "out": str(out), "data_dir": s.data_dir,
                "extra": {"queue_item": item.name, "gpu_share": 1.0 / k, "pack_speedup": speedup,
                          **({"speed_switches": dict(s.speed_env)} if s.speed_env else {})}}
        basis = f"{basis}; {k} at once" if k > 1 else basis
        plan.tasks.append(s.job(name, spec, estimate, basis, share=1.0 / k))
        plan.tasks[-1].info["produces"] = [path]
        plan.owner[name] = item.name
        planned += 1
    total = done + planned + capped
    status = "done" if done == total else f"{planned} run(s) planned, {done}/{total} done"
    reason = f"{capped} run(s) over the {item.gpu_minutes:g} GPU-minute cap" if capped else ""
    return {"item": item.name, "status": status, "reason": reason, "done": done, "planned": planned,
            "capped": capped, "total": total}


def _search_rows(out: Path):
    import pandas as pd

    path = out / "trials.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _plan_search(s: GpuSession, item: QueueItem, plan: QueuePlan, cap: float | None, spent: float) -> dict[str, Any]:
    spec = item.search
    assert spec is not None
    out = s.rebase(spec["out"])
    recipe_exp = queue_experiment(Path(spec["recipe_from"]), s.smoke)
    epochs = int(spec.get("epochs") or recipe_exp.recipe.get("epochs") or 1)
    rows = _search_rows(out)
    have = (0 if rows is None else len(rows)) + (s.assumed.search_trials.get(out, 0) if s.assumed else 0)
    total = int(spec["trials"])
    if have >= total:
        return {"item": item.name, "status": "done", "done": have, "total": total}
    workers = s.queue.search_workers
    per_trial, basis = _trial_estimate(s, rows, epochs, workers)
    startup = SEARCH_STARTUP[s.smoke]

    def chunk(n: int) -> Task:
        estimate = startup + math.ceil(n / workers) * per_trial
        job = {"kind": "search", "out": str(out), "target": have + n, "workers": workers,
               "gpus_per_trial": s.queue.search_gpus_per_trial, "space": spec["space"],
               "dataset": spec.get("dataset") or recipe_exp.dataset["name"], "budget": spec.get("budget", ""),
               "epochs": epochs, "recipe": recipe_exp.recipe, "seed": spec.get("seed", 0),
               "data_dir": s.data_dir or _data_dir(recipe_exp)}
        name = f"queue/{item.name}/trials-{have + 1}-{have + n}"
        plan.owner[name] = item.name
        task = s.job(name, job, estimate, f"{basis}; {n} trial(s), {workers} workers")
        task.shrink = shrink
        task.info["trials"] = (out, n)
        return task

    def fits(seconds: float) -> int:
        return workers * int(max(0.0, seconds - startup) // per_trial)

    def shrink(seconds: float) -> Task | None:
        n = min(total - have, fits(seconds))
        return chunk(n) if n >= 1 else None

    n = total - have
    if cap is not None:
        n = min(n, fits(cap - spent))
        if n < 1:
            return {"item": item.name, "status": f"{have}/{total} trials", "reason":
                    f"the {item.gpu_minutes:g} GPU-minute cap is spent", "done": have, "total": total}
    plan.tasks.append(chunk(n))
    return {"item": item.name, "status": f"{n} trial(s) planned, {have}/{total} done", "done": have,
            "planned": n, "total": total}


def _trial_estimate(s: GpuSession, rows, epochs: int, workers: int) -> tuple[float, str]:
    """Seconds one trial takes while ``workers`` trials share the GPU."""
    if rows is not None and len(rows) and rows["train_seconds"].notna().any():
        return SAFETY * (float(rows["train_seconds"].max()) + 10.0), "measured: this search's slowest trial + 10 s"
    bench = s.bench("vgg11_15ep")
    if bench and bench.get("epochs"):
        k, speedup = pack_of(s, float(bench.get("flops", 0)))
        slowdown = workers / speedup if k >= workers else float(workers)
        # the budget solver narrows a candidate to ~its budget, so VGG11's FLOPs bound those of vgg-depth
        # (rep_vgg6, at 600k, has exactly VGG11's shape) and far exceed wrn-width's
        return SAFETY * bench["seconds"] * epochs / bench["epochs"] * slowdown, "from the VGG11 benchmark"
    return s.queue.default_run_seconds * workers, "declared (default_run_seconds x workers)"


# ------------------------------------------------------------------------------ d. the archive
def is_result_file(path: Path) -> bool:
    """Whether a file under ``results/`` is a result that travels (archive) and is committed (git):
    not a checkpoint, a TensorBoard event file or a lock. ``.gitignore`` lists the same patterns, and
    tests/test_gpu_session.py checks that no archived file is git-ignored."""
    name = path.name
    return not (path.suffix in (".pt", ".lock", ".flock") or name.startswith((".", "events.out.tfevents.")))


def write_archive(results: Path, since_ns: int, archive: Path, max_bytes: int = 4 << 20) -> list[str]:
    """Pack every result file (:func:`is_result_file`) under ``results`` modified since ``since_ns``,
    nothing over ``max_bytes``, into ``archive`` (members relative to ``results``: unpack with
    ``-C results``)."""
    members = sorted(p for p in results.rglob("*") if p.is_file() and p.stat().st_mtime_ns >= since_ns
                     and is_result_file(p) and p.stat().st_size <= max_bytes)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(results)))
    return [str(p.relative_to(results)) for p in members]


# ------------------------------------------------------------------------------ the session
#: a session's phases, in order: each is planned when the one before it has run (the queue's packing
#: reads the benchmarks just measured)
PHASES = ("selfcheck", "checks", "benchmarks", "queue")


def selfcheck_task(s: GpuSession, paths: list[str] | None = None, known: dict[str, str] | None = None,
                   result: Path | None = None) -> Task:
    """The self-check's process on ``paths`` (default: all); every session runs it (``_selfcheck``)."""
    from repnas.experiments._selfcheck import PATHS

    specs = s.work / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    spec = {"paths": paths or [p.name for p in PATHS], "off": known or {}, "device": s.device,
            "result": str(result or s.work / "selfcheck" / "selfcheck-1.json"), "threads": s.cpu_threads(1.0)}
    path = specs / "selfcheck.json"
    atomic_write_text(path, json.dumps(spec, indent=1) + "\n")
    estimate, basis = s.estimate("selfcheck")
    return s.task("selfcheck", [s.python, "-m", "repnas.experiments._selfcheck", str(path)], estimate, basis)


def phase_tasks(s: GpuSession, phase: str, log: Callable[[str], None] = print
                ) -> tuple[list[Task], dict[str, str], list[dict[str, Any]]]:
    """(tasks, task name -> queue item, the queue's notes) of one phase, as results/ stands now."""
    if phase == "selfcheck":
        return [selfcheck_task(s)], {}, []
    if phase == "checks":
        return check_tasks(s), {}, []
    if phase == "benchmarks":
        return bench_tasks(s), {}, []
    plan = plan_queue(s, log)
    return plan.tasks, plan.owner, plan.notes


def run_gpu_session(s: GpuSession, time_limit: float, archive: Path, *, reserve: float = 20.0,
                    only: Callable[[str], bool] | None = None, log: Callable[[str], None] = print,
                    write_page: Path | None = None, **schedule: Any) -> dict[str, Any]:
    """Checks, benchmarks, the queue, tables and the archive within ``time_limit`` seconds."""
    started_ns = time.time_ns() - 1
    clock = schedule.get("clock", time.monotonic)
    t0 = clock()
    deadline = t0 + time_limit - reserve
    s.gpu_dir.mkdir(parents=True, exist_ok=True)
    s.work.mkdir(parents=True, exist_ok=True)
    log(f"gpu session on {s.hardware} ({s.device}), results in {s.results}, {time_limit:.0f} s "
        f"({reserve:.0f} s kept for tables and the archive)")
    record: dict[str, Any] = {"hardware": s.hardware, "device": s.device, "smoke": s.smoke,
                              "time_limit": time_limit, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "phases": {}}
    queue_notes: list[dict[str, Any]] = []
    for phase in PHASES:
        log(f"[{clock() - t0:5.0f} s] {phase}")
        if phase == "selfcheck":
            record["selfcheck"], record["phases"][phase] = _selfcheck_phase(s, deadline, only, log, schedule)
            continue
        tasks, owner, notes = phase_tasks(s, phase, log)
        queue_notes = notes or queue_notes
        if only is not None:
            tasks = [t for t in tasks if only(t.name)]
        waiting = [t for t in tasks if any(p in s.paths_off for p in t.info.get("paths", ()))]
        for t in waiting:
            off = [p for p in t.info["paths"] if p in s.paths_off]
            log(f"  not started: {t.name} (measures {', '.join(off)}, which the self-check did not pass); "
                "a later session measures it")
        tasks = [t for t in tasks if t not in waiting]
        if not tasks:
            log("  nothing to do (all done or waiting)")
            record["phases"][phase] = {"done": [], "left": [], "wall_seconds": 0.0}
            continue
        outcome = run_tasks(tasks, deadline, log=log, max_running=s.queue.max_pack if phase == "queue" else 1,
                            **schedule)
        s.record_timings([r for r in outcome.records if not r["task"].startswith("queue/")])
        if owner:
            spent: dict[str, float] = {}
            for r in outcome.records:
                spent[owner[r["task"]]] = spent.get(owner[r["task"]], 0.0) + r["seconds"] * r["share"]
            s.add_to_ledger(spent)
        record["phases"][phase] = {"done": outcome.done, "failed": outcome.failed, "killed": outcome.killed,
                                   "left": outcome.left + [t.name for t in waiting],
                                   "wall_seconds": round(outcome.wall_seconds, 1), "tasks": outcome.records}
    record["queue"] = queue_notes
    record["packing"] = _packing_summary(record["phases"].get("queue", {}))
    log(f"[{clock() - t0:5.0f} s] tables")
    from repnas.experiments._results_page import rebuild_all

    rebuild_all(s.queue, s.results, page=write_page, smoke=s.smoke, log=log)
    record["wall_seconds"] = round(clock() - t0, 1)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (s.gpu_dir / "sessions").mkdir(parents=True, exist_ok=True)
    atomic_write_text(s.gpu_dir / "sessions" / f"{stamp}.json", json.dumps(record, indent=1) + "\n")
    files = write_archive(s.results, started_ns, archive)
    record["archive"] = {"path": str(archive), "files": len(files)}
    log(f"[{clock() - t0:5.0f} s] wrote {archive} ({len(files)} files); unpack with "
        f"`experiments/device.sh unpack DIR` (or tar xzf {archive.name} -C results)")
    return record


def _selfcheck_phase(s: GpuSession, deadline: float, only: Callable[[str], bool] | None,
                     log: Callable[[str], None], schedule: dict[str, Any]) -> tuple[dict[str, Any] | None, dict]:
    """Run the self-check (one process, again after a crash for the paths left), switch off what did
    not pass for the rest of the session, write ``selfcheck.json``; (its record, the phase's)."""
    from repnas.experiments._selfcheck import run_selfcheck

    if only is not None and not only("selfcheck"):
        log("  not run (--only leaves it out): the speed paths keep their defaults, unchecked")
        return None, {"done": [], "left": [], "wall_seconds": 0.0}
    clock = schedule.get("clock", time.monotonic)
    t0, records = clock(), []

    def start(paths: list[str], known: dict[str, str], result: Path) -> tuple[int | None, str]:
        task = selfcheck_task(s, paths, known, result)
        outcome = run_tasks([task], deadline, log=log, max_running=1, **schedule)
        records.extend(outcome.records)
        if outcome.left:
            return None, "no time left in the command"
        if outcome.killed:
            return -9, "killed at the command's deadline"
        code = outcome.records[-1]["rc"]
        return code, f"exit {code}"

    (s.work / "selfcheck").mkdir(parents=True, exist_ok=True)
    checked = run_selfcheck(s.device, s.work / "selfcheck", start, log=log)
    s.speed_env = dict(checked["env"])
    s.paths_off = {name: v["verdict"] for name, v in checked["paths"].items()
                   if v["verdict"].startswith(("failed", "turned off"))}
    wall = round(clock() - t0, 1)
    checked["wall_seconds"] = wall
    checked["session_started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(s.gpu_dir / "selfcheck.json", json.dumps(checked, indent=1, default=float) + "\n")
    log(f"  self-check: {wall:.1f} s (wall, the process's start included)")
    if len(records) == 1 and records[0]["rc"] == 0:
        s.record_timings(records)
    phase = {"done": ["selfcheck"], "left": [], "wall_seconds": wall, "tasks": records}
    return {"verdicts": {n: v["verdict"] for n, v in checked["paths"].items()}, "env": s.speed_env}, phase


def _packing_summary(queue_phase: dict[str, Any]) -> dict[str, Any]:
    """How packed the queue ran: wall time vs the sum of its tasks' times (mean concurrency)."""
    tasks = queue_phase.get("tasks") or []
    wall = float(queue_phase.get("wall_seconds") or 0.0)
    busy = sum(t["seconds"] for t in tasks)
    return {"tasks": len(tasks), "wall_seconds": wall, "sum_task_seconds": round(busy, 1),
            "mean_concurrency": round(busy / wall, 2) if wall > 0 else None,
            "max_concurrency": max((t.get("running_at_start") or 1 for t in tasks), default=0)}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def session_for(device: str, smoke: bool, queue_path: Path, results: Path | None, data_dir: str | None,
                work: Path | None = None) -> GpuSession:
    """A session on ``device`` (``auto``: CUDA if there is one), with its hardware name resolved."""
    from repnas.experiments._gpu_queue import load_queue
    from repnas.experiments._runner import hardware_name
    from repnas.train import resolve_device

    resolved = str(resolve_device(device))
    if resolved == "cuda":
        resolved = "cuda:0"
    queue = load_queue(queue_path, smoke=smoke)
    base = Path("runs/gpu-smoke") if smoke else Path(".")
    results = results or base / "results"
    work = work or (results.parent / "work" if smoke else Path("runs/gpu-work"))
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such folder")
    if data_dir is None and not smoke:  # the experiments' own candidates (../shared/datasets, .data, ...)
        from repnas.experiments._config import resolve_data_dir

        data_dir = resolve_data_dir(["../shared/datasets", "shared/datasets", ".data"])
    return GpuSession(results=results, device=resolved, hardware=hardware_name(resolved), queue=queue,
                      smoke=smoke, data_dir=data_dir, work=work)
