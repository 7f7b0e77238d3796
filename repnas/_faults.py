"""Named fault-injection points (like etcd's gofail / TiKV's fail-rs), for the fault tests.

``point("start:yaml")`` does nothing unless the environment variable ``REPNAS_FAULT`` names that
point: then this process SIGKILLs itself there, the way a power cut or the OOM killer would, so a
test can kill a command at an exact moment instead of at a random time. ``REPNAS_FAULT=NAME@K``
kills at the K-th time the point is reached (1-based).
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def point(name: str) -> None:
    wanted = os.environ.get("REPNAS_FAULT")
    if not wanted:
        return
    target, _, count = wanted.partition("@")
    if target != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
