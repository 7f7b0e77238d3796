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
from repnas.runs._lock import OwnerLock, RunInUse, describe_owner, is_locked
from repnas.runs._rundir import RunDir, SearchConfig
from repnas.runs._storage import inspect_storage, is_server_storage, open_storage, storage_exists, storage_file
from repnas.runs._study import open_study

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


def check_storage(search: SearchConfig, resume: bool, out: str | Path | None = None) -> None:
    """Before anything is written: the storage, read-only first (foreign data, 0 bytes, damage),
    then the study it must (``resume``) or must not (a new search) hold. With ``out``, an empty study
    that a killed start of ``out`` left in an outside storage is no obstacle (the start replaces it)."""
    inspect_storage(search.storage, resume)
    if out is not None and not resume and abandoned_study(search, out):
        return
    try:
        check_study(search, resume)
    except UserError:
        raise
    except Exception as exc:  # a storage that opens but cannot be read
        text = str(exc).strip().splitlines()
        raise UserError(f"storage {search.storage} is unreadable ({type(exc).__name__}: "
                        f"{text[0] if text else ''})") from None


def check_study(search: SearchConfig, resume: bool) -> None:
    """Refuse a storage that holds other studies, a new search over an existing study, or a
    ``--resume`` of a study that does not exist. A driver started without :func:`check_storage`
    (the Python API's drivers) asks only this; the storage's files were inspected before."""
    import optuna

    if not storage_exists(search.storage):
        if resume:
            raise UserError(f"cannot resume: storage {search.storage} does not exist")
        return
    try:
        names = optuna.get_all_study_names(open_storage(search.storage))
    except Exception as exc:
        raise UserError(f"storage {search.storage} is unreadable ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if names and search.study not in names and not is_server_storage(search.storage):  # a server holds many
        raise UserError(f"storage {search.storage} holds study {', '.join(map(repr, names))}, "
                        f"not {search.study!r}; pass --study or another --storage")
    if search.study in names and not resume:
        raise UserError(f"study {search.study!r} already exists in {search.storage}; "
                        "use --resume to continue it")
    if resume and search.study not in names:
        raise UserError(f"cannot resume: no study {search.study!r} in {search.storage}")


def abandoned_study(search: SearchConfig, out: str | Path) -> bool:
    """Whether ``search``'s study is an empty one that a start of ``out`` killed before its rename
    left in an outside storage (so a new start may replace it)."""
    import optuna

    out = Path(out)
    if (out / "search.yaml").exists():
        return False
    try:
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
    from repnas.runs._storage import sqlite_url

    target = staging.resolve() / relative
    return sqlite_url(target) if "://" in url else str(target)


def _create_study(search: SearchConfig, out: Path) -> None:
    import optuna

    # creating a study asks nothing, so any sampler creates it; the driver opens it with the search's
    study = open_study(search, create=True, sampler=optuna.samplers.RandomSampler(seed=0))
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
