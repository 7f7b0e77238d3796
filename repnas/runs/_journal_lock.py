"""The journal storage's lock: a kernel lock (``fcntl.flock``), released when its holder dies.

Optuna's default journal locks (``JournalFileSymlinkLock``, ``JournalFileOpenLock``) are files that
exist while the lock is held. A process killed inside a journal write (``SIGKILL`` of a search's
process group, the OOM killer) leaves that file behind, and the next writer waits for it to go
stale, then deletes it ("Forcibly releasing the lock file"): measured here, a resume right after a
group kill reached its first trial after 46 s. Forcing a lock open is only safe when its holder is
dead, which a file cannot tell. The kernel releases an ``flock`` when the last descriptor of its
holder closes, dead or alive, so nothing is ever forced. repnas already locks its run directory
this way (:mod:`repnas.runs._lock`).

Each acquire opens its own descriptor: ``flock`` locks belong to an open file description, so
threads of one process (a trial's heartbeat beside the worker loop) exclude each other as processes
do. The lock file is ``<journal>.flock`` beside the journal (not ``<journal>.lock``, the name of
Optuna's own lock; a ``.flock`` file, like every lock, stays out of results and git).
"""

from __future__ import annotations

import fcntl
import os
import threading

from optuna.storages.journal._file import BaseJournalFileLock  # public type, not exported by Optuna 5.1

__all__ = ["FlockJournalLock", "journal_backend"]


class FlockJournalLock(BaseJournalFileLock):
    """An exclusive ``flock`` on ``<journal>.flock``; blocking, never stale."""

    def __init__(self, journal_path: str) -> None:
        self.journal_path = str(journal_path)
        self._local = threading.local()

    @property
    def path(self) -> str:
        return f"{self.journal_path}.flock"

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._local.fd = fd
        return True

    def release(self) -> None:
        fd = getattr(self._local, "fd", None)
        if fd is None:
            return
        self._local.fd = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __reduce__(self):  # pickled with its storage (Ray's searcher): a fresh lock, nothing held
        return (type(self), (self.journal_path,))


def journal_backend(path: str):
    """Optuna's ``JournalFileBackend`` on ``path`` with the kernel lock."""
    from optuna.storages.journal import JournalFileBackend

    return JournalFileBackend(str(path), lock_obj=FlockJournalLock(str(path)))
