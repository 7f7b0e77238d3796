"""One owner per run directory: an exclusive ``flock`` on ``<run>/.owner``, held for a whole command.

Why ``flock`` and not a pid file: the kernel drops the lock the moment its holder dies (SIGKILL, a
crash, a lost session), so a killed search never leaves a lock behind that blocks, or that has to
be waited out or deleted by hand. The file's text only says who holds it (pid, host, command,
since when), for the one line that turns a second writer away; it is never what decides.

Every command that writes a run directory (a search, a resumed search) takes the lock first and
refuses, without waiting, when another process holds it. ``--workers`` processes work under their
parent's lock (they die with it, :mod:`repnas._procs`); the short ``RunDir.lock`` that serialises
their ask/tell steps is a different, blocking lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from repnas.errors import UserError

OWNER_FILE = ".owner"


class RunInUse(UserError):
    """Another live process owns the run directory."""


class OwnerLock:
    """The owner lock of run directory ``root`` (a context manager; also ``acquire``/``release``).

    ``root`` must exist. The lock follows the open file, so renaming the directory that holds it (an
    atomic start renames its staging folder into place) keeps it held.
    """

    def __init__(self, root: str | Path, what: str = "repnas search"):
        self.root = Path(root)
        self.what = what
        self._handle = None

    @property
    def path(self) -> Path:
        return self.root / OWNER_FILE

    def acquire(self) -> OwnerLock:
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise RunInUse(f"run directory {self.root} is in use by {describe_owner(self.path)}; "
                               "wait for it to finish or stop it first") from None
            raise
        self._handle = handle
        return self

    def announce(self) -> None:
        """Write who holds the lock into the lock file: done only once the command goes ahead, so a
        command refused after taking the lock leaves the run byte for byte as it was."""
        assert self._handle is not None, "announce() needs the lock held"
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.what}, since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        self._handle.flush()

    def release(self) -> None:
        if self._handle is not None:
            try:
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            finally:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> OwnerLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def describe_owner(path: Path) -> str:
    """Who holds the lock at ``path``, from the text its holder wrote ("pid N on HOST (...)")."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process (still starting)"


def is_locked(root: str | Path) -> bool:
    """Whether a live process holds ``root``'s owner lock (without taking it for long)."""
    path = Path(root) / OWNER_FILE
    if not path.exists():
        return False
    try:
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


if sys.platform == "win32":  # pragma: no cover
    raise ImportError("repnas run directories need POSIX file locks (fcntl.flock)")
