"""Atomic file writes: a reader (another worker, a report, a resumed run) never sees half a file.

Every file repnas rewrites in place (configs, checkpoints, ``trials.parquet``, dataset caches,
reports) is written to a temporary name beside it and renamed over it, which POSIX makes atomic.
The temporary's name carries the writer's pid (``.<stem>.<pid>.tmp<suffix>``), so a process that
was killed while writing leaves a temporary that the next writer of the same file (or a command
that cleans its folder, :func:`remove_dead_temporaries`) recognises as dead and removes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repnas import _faults
from repnas._procs import pid_alive

#: ``.<stem>.<pid>.tmp<suffix>``: the temporary name :func:`atomic_path` gives ``<stem><suffix>``
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.tmp(?P<suffix>\.[^.]*)?")


def remove_dead_temporaries(folder: str | os.PathLike, target: str | None = None,
                            suffix: str | None = None) -> list[Path]:
    """Remove the :func:`atomic_path` temporaries in ``folder`` whose writer is dead (its pid is
    in the name; a live writer's are kept), of file ``target`` only, or of files ending in
    ``suffix`` only; returns the paths removed. A missing folder has none."""
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and ".tmp" in e.name]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if target is not None and f"{match['stem']}{match['suffix'] or ''}" != target:
            continue
        if suffix is not None and (match["suffix"] or "") != suffix:
            continue
        if int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:  # another cleaner was first
            continue
        removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that add one do not); it
    replaces ``path`` when the block succeeds and is removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    remove_dead_temporaries(path.parent, target=path.name)  # what a killed writer of this file left
    try:
        yield tmp
        _faults.point("atomic:replace")  # fault tests kill here: the final name must not exist half
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
