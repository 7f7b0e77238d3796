"""Atomic start: a run directory is absent or complete (``search.yaml`` + its study), never half made.

A new search is built in a hidden staging folder beside its run directory, ``.<name>.partial``:
owner lock, ``trials/``, ``logs/``, ``search.yaml`` and, where the storage lives in the run
directory (the default ``study.db`` / ``journal.log``), the study itself. One ``rename`` then puts
the folder in place (POSIX renames a directory over an absent or empty one atomically). A start
killed at any moment leaves either nothing at ``--out`` or a complete run that ``--resume``
continues; a leftover staging folder (its owner lock is free) is removed by the next start.

A study in a storage outside the run directory (``--storage``) cannot move with the rename: it is
created last, with ``repnas.run_dir`` on it, and a new start over an *empty* study of that same run
directory, whose directory never appeared, replaces it (it is what a start killed just before the
rename leaves).

After the start, the search itself is a resume of the new, empty run, so one code path runs both.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from repnas import _faults
from repnas.errors import UserError
from repnas.search._lock import OwnerLock, RunInUse, describe_owner, is_locked
from repnas.search._rundir import RunDir, SearchConfig
from repnas.search._storage import storage_file

RUN_DIR_ATTR = "repnas.run_dir"


def staging_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_new_run_dir(out: str | Path) -> None:
    """Refuse an ``--out`` that is a file, a run, or a folder holding other things."""
    out = Path(out)
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is a file, not a run directory")
    if not out.is_dir():
        return
    if (out / "search.yaml").exists():
        raise UserError(f"run directory {out} already exists; use --resume to continue it or another --out")
    if any(out.iterdir()):
        raise UserError(f"--out {out} is a folder holding other files; choose an empty or new folder")


def abandoned_study(search: SearchConfig, out: str | Path) -> bool:
    """Whether ``search``'s study is an empty one that a start of ``out`` killed before its rename
    left in an outside storage (so a new start may replace it)."""
    import optuna

    out = Path(out)
    if (out / "search.yaml").exists():
        return False
    try:
        from repnas.search._optuna_driver import open_storage

        storage = open_storage(search.storage)
        summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception:  # unreadable: the storage checks say why
        return False
    summary = summaries.get(search.study)
    return (summary is not None and summary.n_trials == 0
            and summary.user_attrs.get(RUN_DIR_ATTR) == str(out.resolve()))


@contextlib.contextmanager
def new_run(search: SearchConfig, out: str | Path) -> Iterator[OwnerLock]:
    """Create run directory ``out`` for ``search`` atomically; yields its held owner lock."""
    out = Path(out)
    staging = staging_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        if is_locked(staging):
            raise RunInUse(f"run directory {out} is being started by {describe_owner(staging / '.owner')}")
        shutil.rmtree(staging)  # a start killed earlier: nothing in it was ever a run
    staging.mkdir()
    lock = OwnerLock(staging).acquire()
    try:
        lock.announce()
        _faults.point("start:staging")
        RunDir(staging).create()
        search.to_yaml(staging / "search.yaml", home=out)  # storage paths relative to where it will be
        _faults.point("start:yaml")
        staged = copy.deepcopy(search)
        staged.storage = _staged_storage(search.storage, out, staging)
        inside = staged.storage != search.storage
        if not inside and abandoned_study(search, out):
            import optuna

            from repnas.search._optuna_driver import open_storage

            optuna.delete_study(study_name=search.study, storage=open_storage(search.storage))
        _create_study(staged, out)
        _faults.point("start:study")
        if out.is_dir():
            out.rmdir()  # empty (checked before); rename cannot replace it on every system
        os.rename(staging, out)
        lock.root = out
        _fsync_dir(out.parent)
        _faults.point("start:renamed")
    except BaseException:
        lock.release()
        with contextlib.suppress(OSError):
            if staging.exists():
                shutil.rmtree(staging)
        raise
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def existing_run(out: str | Path) -> Iterator[OwnerLock]:
    """Own the existing run directory ``out`` (a resume) for the block; refuses a busy one."""
    lock = OwnerLock(out).acquire()
    try:
        lock.announce()
        yield lock
    finally:
        lock.release()


def _staged_storage(url: str, out: Path, staging: Path) -> str:
    """``url`` with a file inside ``out`` moved into ``staging`` (the study is created there)."""
    path = storage_file(url)
    if path is None:
        return url
    try:
        relative = path.resolve().relative_to(out.resolve())
    except ValueError:
        return url
    from repnas.search._storage import sqlite_url

    target = staging.resolve() / relative
    return sqlite_url(target) if "://" in url else str(target)


def _create_study(search: SearchConfig, out: Path) -> None:
    import optuna

    from repnas.search._optuna_driver import open_study

    # a Python sampler object (search.yaml's custom:<Class>) is the driver's to use: any sampler creates
    custom = search.sampler.startswith("custom:")
    study = open_study(search, create=True, sampler=optuna.samplers.RandomSampler(seed=0) if custom else None)
    study.set_user_attr(RUN_DIR_ATTR, str(out.resolve()))
    storage = getattr(study, "_storage", None)
    for holder in (storage, getattr(storage, "_backend", None)):
        engine = getattr(holder, "engine", None)
        if engine is not None:
            engine.dispose()  # no pooled connection keeps the staging path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
