"""Which process holds a trial, and whether it still lives: what frees a dead worker's model claims.

Why: a worker waits for the trial that claimed the model it was proposed (``ModelClaims``) while
that trial is RUNNING. A worker killed by SIGKILL leaves its trial RUNNING (a journal or SQLite
study has no heartbeat), so every worker proposed that model waited for the 6-hour claim timeout:
a ``--workers 4`` search hung for 13 minutes with no progress. Each trial now records its holder
(host, pid and the process's start time, so a reused pid is not taken for the holder); a holder on
this host that is gone, or a zombie its parent has not reaped yet, no longer holds anything.
A holder on another host is judged by the storage's heartbeat (a database server), as before.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from repnas._procs import pid_alive

HOLDER_ATTR = "holder"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot) and whether it is alive, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):  # dead, not reaped yet
        return None
    return fields[19]


def holder_stamp() -> dict:
    """This process as a trial's holder."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def holder_alive(stamp) -> bool:
    """Whether the holder ``stamp`` (:func:`holder_stamp`) may still be working: True when it cannot
    be told (another host, no /proc, an older run without a stamp)."""
    if not isinstance(stamp, dict) or stamp.get("host") != socket.gethostname() or not stamp.get("pid"):
        return True
    if not Path("/proc/self/stat").exists():  # no start time to compare: whether the pid lives
        return pid_alive(int(stamp["pid"]))
    start = _start_time(int(stamp["pid"]))
    return start is not None and (stamp.get("start") is None or start == stamp["start"])
