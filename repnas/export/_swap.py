"""An export folder appears whole or not at all, and a killed export leaves nothing behind for long.

Why: ``repnas export`` staged its files beside ``--out`` and then moved them in one by one; a kill
during the moves left a partial folder under the final name (6 of 12 kills in the fault suite) and
its staging folder (176 MB in all, as nothing removed a dead export's staging). Now the staging
folder is completed first (a new ``--out`` is the staging folder renamed, one ``rename``; an existing
one gets the staging folder holding hard links of what it held, swapped in by one
``renameat2(RENAME_EXCHANGE)`` where Linux has it), and every export first removes the staging
folders of exports whose process is dead, beside any ``--out`` in the same parent folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from repnas import _faults
from repnas._procs import pid_alive

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def staging_for(out: Path) -> Path:
    return out.parent / f".{out.name}.export-{os.getpid()}"


def remove_dead_staging(out: Path) -> None:
    """Staging folders beside ``out`` (of any export into ``out``'s parent folder, not only of
    ``out``: a killed export's ``--out`` may never be exported to again) whose export process is
    gone; an old folder a killed swap moved aside (``.old``) goes back to its ``--out`` when that
    is missing."""
    for path in out.parent.glob(".*.export-*"):
        name, _, pid_text = path.name[1:].rpartition(".export-")
        pid_text = pid_text.removesuffix(".old")
        if not name or not pid_text.isdigit() or not path.is_dir() or pid_alive(int(pid_text)):
            continue
        if path.name.endswith(".old") and not (out.parent / name).exists():
            os.rename(path, out.parent / name)
            continue
        shutil.rmtree(path, ignore_errors=True)


def keep_existing(out: Path, staging: Path) -> None:
    """Hard links in ``staging`` of what ``out`` holds and the export does not replace (an earlier
    export's trials, the user's files): the swapped-in folder keeps them, as moving files in did."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        target = staging / entry.name
        if target.exists() or target.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, copy_function=os.link, symlinks=True)
        else:
            os.link(entry, target, follow_symlinks=False)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def swap_in(staging: Path, out: Path) -> None:
    """Put the complete ``staging`` folder at ``out`` in one step; ``staging`` then holds the old
    contents (or is gone) and is the caller's to remove."""
    _faults.point("export:staged")
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(staging, out)
    elif not _exchange(staging, out):  # no renameat2: two renames, the old folder kept aside between
        aside = staging.with_name(staging.name + ".old")
        os.rename(out, aside)
        os.rename(staging, out)
        shutil.rmtree(aside, ignore_errors=True)
    _faults.point("export:moved")
