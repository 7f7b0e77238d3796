"""``python -m repnas.experiments gpu --plan``: what the next lent GPUs would run, without a GPU.

A lent GPU is rare, so a session should know beforehand what its command will do, and whether the
queue fits the device time a task gets. The forecast replays the session's own planning
(:func:`~repnas.experiments._gpu.phase_tasks` and the deadline scheduler) on a simulated clock on
which every task takes exactly its estimate; a session's simulated results (:class:`Assumed`: the
files its tasks would write, the trials its search chunks would add, the GPU seconds they would
spend) feed the next session's planning, until the queue is done, is held by its caps, or
``max_sessions`` is reached. Nothing is trained, measured or written under ``results/``.

Every figure printed is an estimate with its basis ("measured 40 s on nvidia-h200", "from the VGG11
benchmark", "declared"): a plan, never a result. The estimates are those a real session would use
on that kind of GPU, so a forecast is only as good as the measurements in ``results/gpu/<kind>/``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.experiments._gpu import PHASES, Assumed, GpuSession, device_slug, phase_tasks
from repnas.experiments._schedule import Task, run_tasks

__all__ = ["Forecast", "forecast", "forecast_session", "format_forecast"]


@dataclass
class PlannedTask:
    """One task a simulated session starts: when (seconds into the command), for how long, and why."""

    name: str
    phase: str
    start: float
    estimate: float
    basis: str
    share: float
    item: str | None = None


@dataclass
class ForecastSession:
    tasks: list[PlannedTask] = field(default_factory=list)
    #: tasks planned but not started (they did not fit the time left)
    left: list[str] = field(default_factory=list)

    @property
    def busy_until(self) -> float:
        return max((t.start + t.estimate for t in self.tasks), default=0.0)


@dataclass
class Forecast:
    hardware: str
    slug: str
    time_limit: float
    reserve: float
    #: what remains before the next session, per table: runs/trials, GPU seconds at the estimates, cap left
    remaining: list[dict[str, Any]]
    sessions: list[ForecastSession]
    #: the queue's notes after the last simulated session (what waits, what a cap holds back)
    final_notes: list[dict[str, Any]]
    finished: bool


class _SimulatedClock:
    """The scheduler's clock and sleep: time moves only when the scheduler waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _Done:
    """A launched task that ends when the simulated clock has run its estimate."""

    def __init__(self, clock: _SimulatedClock, seconds: float) -> None:
        self._clock, self._end = clock, clock.now + seconds

    def poll(self) -> int | None:
        return 0 if self._clock.now >= self._end - 1e-9 else None

    def kill(self) -> None:  # pragma: no cover - a task never outlives its own estimate here
        pass


def forecast_session(results: Path, queue_path: Path, gpu: str | None = None, work: Path | None = None) -> GpuSession:
    """A :class:`GpuSession` on the kind of GPU ``gpu`` (a folder name under ``results/gpu/`` or part of
    a GPU's name; default: the kind of the latest session) with that kind's measurements, no device."""
    from repnas.experiments._gpu_queue import load_queue

    kinds = {}
    for path in sorted(Path(results).glob("gpu/*/sessions/*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("hardware") and not record.get("smoke"):
            kinds[path.parent.parent.name] = (path.name, str(record["hardware"]))
    if gpu:
        wanted = [slug for slug, (_, name) in kinds.items() if device_slug(gpu) in (slug, device_slug(name))
                  or device_slug(gpu) in slug]
        if not wanted:
            known = ", ".join(sorted(kinds)) or "none yet"
            if device_slug(gpu) in ("unknown", ""):
                raise UserError(f"--gpu {gpu!r}: not a GPU name")
            # a kind no session has used: plan with declared figures only, under that name
            hardware = gpu
            print(f"no session on {gpu!r} in {results}/gpu (known: {known}); planning with declared figures")
        else:
            hardware = kinds[wanted[0]][1]
    elif kinds:
        hardware = max(kinds.values())[1]  # session files are named by their UTC start
    else:
        hardware = "unknown GPU"
    queue = load_queue(queue_path)
    return GpuSession(results=Path(results), device="cuda:0", hardware=hardware, queue=queue, smoke=False,
                      data_dir=None, work=work or Path(tempfile.mkdtemp(prefix="repnas-plan-")))


def _remaining(s: GpuSession) -> list[dict[str, Any]]:
    """Per queue item and table: what is left and its GPU seconds at the estimates (shares applied)."""
    from repnas.experiments._config import load_experiment

    plan = phase_tasks(s, "queue", log=lambda _: None)
    tasks, owner, notes = plan
    seconds: dict[str, float] = {}
    for task in tasks:
        seconds[owner[task.name]] = seconds.get(owner[task.name], 0.0) + task.estimate * task.share
    ledger = s.ledger()
    rows = []
    for item, note in zip(s.queue.items, notes, strict=True):
        table = load_experiment(item.experiment).name if item.experiment else item.search["out"]
        left = (note.get("total", 0) - note.get("done", 0)) if note["status"] != "waiting" else None
        cap = None if item.gpu_minutes is None else 60.0 * item.gpu_minutes - ledger.get(item.name, 0.0)
        rows.append({"item": item.name, "table": table, "kind": "trials" if item.search else "runs", "left": left,
                     "planned_seconds": seconds.get(item.name, 0.0), "cap_left_seconds": cap,
                     "status": note["status"], "reason": note.get("reason", "")})
    return rows


def forecast(s: GpuSession, time_limit: float = 480.0, reserve: float = 25.0, max_sessions: int = 12,
             log: Callable[[str], None] = lambda _: None) -> Forecast:
    """Simulate up to ``max_sessions`` consecutive sessions of ``time_limit`` seconds on ``s``'s GPU kind."""
    if time_limit <= reserve:
        raise UserError(f"--time-limit must be more than the {reserve:g} s a session keeps for its tables")
    s.assumed = Assumed()
    remaining = _remaining(s)
    sessions: list[ForecastSession] = []
    for _ in range(max_sessions):
        clock = _SimulatedClock()
        session = ForecastSession()
        deadline = time_limit - reserve
        for phase in PHASES:
            tasks, owner, _ = phase_tasks(s, phase, log)
            if not tasks:
                continue
            started: list[tuple[Task, float]] = []

            def launch(task: Task, _clock=clock, _started=started) -> _Done:
                _started.append((task, _clock.now))
                return _Done(_clock, task.estimate)

            outcome = run_tasks(tasks, deadline, clock=clock.clock, sleep=clock.sleep, launcher=launch,
                                max_running=s.queue.max_pack if phase == "queue" else 1, poll=1.0,
                                log=lambda _: None)
            session.left += outcome.left
            for task, start in started:  # each ends on its estimate, before the deadline: none is killed
                session.tasks.append(PlannedTask(task.name, phase, start, task.estimate, task.basis, task.share,
                                                 owner.get(task.name)))
                _assume(s, task, owner)
        # nothing fits any more (done, waiting, capped, or a task longer than a session): the self-check,
        # which every session runs first, does not make a session worth a device command on its own
        if not any(t.phase != "selfcheck" for t in session.tasks):
            break
        sessions.append(session)
    _, _, notes = phase_tasks(s, "queue", lambda _: None)
    finished = all(n["status"] == "done" for n in notes)
    s.assumed = None
    return Forecast(hardware=s.hardware, slug=s.slug, time_limit=time_limit, reserve=reserve, remaining=remaining,
                    sessions=sessions, final_notes=notes, finished=finished)


def _assume(s: GpuSession, task: Task, owner: dict[str, str]) -> None:
    """Take ``task`` as done: its files exist, its trials are in, its GPU seconds are on the ledger."""
    assert s.assumed is not None
    s.assumed.paths.update(Path(p) for p in task.info.get("produces", []))
    if "trials" in task.info:
        out, n = task.info["trials"]
        s.assumed.search_trials[out] = s.assumed.search_trials.get(out, 0) + n
    if task.name in owner:
        item = owner[task.name]
        s.assumed.ledger[item] = s.assumed.ledger.get(item, 0.0) + task.estimate * task.share


def _minutes(seconds: float | None) -> str:
    return "no cap" if seconds is None else f"{max(0.0, seconds) / 60:.1f}"


def format_forecast(f: Forecast, detail: int = 2) -> str:
    """The forecast as text: what remains per table, then the first ``detail`` sessions task by task."""
    from repnas.experiments._tables import markdown_table

    lines = [f"Forecast for {f.hardware} (results/gpu/{f.slug}/): device commands of --time-limit "
             f"{f.time_limit:g} s ({f.time_limit - f.reserve:g} s of tasks each). Every figure is a planning "
             "estimate with its basis, not a measurement.", "", "What remains, per table (GPU minutes at the "
             "estimates, packed runs counted by their GPU share; the queue's gpu_minutes caps):", ""]
    rows = [[r["item"], r["table"], "-" if r["left"] is None else f"{r['left']} {r['kind']}",
             f"{r['planned_seconds'] / 60:.1f}", _minutes(r["cap_left_seconds"]),
             r["status"] + (f" ({r['reason']})" if r["reason"] else "")] for r in f.remaining]
    total = sum(r["planned_seconds"] for r in f.remaining)
    rows.append(["all", "", "", f"{total / 60:.1f}", "", ""])
    lines += [markdown_table(["item", "table", "left", "GPU min (est.)", "cap left (min)", "state"], rows), ""]
    for k, session in enumerate(f.sessions[:detail], start=1):
        lines.append(f"Session {k}: {len(session.tasks)} task(s), busy until {session.busy_until:.0f} s of "
                     f"{f.time_limit - f.reserve:g} s" + (f"; {len(session.left)} planned task(s) left for later"
                                                           if session.left else ""))
        rows = [[f"{t.start:.0f}", f"{t.start + t.estimate:.0f}", t.name, f"{t.estimate:.0f}",
                 f"{t.share:g}", t.basis] for t in session.tasks]
        lines += [markdown_table(["start s", "end s", "task", "estimate s", "GPU share", "basis"], rows), ""]
    if len(f.sessions) > detail:
        rest = f.sessions[detail:]
        lines.append(f"Sessions {detail + 1}-{len(f.sessions)}: " + "; ".join(
            f"{len(s.tasks)} task(s)" for s in rest) + ".")
    waiting = [n for n in f.final_notes if n["status"] != "done"]
    if f.finished:
        lines.append(f"The whole queue fits {len(f.sessions)} device command(s) at these estimates.")
    else:
        lines.append(f"After {len(f.sessions)} simulated session(s) the queue is not done: " + "; ".join(
            f"{n['item']}: {n['status']}" + (f" ({n['reason']})" if n.get("reason") else "") for n in waiting) + ".")
    return "\n".join(lines) + "\n"
