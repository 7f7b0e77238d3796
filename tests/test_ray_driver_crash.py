"""A Ray search whose driver dies mid-trial, then ``repnas search --resume``: ``Tuner.restore``.

The driver (and the local Ray it started: its whole process group, as a machine reset would) is
SIGKILLed once a trial has sent its first epoch's report, while that trial is held there
(``REPNAS_FAULT=ray:reported@1=hold``, so the kill lands mid-trial however fast an epoch is). The
resume, without the fault, restores the Tune experiment from its storage: the interrupted trials go
on from their last checkpoints, every trial ends exactly once with one report per epoch, and the run
directory and the study agree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

pytest.importorskip("ray.tune")

from repnas.runs._rundir import SearchConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
TRIALS, EPOCHS = 2, 2


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.slow
def test_resume_after_the_driver_died_restores_the_tune_experiment(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "repnas", "search", "--space", "quick", "--trials", str(TRIALS), "--epochs",
            str(EPOCHS), "--backend", "ray", "--early-stop", "none", "--device", "cpu", "--seed", "1",
            "--out", str(out), "--quiet"]
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                              env=_env(REPNAS_FAULT="ray:reported@1=hold"))
    try:
        deadline = time.time() + 240
        while not any(out.glob("ray/run/trial_*/checkpoint_*")):
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no trial reported its first epoch"
            time.sleep(0.2)
        time.sleep(1.0)  # Tune writes its experiment state as results arrive
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert not (out / "trials.parquet").exists()  # the driver died before any trial ended

    resumed = subprocess.run([sys.executable, "-m", "repnas", "search", "--resume", "--out", str(out), "--quiet"],
                             capture_output=True, text=True, env=_env(), timeout=420)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]

    table = pd.read_parquet(out / "trials.parquet")
    assert sorted(table["trial"]) == list(range(TRIALS)) and (table["status"] == "complete").all()
    logs = {n: (out / "trials" / str(n) / "log.txt").read_text() for n in table["trial"]}
    restored = [n for n, text in logs.items() if "restored from Tune's checkpoint" in text]
    assert len(restored) >= 1  # a held trial went on from its checkpoint, not from scratch
    for text in logs.values():
        assert f"epoch {EPOCHS}:" in text
    # one report per epoch, across the crash (result.json: Tune's JSON lines; its progress.csv, reopened
    # by the restored experiment, gets rows of more columns than its header)
    reports = [[json.loads(line)["epoch"] for line in p.read_text().splitlines() if line.strip()]
               for p in out.glob("ray/run/trial_*/result.json")]
    assert len(reports) == TRIALS and all(sorted(r) == list(range(1, EPOCHS + 1)) for r in reports), reports
    numbers = json.loads((out / "ray_trials.json").read_text())
    assert sorted(numbers.values()) == list(range(TRIALS))
    search = SearchConfig.from_yaml(out / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == TRIALS  # told once each; no second experiment proposed more
    assert sorted(t.values[0] for t in complete) == sorted(table["val_accuracy"])
