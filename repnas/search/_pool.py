"""The worker processes of a ``--workers N`` search, and the thread that replaces a dead one.

Why: one ``--workers`` process killed by the OOM killer (any signal) used to stop the whole search
at its end with exit 3 and a request for ``--resume``: nothing was lost, but an overnight search
stood still for the rest of the night. Ray Tune restarts a failed trial (``FailureConfig``); here
the main process does the same for a process: a watcher thread waits on the workers' sentinels
(``multiprocessing.connection.wait``), and when one dies by a signal it has the dead worker's trial
recovered exactly as ``--resume`` would (``recover``: marked interrupted, its point queued again)
and starts a new process under the same worker number in its place, at most ``max_failures``
times in all. A worker that *exits* with an error (a full disk, a lost database: exit 3, or any
other exception: exit 1) is not replaced: the machine failed, and a new process would fail the
same way; it ends the search as before. So does a death past ``max_failures``.

The replacement keeps the worker number, so it resumes the dead worker's pickled sampler
(``samplers/worker<k>.pkl``) as ``--resume`` would and a later ``--resume --workers N`` finds every
worker's pickle; its fault points are named ``worker<k>.<life>:...`` (:mod:`repnas._faults`), so a
test that kills worker k once does not kill its replacement too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait
from typing import Any

from repnas._procs import sigint_ignored, stop

#: ``start(worker, life)`` -> a started ``multiprocessing.Process`` (life 0: the first process of
#: that worker number, life n: its n-th replacement)
Start = Callable[[int, int], Any]
#: ``recover(worker, dead_process)`` -> a line saying what was recovered; raises if it could not be
Recover = Callable[[int, Any], str]


class WorkerPool:
    """Worker processes by number; :meth:`join` returns once every one (replacements included) ended."""

    def __init__(self, start: Start, recover: Recover, max_failures: int,
                 announce: Callable[[str], None] | None = None):
        self._start = start
        self._recover = recover
        self.max_failures = max_failures
        self._announce = announce
        self.replaced: list[str] = []  # one line per replacement
        self.dead: list[tuple[int, Any]] = []  # (worker, process) ended in error and not replaced
        self._live: dict[int, tuple[Any, int]] = {}  # worker -> (process, life)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self, workers: Iterable[int]) -> None:
        """Start worker ``k`` for each ``k`` (SIGINT ignored: Ctrl-C is the main process's), then the watcher."""
        with sigint_ignored():
            for k in workers:
                self._live[k] = (self._start(k, 0), 0)
        if self._live:
            self._thread = threading.Thread(target=self._watch, name="repnas-workers", daemon=True)
            self._thread.start()

    def join(self) -> None:
        """Wait until every worker ended (a dead one's replacement included)."""
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and start no replacement."""
        with self._lock:
            self._stopping = True
            processes = [p for p, _ in self._live.values()]
        stop(processes)

    # ----------------------------------------------------------------- the watcher thread
    def _watch(self) -> None:
        # A replacement inherits this thread's signal mask: with SIGINT blocked it cannot be
        # interrupted while it imports, before it ignores SIGINT itself (repnas._procs.die_with_parent).
        # The main thread still receives the signal.
        # A replacement dies with THIS thread, not the process (PR_SET_PDEATHSIG follows the thread
        # that started a child, repnas._procs.die_with_parent): the loop returns only once none lives.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            with self._lock:
                live = dict(self._live)
            if not live:
                return
            ready = set(wait([p.sentinel for p, _ in live.values()], timeout=1.0))
            for k, (process, life) in live.items():
                if process.sentinel in ready:
                    process.join()
                    self._ended(k, process, life)

    def _ended(self, k: int, process, life: int) -> None:
        with self._lock:
            del self._live[k]
            if self._stopping or process.exitcode == 0:
                return
            by_signal = process.exitcode is not None and process.exitcode < 0
            if not by_signal or len(self.replaced) >= self.max_failures:
                self.dead.append((k, process))
                return
        try:
            line = self._recover(k, process)
        except Exception:  # its trial stays RUNNING for a resume, as before replacements existed
            with self._lock:
                self.dead.append((k, process))
            return
        with self._lock:
            if self._stopping:
                return
            try:
                self._live[k] = (self._start(k, life + 1), life + 1)
            except Exception:  # no process could be started: the search ends as without replacements
                self.dead.append((k, process))
                return
            self.replaced.append(line)
        if self._announce is not None:
            self._announce(line)
