"""Atomic file writes: a reader (another worker, a report, a resumed run) never sees half a file.

Every file repnas rewrites in place (configs, checkpoints, ``trials.parquet``, dataset caches,
reports) is written to a temporary name beside it and renamed over it, which POSIX makes atomic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from repnas import _faults


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that add one do not); it
    replaces ``path`` when the block succeeds and is removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        _faults.point("atomic:replace")  # fault tests kill here: the final name must not exist half
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
