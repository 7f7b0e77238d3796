"""A search killed with SIGKILL mid-run and resumed loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd

from repnas.cli import main
from repnas.runs._rundir import SearchConfig

TRIALS = 6


def test_sigkill_then_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "repnas", "search", "--space", "quick", "--trials", str(TRIALS),
           "--epochs", "6", "--out", str(out), "--device", "cpu", "--seed", "3", "--early-stop", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    completed_lines = 0
    deadline = time.time() + 180
    try:
        while completed_lines < 2:
            line = proc.stdout.readline()
            assert line, f"search ended before 2 trials completed (exit {proc.poll()})"
            assert time.time() < deadline, "search too slow"
            completed_lines += line.startswith("trial ") and " complete " in line
        # kill mid-trial: once the next trial is RUNNING with its whole point sampled
        search = SearchConfig.from_yaml(out / "search.yaml")
        knobs = len(search.search_space().knobs)
        while not any(t.state.name == "RUNNING" and len(t.params) == knobs for t in optuna.load_study(
                study_name=search.study, storage=search.storage).get_trials(deepcopy=False)):
            assert time.time() < deadline and proc.poll() is None, "no running trial seen"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:  # a search that died by itself is reported by the asserts, not masked here
            os.kill(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output[-2000:]

    search = SearchConfig.from_yaml(out / "search.yaml")
    before = optuna.load_study(study_name=search.study, storage=search.storage)
    done_before = {t.number: (t.values, t.params) for t in before.trials if t.state.name == "COMPLETE"}
    assert len(done_before) >= 2
    assert len(done_before) < TRIALS

    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0

    after = optuna.load_study(study_name=search.study, storage=search.storage)
    numbers = [t.number for t in after.trials]
    assert len(numbers) == len(set(numbers))
    by_number = {t.number: t for t in after.trials}
    for number, (values, params) in done_before.items():  # nothing completed before the kill is lost
        assert by_number[number].state.name == "COMPLETE"
        assert by_number[number].values == values and by_number[number].params == params
    interrupted = [t for t in after.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) >= 1 and all(t.state.name == "FAIL" for t in interrupted)
    counted = [t for t in after.trials  # duplicates (models reused from an earlier trial) are not counted
               if not t.user_attrs.get("interrupted") and t.user_attrs.get("duplicate_of") is None]
    assert len(counted) == TRIALS and all(t.state.name in ("COMPLETE", "FAIL", "PRUNED") for t in counted)
    # an interrupted trial's point was queued again and trained to the end
    for t in interrupted:
        retries = [r for r in after.trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
        assert retries[0].params == t.params
    table = pd.read_parquet(out / "trials.parquet")
    assert sorted(table["trial"]) == sorted(numbers)
    assert (table["status"] == "complete").sum() == sum(t.state.name == "COMPLETE" for t in after.trials)
