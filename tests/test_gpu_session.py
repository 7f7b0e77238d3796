"""The GPU session (``python -m repnas.experiments gpu``): the deadline scheduler on a fake clock, the
queue's order and skips, C3's wait for the faithful models, the packing rule, and one real smoke
slice on CPU (digits) that writes JSONs and results.tgz and starts nothing the second time."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from repnas.experiments import _gpu, _gpu_queue
from repnas.experiments._gpu import bench_tasks, check_tasks, pack_of, plan_queue, session_for
from repnas.experiments._gpu_queue import SPEED_REVISION, bench_path
from repnas.experiments._schedule import Task, run_tasks

ROOT = Path(__file__).resolve().parent.parent
QUEUE = ROOT / "experiments" / "gpu_queue.yaml"


# --------------------------------------------------------------------------- the scheduler, fake clock
class FakeWorld:
    """A clock that only moves when the scheduler sleeps, and processes that end after ``durations``."""

    def __init__(self, durations: dict[str, float]) -> None:
        self.now = 0.0
        self.durations = durations
        self.started: list[tuple[str, float, int]] = []  # (name, time, running incl. itself)
        self.running: list[str] = []
        self.killed: list[str] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def launcher(self, task: Task):
        world, began = self, self.now
        world.running.append(task.name)
        world.started.append((task.name, began, len(world.running)))

        class Handle:
            def poll(self):
                if world.now - began >= world.durations[task.name]:
                    if task.name in world.running:
                        world.running.remove(task.name)
                    return 0
                return None

            def kill(self):
                world.killed.append(task.name)
                world.running.remove(task.name)

        return Handle()


def _run(world: FakeWorld, tasks: list[Task], deadline: float, **kw):
    return run_tasks(tasks, deadline, clock=world.clock, sleep=world.sleep, launcher=world.launcher, poll=1.0,
                     log=lambda _: None, **kw)


def test_starts_nothing_that_would_end_past_the_deadline():
    tasks = [Task("a", [], 30), Task("b", [], 50), Task("c", [], 10), Task("d", [], 25)]
    world = FakeWorld({"a": 30, "b": 50, "c": 10, "d": 25})
    outcome = _run(world, tasks, deadline=60)
    # a runs 0-30; b (50 s) would end at 80: not started; c fits (30-40); d would end at 65: not started
    assert [name for name, _, _ in world.started] == ["a", "c"]
    assert outcome.done == ["a", "c"] and outcome.left == ["b", "d"]
    assert all(began + {"a": 30, "c": 10}[name] <= 60 for name, began, _ in world.started)


def test_packs_by_share_and_keeps_priority_order():
    tasks = [Task(f"r{k}", [], 10, share=0.25) for k in range(5)] + [Task("alone", [], 5, share=1.0)]
    world = FakeWorld({**{f"r{k}": 10 for k in range(5)}, "alone": 5})
    outcome = _run(world, tasks, deadline=100)
    assert [n for n, _, _ in world.started] == ["r0", "r1", "r2", "r3", "r4", "alone"]
    assert max(running for _, _, running in world.started) == 4  # four quarter-shares fill the GPU
    starts = {n: t for n, t, _ in world.started}
    assert starts["r4"] >= 10 and starts["alone"] >= starts["r4"] + 10  # a share-1 task waits for an idle GPU
    assert len(outcome.done) == 6


def test_kills_at_the_deadline_when_an_estimate_was_wrong_and_shrinks_to_fit():
    world = FakeWorld({"slow": 500, "chunk-small": 20})
    outcome = _run(world, [Task("slow", [], 10)], deadline=60, grace=5)
    assert outcome.killed == ["slow"] and world.now <= 66

    world = FakeWorld({"chunk-small": 20})
    big = Task("chunk-big", [], 100, shrink=lambda seconds: Task("chunk-small", [], 20) if seconds >= 20 else None)
    outcome = _run(world, [big], deadline=30)
    assert outcome.done == ["chunk-small"]

    world = FakeWorld({"report": 1})  # a task whose input was not made in this pass is not started
    outcome = _run(world, [Task("search", [], 50), Task("report", [], 1, needs=["search"])], deadline=30)
    assert outcome.left == ["search", "report"] and world.started == []


# --------------------------------------------------------------------------- the queue
@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the queue names experiment files relative to the repository
    monkeypatch.setattr(_gpu, "model_flops", lambda entry, dataset: 1)
    s = session_for("cpu", False, QUEUE, tmp_path / "results", None, work=tmp_path / "work")
    bench = s.gpu_dir / "bench"
    bench.mkdir(parents=True)
    # measured-looking benchmark files so that the estimates stay under the caps
    (bench / "vgg11_15ep.json").write_text(json.dumps({"dataset": "cifar10", "epochs": 15, "seconds": 15.0,
                                                       "flops": 10}))
    return s


def _names(tasks) -> list[str]:
    return [t.name for t in tasks]


def test_queue_order_and_c3_waits_for_the_faithful_models(session, monkeypatch):
    """Issue 19's priorities: the repeated models of C1/C2 (and their partners' seeds), then the searches,
    then the rest of the rows, then C3."""
    registry = _gpu_queue.rep_cnn_c4_params()
    monkeypatch.setattr(_gpu_queue, "rep_cnn_c4_params", lambda: 352_123)  # a registry without the authors' models
    plan = plan_queue(session, log=lambda _: None)
    names = _names(plan.tasks)
    assert names[:6] == [f"queue/c1c2-core/{m}/seed{s}" for m in ("rep_vgg6", "vgg6", "vgg11") for s in (0, 1)]
    assert names[6:10] == [f"queue/c2-width-core/{m}/seed{s}" for m in ("rep_wrn16_4", "wrn16_1") for s in (0, 1)]
    assert names[10:12] == ["queue/search-vgg-depth/trials-1-24", "queue/search-wrn-width/trials-1-24"]
    rest = [n for n in names if n.startswith("queue/c1c2-rest/")]
    assert len(rest) == 24 and not any("/vgg6/" in n or "/vgg11/" in n or "/rep_vgg6/" in n for n in rest)
    assert names[12:36] == rest  # the rest of c1c2 comes next, then the rest of the width experiment
    width_rest = [n for n in names if n.startswith("queue/c2-width-rest/")]
    assert names[36:] == width_rest and len(width_rest) == 8  # wrn16_2/4 and rep_wrn16_2/8, 2 seeds each
    c3 = next(n for n in plan.notes if n["item"] == "c3")
    assert c3["status"] == "waiting" and "352,123" in c3["reason"] and "352,987" in c3["reason"]

    monkeypatch.setattr(_gpu_queue, "rep_cnn_c4_params", lambda: 352_987)  # the authors' models (the registry now)
    plan = plan_queue(session, log=lambda _: None)
    c3_tasks = [n for n in _names(plan.tasks) if n.startswith("queue/c3/")]
    assert c3_tasks and _names(plan.tasks)[-len(c3_tasks):] == c3_tasks  # last
    c3 = next(n for n in plan.notes if n["item"] == "c3")
    # no rot-MNIST timing measured: declared 300 s per run, so the 75-minute cap admits all 14 runs
    assert c3["planned"] == len(c3_tasks) == 14 and c3["capped"] == 0
    assert registry == _gpu_queue.FAITHFUL_REP_CNN_C4_PARAMS  # C3's gate is open with today's registry


def test_skips_what_is_done(session, monkeypatch):
    monkeypatch.setattr(_gpu_queue, "rep_cnn_c4_params", lambda: 352_123)
    runs = session.results / "c1c2_vgg_depth" / "runs"
    runs.mkdir(parents=True)
    (runs / "rep_vgg6__seed0.json").write_text("{}")
    search = session.results / "search" / "wrn-width-cifar10"
    search.mkdir(parents=True)
    pd.DataFrame({"trial": range(20), "status": "complete", "train_seconds": 40.0}).to_parquet(
        search / "trials.parquet")
    plan = plan_queue(session, log=lambda _: None)
    names = _names(plan.tasks)
    assert "queue/c1c2-core/rep_vgg6/seed0" not in names and names[0] == "queue/c1c2-core/rep_vgg6/seed1"
    wrn = [t for t in plan.tasks if t.name.startswith("queue/search-wrn-width/")]
    assert [t.name for t in wrn] == ["queue/search-wrn-width/trials-21-24"]  # a search continues where it stopped
    assert "measured" in wrn[0].basis

    checks = session.gpu_dir / "checks"
    checks.mkdir(parents=True)
    (checks / "train.json").write_text(json.dumps({"pass": True}))
    (checks / "search.json").write_text(json.dumps({"pass": False}))  # a failed check runs again
    tasks = check_tasks(session)
    assert _names(tasks) == ["check/search", "check/report"] and tasks[1].needs == ["check/search"]
    (checks / "search.json").write_text(json.dumps({"pass": True}))  # passed, but its run is not here:
    assert _names(check_tasks(session)) == ["check/search", "check/report"]  # the report needs it again
    every = ["bench/repeat_overhead", "bench/repeat_overhead_per_layer", "bench/repeat_overhead_host",
             "bench/step_profile", "bench/trainer_throughput", "bench/packed_trials", "bench/batched_seeds",
             "bench/vgg11_15ep"]
    # the fixture's vgg11_15ep.json is speed revision 1's: this revision measures it again
    assert _names(bench_tasks(session)) == every
    current = bench_path(session.gpu_dir, "packed_trials")
    assert current.parent.name == f"rev{SPEED_REVISION}" and SPEED_REVISION >= 2
    current.parent.mkdir(parents=True)
    current.write_text("{}")
    assert _names(bench_tasks(session)) == [n for n in every if n != "bench/packed_trials"]
    host = next(t for t in bench_tasks(session) if t.name == "bench/repeat_overhead_host")
    assert "repeat_overhead.py" in " ".join(host.argv) and "--host" in host.argv
    ab = next(t for t in bench_tasks(session) if t.name == "bench/repeat_overhead_per_layer")
    assert "repeat_overhead.py" in " ".join(ab.argv) and ab.argv[-4:-2] == ["--weights", "fused"]
    # planning reads the newest revision that has a file, older ones before a declared figure
    assert session.bench("vgg11_15ep")["seconds"] == 15.0


def test_gpu_minute_cap_and_packing_rule(session, monkeypatch):
    monkeypatch.setattr(_gpu_queue, "rep_cnn_c4_params", lambda: 352_123)
    session.add_to_ledger({"c1c2-core": 15 * 60.0})  # the item's cap is spent
    plan = plan_queue(session, log=lambda _: None)
    assert not any(n.startswith("queue/c1c2-core/") for n in _names(plan.tasks))
    note = next(n for n in plan.notes if n["item"] == "c1c2-core")
    assert "cap" in note["reason"]

    assert pack_of(session, 5) == (1, 1.0)  # nothing measured: one at a time
    (session.gpu_dir / "bench" / "packed_trials.json").write_text(json.dumps({"models": [
        {"model": "vgg6", "flops": 100, "speedup": {"1": 1.0, "2": 1.8, "4": 3.2}},
        {"model": "vgg11", "flops": 1000, "speedup": {"1": 1.0, "2": 1.3, "4": 1.2}}]}))
    assert pack_of(session, 50) == (4, 3.2)  # lighter than vgg6: packs like vgg6
    assert pack_of(session, 500) == (2, 1.3)  # between: like vgg11, its best count
    assert pack_of(session, 5000) == (1, 1.0)  # heavier than anything measured


# --------------------------------------------------------------------------- one real slice on CPU
def test_smoke_slice_writes_results_and_archive_then_skips(tmp_path, monkeypatch, capsys):
    from repnas.experiments.__main__ import main

    monkeypatch.chdir(ROOT)
    results, archive = tmp_path / "results", tmp_path / "results.tgz"
    argv = ["gpu", "--smoke", "--device", "cpu", "--results", str(results), "--archive", str(archive),
            "--only", "queue/c1c2-core", "--time-limit", "300"]
    assert main(argv) == 0, capsys.readouterr()
    text = capsys.readouterr().out
    run = results / "c1c2_vgg_depth" / "runs" / "vgg6__seed0.json"  # smoke.item_models
    record = json.loads(run.read_text())
    assert record["queue_item"] == "c1c2-core" and record["hardware"].startswith("CPU") and record["smoke"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {"c1c2_vgg_depth/runs/vgg6__seed0.json", "c1c2_vgg_depth/table.md"} <= set(names)
    assert any(n.startswith("gpu/") and "/sessions/" in n for n in names)
    assert "queue c3:" in text  # planned or waiting, as the registry stands (both states: the test above)
    page = (tmp_path / "results.md").read_text()  # the smoke's docs/results.md, beside its results
    assert "| vgg6 |" in page and "not measured (no GPU lent)" in page  # a CPU run is no GPU figure

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "start:" not in second and "queue: 0 done, 0 left" in second
    assert json.loads(run.read_text())["finished"] == record["finished"]  # not redone


def test_device_script_carry_fits_64_mib(tmp_path):
    shared = Path(os.environ.get("REPNAS_SHARED", ROOT.parent / "shared"))  # as conftest.py finds it
    if not (shared / "datasets" / "cifar10.tar.gz").exists() or not (shared / "tools" / "device-wheels").exists():
        pytest.skip(f"{shared} (datasets and tools/device-wheels) not found")
    # fetches the wheels into the git-ignored .dw1/ unless they are there (pip; CI reaches PyPI)
    out = subprocess.run(["bash", str(ROOT / "experiments" / "device.sh"), "carry-size"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "REPNAS_SHARED": str(shared)})
    if out.returncode != 0 and "pip" in out.stderr.lower() and not (ROOT / ".dw1").is_dir():
        pytest.skip(f"the wheels could not be fetched: {out.stderr.strip().splitlines()[-1:]}")
    assert out.returncode == 0, out.stderr
    size = int(out.stdout.strip().splitlines()[-1].split()[0])
    assert 20 << 20 < size <= 64 << 20  # the wheels and the archives are really in it


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from repnas.experiments.__main__ import main

    monkeypatch.chdir(ROOT)
    assert main(["gpu", "--smoke", "--device", "cpu", "--queue", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"repnas: error: no such queue file: {tmp_path / 'none.yaml'}"
    assert main(["gpu", "--device", "cpu", "--results", str(tmp_path / "r")]) == 2  # the real thing needs CUDA
    assert "needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "q.yaml"
    bad.write_text("queue:\n  - {name: x, experiment: experiments/c3_rotmnist.yaml, requires: luck}\n")
    assert main(["gpu", "--smoke", "--device", "cpu", "--queue", str(bad)]) == 2
    assert "requires must be one of faithful_rotmnist" in capsys.readouterr().err


# --------------------------------------------------------------------------- sessions add up (issue 19)
def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _plan_facts(results: Path, work: Path) -> tuple[list[tuple], list[dict]]:
    session = session_for("cpu", True, QUEUE, results, None, work=work)
    plan = plan_queue(session, log=lambda _: None)
    return [(t.name, round(t.estimate, 6), t.basis, t.share) for t in plan.tasks], plan.notes


def test_a_fresh_clone_plans_what_the_session_left(tmp_path, monkeypatch, capsys):
    """What a session brings back (run JSONs, a search's study and table, timings, the ledger) is not
    git-ignored, so after ``unpack`` and a commit a fresh clone plans the same done set and estimates as
    the machine that ran the session (the bug: ``runs/`` in .gitignore hid results/<exp>/runs/*.json)."""
    from repnas.experiments.__main__ import main

    monkeypatch.chdir(ROOT)
    session_results, archive = tmp_path / "session" / "results", tmp_path / "results.tgz"
    argv = ["gpu", "--smoke", "--device", "cpu", "--results", str(session_results), "--archive", str(archive),
            "--only", "queue/c1c2-core,queue/search-vgg-depth", "--time-limit", "300"]
    assert main(argv) == 0, capsys.readouterr()
    capsys.readouterr()

    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    _git(repo, "init", "-q")
    with tarfile.open(archive) as tar:  # what experiments/device.sh unpack does
        members = [m.name for m in tar.getmembers() if m.isfile()]
        tar.extractall(repo / "results", filter="data")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "GPU session results")
    tracked = set(_git(repo, "ls-files").split())
    assert {f"results/{m}" for m in members} <= tracked  # nothing the session brought back is ignored
    assert "results/c1c2_vgg_depth/runs/vgg6__seed0.json" in tracked
    search = "results/search/vgg-depth-cifar10"
    assert {f"{search}/trials.parquet", f"{search}/journal.log", f"{search}/search.yaml"} <= tracked
    assert not any(p.endswith((".pt", ".lock")) or "tfevents" in p for p in tracked)

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    here = _plan_facts(session_results, tmp_path / "work-a")
    there = _plan_facts(clone / "results", tmp_path / "work-b")
    assert here == there
    tasks, notes = there
    assert not any(name.startswith("queue/c1c2-core/") for name, *_ in tasks)  # done: not planned again
    search_note = next(n for n in notes if n["item"] == "search-vgg-depth")
    assert search_note["status"] == "done" and search_note["done"] == 2


# --------------------------------------------------------------------------- the forecast (gpu --plan)
#: the runs the two H200 sessions finished (results/*/runs/*.json, committed): done for good
FINISHED = {("c1c2_vgg_depth", "vgg4", 0), ("c1c2_vgg_depth", "vgg6", 0), ("c1c2_vgg_depth", "vgg6", 1),
            ("c1c2_vgg_depth", "vgg11", 0), ("c1c2_vgg_depth", "vgg11", 1), ("c2_wrn_width", "wrn16_1", 0),
            ("c2_wrn_width", "wrn16_1", 1)}


def test_plan_in_a_fresh_clone_lists_the_finished_runs_as_done(tmp_path, monkeypatch, capsys):
    """``gpu --plan`` in a fresh clone of this repository: the committed runs are done, never planned."""
    from repnas.experiments.__main__ import main

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(ROOT), str(clone))
    committed = {(p.parent.parent.name, json.loads(p.read_text())["model"], json.loads(p.read_text())["seed"])
                 for p in (clone / "results").glob("*/runs/*.json")}
    assert committed >= FINISHED
    monkeypatch.chdir(clone)
    monkeypatch.setattr(_gpu, "model_flops", lambda entry, dataset: 10**8)  # estimates only; skips model builds
    assert main(["gpu", "--plan", "--sessions", "99"]) == 0
    text = capsys.readouterr().out
    assert "Forecast for NVIDIA H200" in text and "Session 1:" in text
    planned = [line.split(" | ")[2] for line in text.splitlines() if line.startswith("| ") and "queue/" in line]
    assert planned, text
    for _, model, seed in committed:
        assert not any(f"/{model}/seed{seed}" in name for name in planned)  # never rerun
    # the table of what remains counts them as done: 4/6 of c1c2-core, 2/4 of c2-width-core as committed now
    core = next(line for line in text.splitlines() if line.startswith("| c1c2-core |"))
    done_core = sum(1 for e, m, s in committed if e == "c1c2_vgg_depth" and m in ("vgg6", "rep_vgg6", "vgg11"))
    assert f"{done_core}/6 done" in core
    assert not (clone / "runs").exists() and not _git(clone, "status", "--porcelain")  # --plan wrote nothing


def test_forecast_fills_sessions_in_order_and_adds_search_chunks_up(tmp_path, monkeypatch):
    from repnas.experiments._forecast import forecast, forecast_session

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(_gpu, "model_flops", lambda entry, dataset: 1)
    queue = tmp_path / "queue.yaml"
    queue.write_text(
        "queue:\n"
        "  - {name: runs, experiment: experiments/c1c2_vgg_depth.yaml, models: [vgg4], seeds: [0, 1]}\n"
        "  - {name: search, search: {space: quick, budget: 12k, trials: 4, "
        "recipe_from: experiments/c1c2_vgg_depth.yaml, out: results/search/s}}\n"
        "search_workers: 2\ndefault_run_seconds: 100\n")
    results = tmp_path / "results"
    s = forecast_session(results, queue, work=tmp_path / "work")
    f = forecast(s, time_limit=480, reserve=25)
    assert f.finished and f.hardware == "unknown GPU"
    # no task twice (a search's chunks are named by their trials) but the self-check, once per session
    names = [t.name for session in f.sessions for t in session.tasks if t.name != "selfcheck"]
    assert len(names) == len(set(names))
    checks_and_benches = [n for n in names if n.startswith(("check/", "bench/"))]
    assert checks_and_benches == [t.name for t in _gpu.check_tasks(s) + _gpu.bench_tasks(s)]  # once, in order
    assert [n for n in names if n.startswith("queue/runs/")] == ["queue/runs/vgg4/seed0", "queue/runs/vgg4/seed1"]
    chunks = [n for n in names if n.startswith("queue/search/")]
    spans = [tuple(map(int, n.rsplit("-", 2)[-2:])) for n in chunks]  # trials-A-B
    assert spans[0][0] == 1 and spans[-1][1] == 4 and all(
        b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
    for session in f.sessions:  # nothing ends past the deadline; the first session starts at 0 s
        assert session.busy_until <= 480 - 25 + 1e-9 and session.tasks[0].start == 0
        # every session starts with the self-check, on its declared time (nothing measured here)
        assert (session.tasks[0].name, session.tasks[0].estimate) == ("selfcheck", _gpu.DECLARED["selfcheck"])
        assert [t.name for t in session.tasks].count("selfcheck") == 1 and session.tasks[1].start == 45
    assert len(f.sessions) >= 2  # checks, benchmarks and two 100 s runs do not fit one 455 s command
    assert f.remaining[0]["left"] == 2 and f.remaining[1]["left"] == 4
    assert not (results / "c1c2_vgg_depth").exists() and not (results / "search").exists()  # nothing written
