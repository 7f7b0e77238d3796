"""The GPU procedure's self-check (issue 27.2): a speed path that disagrees with the reference fails,
is switched off for every later task of the session (their environment) and its benchmarks wait; a
path that passes stays on; a check that kills its process or hangs fails that path only; the results
page shows the verdicts. Everything runs on the CPU; compile is stubbed where its seconds don't matter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repnas.experiments import _gpu, _selfcheck
from repnas.experiments._gpu import run_gpu_session, session_for
from repnas.experiments._selfcheck import check_paths, in_use, run_selfcheck, speed_env
from repnas.rescale import RepeatWeight, WeightGroup

ROOT = Path(__file__).resolve().parent.parent
QUEUE = ROOT / "experiments" / "gpu_queue.yaml"


def _skewed(method):
    """``method`` with its weights 1% off: a path that computes wrong values."""
    def wrong(self, *args, **kwargs):
        return method(self, *args, **kwargs) * 1.01
    return wrong


@pytest.fixture
def fast_compile(monkeypatch):
    """The compile check as a stub that passes (its real run costs 5-20 s on a CPU; tested below)."""
    monkeypatch.setattr(_selfcheck, "check_compile", lambda case, backend: {"backend": "stub"})


def test_paths_agree_with_the_reference_and_a_wrong_one_fails(tmp_path, monkeypatch, fast_compile):
    record = check_paths(["fused", "group", "bf16_channels_last", "graph", "compile"], "cpu", tmp_path / "r.json")
    verdicts = {n: v["verdict"] for n, v in record["paths"].items()}
    assert verdicts == {"fused": "passed", "group": "passed", "bf16_channels_last": "skipped: needs CUDA",
                        "graph": "skipped: needs CUDA", "compile": "passed"}
    fused = record["paths"]["fused"]["detail"]
    assert fused["values_error"] < 1e-6 and fused["gradients_error"] < 1e-4 and fused["parameters"] == 50
    assert record["paths"]["group"]["detail"]["layers_served"] == 10  # 5 per net, each per forward
    assert json.loads((tmp_path / "r.json").read_text())["paths"] == json.loads(json.dumps(record["paths"]))

    monkeypatch.setattr(WeightGroup, "weight", _skewed(WeightGroup.weight))
    record = check_paths(["fused", "group"], "cpu", tmp_path / "r.json")
    assert record["paths"]["fused"]["verdict"] == "passed"
    group = record["paths"]["group"]["verdict"]
    assert group.startswith("failed: values differ from the reference: relative error ") and "> 0.0001" in group
    assert RepeatWeight.use_fused is None and WeightGroup.enabled is None  # the switches are restored


def test_a_failed_path_is_switched_off_for_every_later_task(tmp_path, monkeypatch, fast_compile):
    """The whole session with fake processes: the self-check's runs in this process (so a monkeypatch
    reaches it), the other tasks only record the environment they were started with."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(_gpu, "model_flops", lambda entry, dataset: 1)
    monkeypatch.setattr(RepeatWeight, "emit", _skewed(RepeatWeight.emit))  # the fused function is wrong
    for name in ("REPNAS_FUSED", "REPNAS_WEIGHT_GROUP", "REPNAS_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    started: dict[str, dict[str, str]] = {}

    def launcher(task):
        started[task.name] = dict(task.env or {})
        if task.name == "selfcheck":
            assert _selfcheck.main([task.argv[-1]]) == 0

        class Done:
            def poll(self):
                return 0

            def kill(self):  # pragma: no cover - every fake ends at once
                pass
        return Done()

    s = session_for("cpu", True, QUEUE, tmp_path / "results", None, work=tmp_path / "work")
    lines: list[str] = []
    record = run_gpu_session(s, 300, tmp_path / "r.tgz", launcher=launcher, log=lines.append, poll=0.01,
                             only=lambda name: name == "selfcheck" or name.startswith(("bench/", "queue/c1c2")))
    verdicts = record["selfcheck"]["verdicts"]
    assert verdicts["fused"].startswith("failed: values differ") and verdicts["group"] == "turned off: needs fused"
    assert verdicts["compile"] == "passed"  # checked on the reference ops, as the runs would use it
    assert record["selfcheck"]["env"] == {"REPNAS_FUSED": "0"}
    assert "REPNAS_FUSED" not in started["selfcheck"]
    later = [name for name in started if name != "selfcheck"]
    assert later and all(started[name]["REPNAS_FUSED"] == "0" for name in later)
    assert not any("REPNAS_COMPILE" in started[name] for name in later)  # what passed is left alone
    # the per-layer A/B measures the fused function: it waits for a session where it passes
    assert "bench/repeat_overhead_per_layer" not in started
    assert "bench/repeat_overhead_per_layer" in record["phases"]["benchmarks"]["left"]
    assert any("not started: bench/repeat_overhead_per_layer (measures fused" in line for line in lines)
    spec = json.loads(next((tmp_path / "work" / "specs").glob("queue_c1c2-core_*.json")).read_text())
    assert spec["extra"]["speed_switches"] == {"REPNAS_FUSED": "0"}  # the run's JSON says how it was trained
    saved = json.loads((s.gpu_dir / "selfcheck.json").read_text())
    assert saved["paths"]["fused"]["in_use"] is False and saved["env"] == {"REPNAS_FUSED": "0"}
    assert any(line.startswith("  selfcheck fused ") and "failed: values differ" in line for line in lines)


def test_a_check_that_kills_its_process_fails_that_path_only(tmp_path, fast_compile):
    calls = []

    def start(paths, known, result):
        calls.append((list(paths), dict(known)))
        if len(calls) == 1:  # the process dies inside the fused check (a CUDA fault, say)
            result.write_text(json.dumps({"torch": "x", "paths": {}, "running": "fused"}))
            return -11, "exit -11"
        check_paths(paths, "cpu", result, known)
        return 0, "exit 0"

    record = run_selfcheck("cpu", tmp_path, start, env={}, log=lambda _: None)
    verdicts = {n: v["verdict"] for n, v in record["paths"].items()}
    assert verdicts["fused"] == "failed: its check ended the process (exit -11)"
    assert calls[1] == (["group", "bf16_channels_last", "graph", "compile"], {"fused": verdicts["fused"]})
    assert verdicts["group"] == "turned off: needs fused" and verdicts["compile"] == "passed"
    assert record["env"] == {"REPNAS_FUSED": "0"} and len(calls) == 2

    # off in the caller's environment: not checked, and nothing more to switch off
    record = run_selfcheck("cpu", tmp_path, lambda p, k, r: (check_paths(p, "cpu", r, k), (0, "exit 0"))[1],
                           env={"REPNAS_WEIGHT_GROUP": "0"}, log=lambda _: None)
    assert record["paths"]["group"]["verdict"] == "turned off: REPNAS_WEIGHT_GROUP=0 in the environment"
    assert record["paths"]["fused"]["verdict"] == "passed" and record["env"] == {}
    # no time left to start it: every path fails, so nothing unchecked runs
    record = run_selfcheck("cpu", tmp_path, lambda p, k, r: (None, "no time left in the command"), env={},
                           log=lambda _: None)
    assert all(v["verdict"] == "failed: not checked (no time left in the command)" for v in record["paths"].values())


def test_a_check_that_hangs_times_out_in_its_own_process(tmp_path):
    code = ("import sys, time; from pathlib import Path; from repnas.experiments import _selfcheck as s; "
            "s.check_fused = lambda case: time.sleep(60); "
            "s.check_paths(['fused', 'group'], 'cpu', Path(sys.argv[1]), timeouts={'fused': 0.5})")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.json")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 124, out.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["paths"]["fused"]["verdict"] == "failed: timed out after 0.5 s" and record["running"] is None


def test_the_compile_check_fails_on_a_graph_break(tmp_path):
    """A real compile (backend aot_eager) of a module that graph-breaks, then of one that does not."""
    class Breaks(torch.nn.Module):
        def forward(self, x):
            torch._dynamo.graph_break()
            return x

    case = _selfcheck._Case.__new__(_selfcheck._Case)
    case.model, case.fused, case.group = Breaks(), False, False
    case.x, case.y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(_selfcheck.CheckFailed, match="graph break with backend aot_eager"):
        _selfcheck.check_compile(case, "aot_eager")

    case.model = torch.nn.Linear(3, 2)
    case.logits, case.grads = _selfcheck.forward_backward(case.model, case.model, case.x, case.y)
    detail = _selfcheck.check_compile(case, "aot_eager")
    assert detail["graph_breaks"] == 0 and detail["values_error"] < 1e-6


def test_the_graph_and_bf16_checks_compare_as_they_should(monkeypatch):
    """Their CUDA parts cannot run here: a stand-in for ``GraphStep`` (eager, as a capture should
    behave; or one that keeps the first LR, as a capture that baked it in would; or one whose capture
    failed) and CPU autocast for bf16 drive the same comparisons."""
    import repnas.train
    from repnas.train import EagerStep

    class Captured(EagerStep):
        def __init__(self, *args, warmup: int = 3, **kwargs):
            super().__init__(*args, **kwargs)
            self.graph, self.failed = object(), None

    class StaleLR(Captured):
        def __call__(self, x, y):
            lr = [g["lr"] for g in self.optimizer.param_groups]
            self.first = getattr(self, "first", lr)
            for g, first in zip(self.optimizer.param_groups, self.first, strict=True):
                g["lr"] = first
            return super().__call__(x, y)

    class Uncaptured(Captured):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.graph, self.failed = None, "RuntimeError: operation not permitted when stream is capturing"

    case = _selfcheck._Case(torch.device("cpu"))
    monkeypatch.setattr(repnas.train, "GraphStep", Captured)
    detail = _selfcheck.check_graph(case)
    assert detail["values_error"] == 0 and detail["gradients_error"] == 0 and detail["steps"] == 3
    monkeypatch.setattr(repnas.train, "GraphStep", StaleLR)
    # the third step's loss already differs (the second is the same: its LR was the first's anyway)
    with pytest.raises(_selfcheck.CheckFailed, match=r"^losses differ from the reference: relative error"):
        _selfcheck.check_graph(case)
    monkeypatch.setattr(repnas.train, "GraphStep", Uncaptured)
    with pytest.raises(_selfcheck.CheckFailed, match="not captured: RuntimeError: operation not permitted"):
        _selfcheck.check_graph(case)

    detail = _selfcheck.check_bf16(case)  # CPU autocast, the reference ops: bf16 rounding only
    assert 1e-4 < detail["values_error"] < 1e-2 and detail["gradients_error"] == 0


def test_switches_and_their_defaults():
    assert speed_env({"fused": "passed", "graph": "failed: x", "compile": "failed: y", "group": "turned off: z"}) \
        == {"REPNAS_CUDA_GRAPH": "0", "REPNAS_COMPILE": "0"}
    assert [in_use(n, {}, cuda=True) for n in ("fused", "group", "bf16_channels_last", "graph", "compile")] \
        == [True, True, True, True, False]
    assert [in_use(n, {}, cuda=False) for n in ("fused", "group", "bf16_channels_last", "graph", "compile")] \
        == [False] * 5
    assert not in_use("group", {"REPNAS_FUSED": "0"}, cuda=True)  # groups serve fused layers only
    assert not in_use("graph", {"REPNAS_COMPILE": "1"}, cuda=True)  # make_step: compile replaces capture


def test_repnas_bf16_switches_the_trainers_mixed_precision(monkeypatch):
    from repnas.train import mixed_precision

    monkeypatch.delenv("REPNAS_BF16", raising=False)
    assert mixed_precision(torch.device("cuda")) and not mixed_precision(torch.device("cpu"))
    monkeypatch.setenv("REPNAS_BF16", "0")
    assert not mixed_precision(torch.device("cuda"))


def test_results_page_shows_each_paths_verdict(tmp_path, monkeypatch):
    from repnas.experiments._gpu_queue import load_queue
    from repnas.experiments._results_page import results_page

    monkeypatch.chdir(ROOT)
    results = tmp_path / "results"
    kind = results / "gpu" / "nvidia-h100-80gb-hbm3"
    kind.mkdir(parents=True)
    paths = {"fused": {"verdict": "failed: values differ from the reference: relative error 1.0e-02 > 0.0001 "
                                  "(fp32)", "in_use": False, "detail": {}},
             "group": {"verdict": "turned off: needs fused", "in_use": False},
             "bf16_channels_last": {"verdict": "passed", "in_use": True,
                                    "detail": {"values_error": 0.004, "gradients_error": 0.011}},
             "graph": {"verdict": "passed", "in_use": True},
             "compile": {"verdict": "failed: graph break with backend aot_eager: x", "in_use": False}}
    (kind / "selfcheck.json").write_text(json.dumps({"torch": "2.14.1", "paths": paths}))
    page = results_page(load_queue(QUEUE), results)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in page.splitlines()
            if line.startswith("| ") and "nvidia-h100-80gb-hbm3" in line}
    assert rows["fused (per-layer fused weight function)"].split(" | ")[1:4] == [
        paths["fused"]["verdict"], "off", "`REPNAS_FUSED`"]
    assert rows["group (whole-model weight groups)"].split(" | ")[1:3] == ["turned off: needs fused", "off"]
    assert rows["bf16_channels_last (bf16 autocast + channels_last)"].split(" | ")[1:5] == [
        "passed", "on", "`REPNAS_BF16`", "values 4.0e-03, gradients 1.1e-02"]
    assert rows["graph (CUDA-graph capture of the training step)"].split(" | ")[1:3] == ["passed", "on"]
    assert "results/gpu/<gpu>/selfcheck.json" in page
