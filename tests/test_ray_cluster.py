"""A real two-node Ray cluster without a shared run directory, and a worker node lost mid-trial.

A head node (``ray start --head``) and a worker node with the custom resource ``worker_node``, the
worker started under ``unshare --mount`` with a tmpfs over the driver run directory's parent, so
its processes cannot see (or write) the driver's run directory; ``--resources-per-trial
worker_node=1`` forces every trial onto it. Tune's storage (``--ray-storage``) is a path both
reach, as an NFS mount would be. Mid-trial the worker node's raylet is SIGKILLed and a fresh worker
node is started: every trial must complete from its last checkpoint, none lost, none duplicated,
and the driver's run directory must be complete. Needs root (mount) and Ray; skips otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TRIALS, EPOCHS = 2, 2  # a node with 2 CPUs runs both at once: both are in flight at the kill


def _ray_cli() -> str | None:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else shutil.which("ray")


def _env() -> dict[str, str]:
    """A loopback test cluster: no token auth, no usage stats, repnas importable on every node."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path,
            "PYTHONUNBUFFERED": "1",
            # the head notices a dead node in ~2 s instead of ~15 s (Ray's health check settings)
            "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
            "RAY_health_check_failure_threshold": "3"}


def _pids_with(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (this test's own temp dirs: nobody else's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_base():
    """A short temp dir (Ray's socket paths must stay short); every process of the test's cluster
    has it in its command line, which is how the test stops them (never ``ray stop``: it would stop
    other clusters on the machine)."""
    if _ray_cli() is None:
        pytest.skip("the ray command is not installed")
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    base = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs tmpfs {base}"], capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot hide a folder from a node (unshare --mount needs root): {probe.stderr.strip()[:120]}")
    yield base
    _kill(_pids_with(str(base)))
    time.sleep(0.5)
    shutil.rmtree(base, ignore_errors=True)


def _start_worker_node(base: Path, address: str, hidden: Path, name: str, fault: str | None = None) -> subprocess.Popen:
    """``ray start`` in its own mount namespace where ``hidden`` is an empty tmpfs; refuses to start
    (exit 3) if the driver's files are still visible. ``fault`` is the node's ``REPNAS_FAULT`` (its
    trial processes inherit the raylet's environment)."""
    command = (f"mount -t tmpfs tmpfs {hidden} && test ! -e {hidden}/marker && exec {_ray_cli()} start "
               f"--address={address} --num-cpus=2 --resources='{{\"worker_node\": 1}}' --temp-dir={base / name} "
               "--dashboard-agent-listen-port=0 --disable-usage-stats --block")
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                            stdout=(base / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                            env={**_env(), **({"REPNAS_FAULT": fault} if fault else {})})


def _wait(predicate, timeout: float, what: str, *procs: tuple[subprocess.Popen, Path]) -> None:
    deadline = time.time() + timeout
    while not predicate():
        for proc, log in procs:
            assert proc.poll() is None, f"{what}: exit {proc.returncode} of {log.name}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.cluster
def test_two_nodes_lose_the_worker_node_mid_trial(cluster_base):
    started = time.time()
    base = cluster_base
    hidden = base / "driver"  # the run directory's parent: an empty tmpfs on the worker nodes
    run = hidden / "run"
    storage = base / "tune"  # Tune's storage: reached by every node (the role of an NFS mount)
    hidden.mkdir()
    (hidden / "marker").write_text("the driver's files")
    head = subprocess.run([_ray_cli(), "start", "--head", f"--port={_free_port()}", "--num-cpus=1",
                           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={base / 'head'}",
                           "--dashboard-agent-listen-port=0"], capture_output=True, text=True, env=_env(),
                          timeout=180)
    found = re.search(r"ray start --address='([^']+)'", head.stdout + head.stderr)
    if head.returncode != 0 or not found:
        pytest.skip(f"ray start --head failed: {(head.stderr or head.stdout).strip()[-200:]}")
    address = found.group(1)
    phases = {"head up": time.time() - started}
    # node 1's trials stop after their first epoch's report (checkpoint): the kill lands mid-trial
    # however fast an epoch is; node 2's trials run through
    first = _start_worker_node(base, address, hidden, "node1", fault="ray:reported@1=hold")
    driver = subprocess.Popen(
        [sys.executable, "-m", "repnas", "search", "--space", "quick", "--trials", str(TRIALS), "--epochs",
         str(EPOCHS), "--backend", "ray", "--ray-address", address, "--ray-storage", str(storage),
         "--resources-per-trial", "worker_node=1", "--max-failures", "2", "--device", "cpu", "--seed", "4",
         "--out", str(run)],
        stdout=(base / "driver.log").open("w"), stderr=subprocess.STDOUT, env=_env())
    try:
        # once a trial has reported its first epoch (a checkpoint in Tune's storage), kill node 1's raylet
        _wait(lambda: any(storage.glob("run/trial_*/checkpoint_*")), 240, "a first checkpoint",
              (driver, base / "driver.log"), (first, base / "node1.log"))
        raylets = [p for p in _pids_with(str(base / "node1")) if "raylet" in Path(f"/proc/{p}/cmdline").read_text()]
        assert raylets, "no raylet found for worker node 1"
        _kill(raylets)
        killed_at = time.time()
        phases["first checkpoint, node 1 killed"] = killed_at - started
        first.wait(timeout=60)
        second = _start_worker_node(base, address, hidden, "node2")
        assert driver.wait(timeout=300) == 0, (base / "driver.log").read_text()[-3000:]
        phases["search done"] = time.time() - started
        assert second.poll() is None, (base / "node2.log").read_text()[-2000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    table = pd.read_parquet(run / "trials.parquet")
    numbers = json.loads((run / "ray_trials.json").read_text())
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{run / 'study.db'}")
    logs = {n: (run / "trials" / str(n) / "log.txt").read_text() for n in table["trial"]}
    retried = [n for n, text in logs.items() if "restored from Tune's checkpoint" in text]
    complete = table[table["status"] == "complete"]
    counts = {"trials": len(table), "lost": TRIALS - len(complete), "duplicated": len(table) - table["trial"].nunique()
              + len(study.trials) - TRIALS, "retried": len(retried)}
    print(f"\nray two-node test: {counts}; seconds since start: "
          + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    assert counts == {"trials": TRIALS, "lost": 0, "duplicated": 0, "retried": counts["retried"]}
    assert counts["retried"] >= 1, "the killed node ran no trial that had to be restored"
    assert sorted(table["trial"]) == list(range(TRIALS)) and sorted(numbers.values()) == list(range(TRIALS))
    assert (complete["val_accuracy"] > 0.3).all()  # digits, 10 classes
    assert sorted(t.values[0] for t in study.trials) == sorted(complete["val_accuracy"])
    for n, text in logs.items():  # the driver's run directory is complete: each trial's last checkpoint
        assert {"checkpoint.pt", "config.yaml", "log.txt"} <= {p.name for p in (run / "trials" / str(n)).iterdir()}
        assert f"epoch {EPOCHS}:" in text
    # no worker node ever wrote the driver's run directory: everything there came through Tune's storage
    assert not any(run.glob("trials/*/checkpoint_*")) and (hidden / "marker").is_file()
    # one report per epoch, also for a trial restored after its node died
    progress = {path.parent.name: pd.read_csv(path) for path in storage.glob("run/trial_*/progress.csv")}
    assert len(progress) == TRIALS
    for frame in progress.values():
        assert sorted(frame["epoch"]) == list(range(1, EPOCHS + 1))
