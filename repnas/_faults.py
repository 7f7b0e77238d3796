"""Named fault-injection points (like etcd's gofail / TiKV's fail-rs), for the fault tests.

``point("start:yaml")`` does nothing unless the environment variable ``REPNAS_FAULT`` names that
point: then this process SIGKILLs itself there, the way a power cut or the OOM killer would, so a
test can kill a command at an exact moment instead of at a random time. ``REPNAS_FAULT=NAME@K``
acts at the K-th time the point is reached (1-based). ``REPNAS_FAULT=NAME@K=hold`` stops there
instead (sleeps until something else kills it): a test that kills a whole machine (a Ray node)
uses it to be sure the node dies while the process is mid-work, however fast the work is.
"""

from __future__ import annotations

import os
import signal
import time

_seen: dict[str, int] = {}


def point(name: str) -> None:
    wanted = os.environ.get("REPNAS_FAULT")
    if not wanted:
        return
    wanted, _, action = wanted.partition("=")
    target, _, count = wanted.partition("@")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] < int(count or 1):
        return
    if action == "hold":
        while True:
            time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)
