"""Named fault-injection points (like etcd's gofail / TiKV's fail-rs), for the fault tests.

``point("start:yaml")`` does nothing unless the environment variable ``REPNAS_FAULT`` names that
point: then this process SIGKILLs itself there, the way a power cut or the OOM killer would, so a
test can kill a command at an exact moment instead of at a random time. ``REPNAS_FAULT=NAME@K``
acts at the K-th time the point is reached (1-based). ``REPNAS_FAULT=NAME@K=hold`` stops there
instead (sleeps until something else kills it): a test that kills a whole machine (a Ray node)
uses it to be sure the node dies while the process is mid-work, however fast the work is.
``NAME@K=stop`` sends the process SIGSTOP there, so a test can hold several processes at known
moments and let each go on (SIGCONT) or kill it. Several points: separated by commas
(``worker0:epoch=stop,worker1:epoch=stop``).
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
    for spec in wanted.split(","):
        target, _, action = spec.partition("=")
        target, _, count = target.partition("@")
        if target != name:
            continue
        _seen[name] = _seen.get(name, 0) + 1
        if _seen[name] != int(count or 1):
            return
        if action == "hold":
            while True:
                time.sleep(60)
        os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)
        return
