"""A ``--workers`` process that dies by a signal is replaced and its trial retried, not the end of the search.

Each original worker stops itself (SIGSTOP, ``REPNAS_FAULT=worker<k>:epoch=stop``) after its first
trained epoch, so the test knows every process is mid-trial; then it SIGKILLs worker 2, as the OOM
killer would, and lets the others go on. The replacement's fault points are ``worker2.1:...``, so
it is not stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from fault_helpers import repnas_cmd, subprocess_env

from repnas.runs import RunDir, SearchConfig, open_study
from repnas.search._canonical import model_key


def _children(parent: int) -> dict[int, str]:
    """The spawned worker processes of ``parent``: pid -> state letter (``T`` = stopped)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(fields[1]) == parent and b"spawn_main" in cmdline:
                found[int(entry.name)] = fields[0]
    return found


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _all_stopped(proc: subprocess.Popen, workers: int) -> list[int]:
    """The worker pids (spawn order: 1, 2, ...) once the main process and every worker stopped itself."""
    deadline = time.time() + 180
    while True:
        children = _children(proc.pid)
        if len(children) == workers - 1 and set(children.values()) == {"T"} and _state(proc.pid) == "T":
            return sorted(children)
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:] if proc.poll() else ""
        time.sleep(0.1)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_the_search_finishes(tmp_path):
    out = tmp_path / "run"
    stops = ",".join(f"worker{k}:epoch=stop" for k in range(3))
    argv = ["search", "--space", "quick", "--trials", "3", "--epochs", "2", "--workers", "3", "--device", "cpu",
            "--early-stop", "none", "--out", str(out)]
    proc = subprocess.Popen(repnas_cmd(*argv), env=subprocess_env(REPNAS_FAULT=stops), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        worker1, worker2 = _all_stopped(proc, 3)
        search = SearchConfig.from_yaml(out / "search.yaml")
        running = {t.number: t.user_attrs["holder"]["pid"] for t in open_study(search).trials
                   if t.state.name == "RUNNING"}
        assert sorted(running.values()) == sorted([proc.pid, worker1, worker2]), running  # each one mid-trial
        (killed,) = [n for n, pid in running.items() if pid == worker2]
        os.kill(worker2, signal.SIGKILL)  # the OOM killer
        os.kill(worker1, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "leaked semaphore" not in stderr, stderr
    assert f"worker 2 (pid {worker2}) died (signal 9 (SIGKILL))" in stdout, stdout
    assert "1 interrupted (retried), 1 worker replaced in" in stdout, stdout
    # every trial once: 3 distinct models trained to the end, the killed one's point among them, once
    study = open_study(search)
    trials = study.trials
    assert [t.state.name for t in trials].count("RUNNING") == 0 and "WAITING" not in [t.state.name for t in trials]
    counted = [t for t in trials if not t.user_attrs.get("interrupted") and t.user_attrs.get("duplicate_of") is None]
    assert len(counted) == 3 and all(t.state.name == "COMPLETE" for t in counted), \
        [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert retry in counted and retry.params == next(t for t in trials if t.number == killed).params
    table = pd.read_parquet(RunDir(out).trials_parquet).set_index("trial")
    keys = {model_key(json.loads(table.loc[t.number, "config"])) for t in counted}
    assert len(keys) == 3  # no model trained twice
    assert sorted(table.index) == sorted(t.number for t in trials)
    assert table.loc[killed, "status"] == "interrupted"
    assert table.loc[killed, "error"] == f"interrupted (retried as trial {retry.number})"
    assert list(table["status"]).count("complete") == 3 and list(table["status"]).count("interrupted") == 1
    assert (out / "samplers" / "worker2.pkl").is_file()  # the replacement kept the number, and its pickle
