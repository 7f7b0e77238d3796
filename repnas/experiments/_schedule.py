"""A deadline scheduler for a lent GPU: start a task only if its estimate says it ends in time, and
run several small ones at once as separate processes.

A lent GPU gives one command of at most 10 minutes, so the GPU session's work is a list of tasks in
priority order, each a subprocess (its own CUDA context; one crash or hang costs one task) with an
``estimate`` in seconds (declared, or derived from earlier measurements) and a GPU ``share``
(``1 / k`` when k of its kind run well at once on one GPU; 1 for checks and benchmarks, which want
the GPU to themselves). The loop walks the list in order:

- a task whose estimate would end after the deadline is not started (it is ``left`` for the next
  session); a later, shorter task may still fit: time is filled in priority order, never reordered
  otherwise. A task may offer a smaller version of itself (``shrink``: a search chunk with fewer
  trials) that fits the time left.
- a task that fits waits until the shares in flight leave room for its own (a task of share 1 waits
  for an idle GPU, and nothing starts beside it).
- at ``deadline + grace`` whatever still runs is killed (its result is lost, nothing half-written
  stays: every result file is written atomically), so the command's own deadline always holds.

The clock, the sleep and the process launcher are parameters so that the tests drive the loop with
a fake clock and fake processes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Outcome", "ProcessLauncher", "Task", "run_tasks"]


@dataclass
class Task:
    """One unit of GPU work: a subprocess ``argv`` expected to take ``estimate`` seconds."""

    name: str
    argv: list[str]
    estimate: float
    share: float = 1.0
    #: why the estimate is what it is ("declared", "measured: ...") - copied into the session log
    basis: str = "declared"
    #: a smaller version of this task that fits ``seconds`` (or None): a search with fewer trials
    shrink: Callable[[float], Task | None] | None = field(default=None, repr=False)
    log: Path | None = None
    env: dict[str, str] | None = None
    #: names of earlier tasks this one needs: if one of them did not succeed in this pass, this one
    #: is not started either (the report check needs the search check's run)
    needs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a scheduling pass did, in order; ``records`` holds one dict per started task."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0


class Handle(Protocol):
    def poll(self) -> int | None: ...
    def kill(self) -> None: ...


class Launcher(Protocol):
    def __call__(self, task: Task) -> Handle: ...


class _Process:
    """A started subprocess in its own process group (killing it kills its workers too)."""

    def __init__(self, task: Task) -> None:
        env = {**os.environ, **(task.env or {})}
        # a task's log holds its last run only (a rerun next session starts it afresh)
        self._log = open(task.log, "wb") if task.log else None  # noqa: SIM115 - closed when the process ends
        out = self._log if self._log else subprocess.DEVNULL
        self.proc = subprocess.Popen(task.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self._log:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.poll()


def ProcessLauncher(task: Task) -> Handle:
    """The real launcher: one subprocess per task, output appended to ``task.log``."""
    if task.log:
        task.log.parent.mkdir(parents=True, exist_ok=True)
    return _Process(task)


def run_tasks(
    tasks: Sequence[Task],
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    launcher: Launcher = ProcessLauncher,
    max_running: int = 8,
    grace: float = 30.0,
    poll: float = 0.25,
    log: Callable[[str], None] = print,
) -> Outcome:
    """Run ``tasks`` in priority order against ``deadline`` (a ``clock()`` value); see the module doc."""
    start = clock()
    outcome = Outcome()
    pending = list(tasks)
    running: list[tuple[Task, Handle, float]] = []

    def reap() -> None:
        for item in list(running):
            task, handle, began = item
            code = handle.poll()
            if code is None:
                continue
            running.remove(item)
            seconds = clock() - began
            (outcome.done if code == 0 else outcome.failed).append(task.name)
            outcome.records.append({"task": task.name, "rc": code, "seconds": round(seconds, 2),
                                    "estimate": round(task.estimate, 2), "basis": task.basis,
                                    "share": task.share, "running_at_start": task.info.get("running_at_start")})
            log(f"  {'done' if code == 0 else f'FAILED (exit {code})'}: {task.name} in {seconds:.1f} s "
                f"(estimate {task.estimate:.0f} s, {task.basis})")

    while pending or running:
        reap()
        while pending:
            task = pending[0]
            now = clock()
            waiting = [n for n in task.needs if n not in outcome.done]
            if waiting and any(n in (t.name for t, _, _ in running) for n in waiting):
                break  # what it needs is still running
            if waiting:
                pending.pop(0)
                outcome.left.append(task.name)
                log(f"  not started: {task.name} (needs {', '.join(waiting)}, which did not succeed here)")
                continue
            if now + task.estimate > deadline:
                smaller = task.shrink(deadline - now) if task.shrink else None
                if smaller is None or now + smaller.estimate > deadline:
                    pending.pop(0)
                    outcome.left.append(task.name)
                    log(f"  not started: {task.name} (needs ~{task.estimate:.0f} s, {max(0.0, deadline - now):.0f} s "
                        "left); the next session continues")
                    continue
                task = pending[0] = smaller
            in_flight = sum(t.share for t, _, _ in running)
            if running and (in_flight + task.share > 1.0 + 1e-9 or len(running) >= max_running):
                break  # wait for room; keep the priority order
            pending.pop(0)
            task.info["running_at_start"] = len(running) + 1
            log(f"  start: {task.name} (estimate {task.estimate:.0f} s, {task.basis}; share {task.share:g}; "
                f"{len(running) + 1} running)")
            running.append((task, launcher(task), now))
        if not running:
            continue
        if clock() > deadline + grace:
            for task, handle, _ in running:
                handle.kill()
                outcome.killed.append(task.name)
                log(f"  killed at the deadline: {task.name} (its result is lost; it reruns next time)")
            running.clear()
            break
        sleep(poll)
    outcome.left += [t.name for t in pending]
    outcome.wall_seconds = clock() - start
    return outcome
