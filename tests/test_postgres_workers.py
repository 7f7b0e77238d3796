"""Optuna workers on several "machines" sharing one PostgreSQL server (issue 14, docs/scaling.md).

Each machine is a separate process with its own run directory: one starts the search, two join it
with ``--join``; one joiner is SIGKILLed mid-trial, as when a machine dies. The server is a real
PostgreSQL on loopback: ``.ci/run`` starts one (``.ci/postgres.sh``) and exports its URL as
``REPNAS_TEST_POSTGRES``; without it the test skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest

from repnas.cli import main

TRIALS = 8
POSTGRES = os.environ.get("REPNAS_TEST_POSTGRES", "")


@pytest.fixture
def postgres_url() -> str:
    if not POSTGRES:
        pytest.skip("no PostgreSQL server: set REPNAS_TEST_POSTGRES (.ci/postgres.sh starts one)")
    pytest.importorskip("psycopg", reason="PostgreSQL driver missing: pip install repnas[postgres]")
    try:
        optuna.get_all_study_names(optuna.storages.RDBStorage(POSTGRES))
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES} unreachable: {type(exc).__name__}")
    return POSTGRES


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "REPNAS_HEARTBEAT": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "repnas", "search", *args, "--device", "cpu"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _folders(run: Path) -> set[int]:
    trials = run / "trials"
    return {int(p.name) for p in trials.iterdir()} if trials.is_dir() else set()


@pytest.mark.slow
@pytest.mark.cluster
def test_starter_and_two_joiners_one_killed(postgres_url, tmp_path):
    started = time.time()
    study_name = f"test-{uuid.uuid4().hex[:10]}"
    storage = ["--storage", postgres_url, "--study", study_name]
    runs = {m: tmp_path / m for m in ("a", "b", "c")}
    starter = _spawn(["--space", "quick", "--trials", str(TRIALS), "--epochs", "2", "--seed", "2",
                      "--early-stop", "none", *storage, "--out", str(runs["a"])], tmp_path / "a.log")
    procs = [starter]
    rdb = optuna.storages.RDBStorage(postgres_url)
    try:
        deadline = time.time() + 240  # loaded 2-core machines are slow
        while study_name not in optuna.get_all_study_names(rdb):
            assert starter.poll() is None, (tmp_path / "a.log").read_text()
            assert time.time() < deadline, "the starter never created its study"
            time.sleep(0.2)
        procs += [_spawn(["--join", *storage, "--out", str(runs[m])], tmp_path / f"{m}.log") for m in "bc"]
        joiners = {"b": procs[1], "c": procs[2]}
        # kill the first joiner seen running a trial (its folder exists, the study says RUNNING)
        killed, dead = None, None
        while killed is None:
            assert time.time() < deadline, "no joiner ever ran a trial"
            for m, proc in joiners.items():
                assert proc.poll() is None, (tmp_path / f"{m}.log").read_text()
            running = {t.number for t in optuna.load_study(study_name=study_name, storage=rdb).get_trials(
                deepcopy=False) if t.state.name == "RUNNING"}
            for m, proc in joiners.items():
                mine = _folders(runs[m]) & running
                if mine and killed is None:
                    proc.kill()
                    killed, dead = min(mine), m
            time.sleep(0.1)
        joiners[dead].wait()
        alive = "c" if dead == "b" else "b"
        deadline = time.time() + 240  # loaded 2-core machines are slow
        for proc, name in ((procs[0], "a"), (joiners[alive], alive)):
            assert proc.wait(timeout=max(1.0, deadline - time.time())) == 0, (tmp_path / f"{name}.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    trials = optuna.load_study(study_name=study_name, storage=rdb).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert len(by_number) == len(trials)
    assert all(t.state.name in ("COMPLETE", "FAIL", "PRUNED") for t in trials)  # nothing left running
    # the killed machine's trial failed (heartbeat lost) and its point was trained once elsewhere
    assert by_number[killed].state.name == "FAIL"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].params == by_number[killed].params
    assert retries[0].state.name == "COMPLETE" and retries[0].number not in _folders(runs[dead])
    # the global cap: exactly TRIALS trials count (the lost one and duplicates do not), never more
    counted = [t for t in trials if t.number != killed and t.user_attrs.get("duplicate_of") is None]
    assert len(counted) == TRIALS
    # every trial ran on exactly one machine, which keeps its folder
    folders = {m: _folders(run) for m, run in runs.items()}
    assert folders["a"].isdisjoint(folders["b"]) and folders["c"].isdisjoint(folders["a"] | folders["b"])
    assert folders["a"] | folders["b"] | folders["c"] == set(by_number)
    assert folders["a"] and folders[dead], f"a machine ran no trial: {folders}"
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 1 + len([m for m in "bc" if folders[m]]), workers  # study-wide numbers, no collision

    # the table is a view of the storage: both surviving machines and a fresh one agree with it
    assert main(["search", "--join", *storage, "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert _folders(tmp_path / "d") == set()  # the cap was reached: it only rebuilt the table
    tables = {m: pd.read_parquet(tmp_path / m / "trials.parquet") for m in ("a", alive, "d")}
    assert tables["a"].equals(tables[alive]) and tables["a"].equals(tables["d"])
    table = tables["d"]
    assert sorted(table["trial"]) == sorted(by_number)
    for row in table.itertuples():
        t = by_number[row.trial]
        assert row.worker == t.user_attrs["worker"]
        if t.state.name == "COMPLETE":
            assert row.status == "complete" and [row.val_accuracy, row.params, row.flops] == t.values
            assert row.val_accuracy > 0.3  # digits, 10 classes: learnt something in 2 epochs
    assert table.loc[table["trial"] == killed, "error"].item().startswith("lost")
    print(f"\npostgres test: {TRIALS} trials (+1 lost and retried), 3 machines, killed trial {killed}, "
          f"folders {dict((m, sorted(f)) for m, f in folders.items())}, {time.time() - started:.1f}s")


def _check_once_and_capped(postgres_url: str, study_name: str, runs: list[Path]) -> None:
    """Every trial ran on exactly one machine, nothing is left running, and exactly TRIALS count."""
    rdb = optuna.storages.RDBStorage(postgres_url)
    trials = optuna.load_study(study_name=study_name, storage=rdb).get_trials(deepcopy=False)
    assert all(t.state.name in ("COMPLETE", "FAIL", "PRUNED") for t in trials)
    folders = [_folders(run) for run in runs]
    assert sum(len(f) for f in folders) == len(set().union(*folders)) == len(trials)  # each once
    counted = [t for t in trials if t.user_attrs.get("duplicate_of") is None and "retry_of" not in t.user_attrs]
    assert len(counted) == TRIALS, [(t.number, t.state.name) for t in trials]


def _all_exit_0(procs: dict[str, subprocess.Popen], tmp_path: Path) -> None:
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=400) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
@pytest.mark.cluster
def test_starter_and_two_joiners_started_in_the_same_second(postgres_url, tmp_path):
    """A job array: the joiners do not wait for the starter's study by hand (they exited 2)."""
    study_name = f"test-{uuid.uuid4().hex[:10]}"
    storage = ["--storage", postgres_url, "--study", study_name]
    runs = {m: tmp_path / m for m in ("a", "b", "c")}
    began = time.time()
    procs = {"b": _spawn(["--join", *storage, "--out", str(runs["b"])], tmp_path / "b.log"),
             "c": _spawn(["--join", *storage, "--out", str(runs["c"])], tmp_path / "c.log"),
             "a": _spawn(["--space", "quick", "--trials", str(TRIALS), "--epochs", "1", "--early-stop", "none",
                          *storage, "--out", str(runs["a"])], tmp_path / "a.log")}
    assert time.time() - began < 1.0
    _all_exit_0(procs, tmp_path)
    waiting = [line for m in "bc" for line in (tmp_path / f"{m}.log").read_text().splitlines()
               if line.startswith("join: waiting")]
    assert len(waiting) <= 2  # at most one waiting line per joiner
    _check_once_and_capped(postgres_url, study_name, list(runs.values()))


@pytest.mark.slow
@pytest.mark.cluster
def test_three_identical_commands(postgres_url, tmp_path):
    """Every worker of an array runs the same command: the first to create the study starts it, the
    others join; a worker whose flags differ from the study's config is refused in one line."""
    study_name = f"test-{uuid.uuid4().hex[:10]}"
    command = ["--space", "quick", "--trials", str(TRIALS), "--epochs", "1", "--early-stop", "none",
               "--storage", postgres_url, "--study", study_name, "--out", str(tmp_path / "run")]
    procs = {f"w{k}": _spawn(command, tmp_path / f"w{k}.log") for k in range(3)}
    _all_exit_0(procs, tmp_path)
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("run"))
    # one machine here: the joiners take run-join<k> beside the starter's run (a free one of the
    # same study is reused, as a rejoin would)
    assert runs[0].name == "run" and {p.name for p in runs[1:]} <= {"run-join1", "run-join2"} and len(runs) >= 2
    _check_once_and_capped(postgres_url, study_name, runs)
    differing = [*command[:3], "9", *command[4:]]  # --trials 9
    other = subprocess.run([sys.executable, "-m", "repnas", "search", *differing, "--device", "cpu"],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2, other.stderr
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and "trials 9 (the study's is 8)" in lines[0], lines
