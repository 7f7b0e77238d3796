"""Process hygiene for ``--workers``: no orphans, no tracebacks on Ctrl-C, no silent deaths.

* A worker dies with its parent however the parent ends (SIGKILL included): on Linux the kernel
  sends it SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent's pid.
  A worker of a killed search must not go on writing a study that a resume then also writes.
* Workers ignore SIGINT: a Ctrl-C in a terminal reaches the whole process group, and only the main
  process should answer it (one line), then stop its workers itself.
* SIGTERM to the main process becomes :class:`Terminated` (a ``KeyboardInterrupt``), so it stops its
  workers and leaves the run resumable exactly as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an exception so ``finally`` blocks run (workers stopped, locks freed)."""


def die_with_parent(parent_pid: int) -> None:
    """Make this process (a worker) end when ``parent_pid`` does; call first thing in the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="repnas-parent").start()


def _watch_parent(parent_pid: int, every: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every)
    os._exit(1)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Start child processes inside this block: they inherit SIGINT ignored (a spawned Python keeps an
    ignored SIGINT ignored), so a Ctrl-C never reaches them, not even while they import."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Within this block SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop(processes, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, each of ``processes`` still alive; reap them."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        with contextlib.suppress(ProcessLookupError, OSError):
            p.terminate()
    deadline = time.time() + grace
    for p in alive:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError, OSError):
                p.kill()
            p.join()


def exit_description(exitcode: int | None) -> str:
    """``exit code 1`` / ``signal 9 (SIGKILL)`` for a ``multiprocessing.Process.exitcode``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may still be running (a zombie is dead; a process of
    another user counts as alive): what decides whether a leftover named after its pid may go."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie is dead
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return True
