"""The embedded search driver: an Optuna multi-objective study, asked and told by worker processes.

Why ask/tell rather than ``study.optimize``: the space's distributions are fixed per space and passed
to ``study.ask(fixed_distributions=...)`` (a static define-by-run space, what NSGA-II wants), a
finished trial's whole row goes onto it as user attributes in one place, and the trial budget
``--trials`` is enforced across processes under one file lock (``optimize(n_trials=...)`` counts
per process). Failed, infeasible and early-stopped trials are told ``FAIL``/``PRUNED``, so
``study.best_trials`` is exactly the front of the completed ones.

Workers: ``--workers N`` processes share one storage (SQLite for one process, a JournalStorage
file for several); each gets a device (a GPU, or a ``--gpus-per-trial`` share of one, or the CPU
with ``cores / 2N`` threads, :func:`cpu_threads`) and its own sampler seed (``seed + worker``), so
workers do not propose the same points.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

from repnas import _faults
from repnas._procs import die_with_parent, exit_description
from repnas.runs import count_replacement, recover_interrupted, retried_trials, study_lock
from repnas.runs._rundir import STATUSES, RunDir, SearchConfig, trial_status, trials_frame
from repnas.runs._start import check_study
from repnas.runs._study import open_study, trial_id_of
from repnas.search._pool import WorkerPool
from repnas.search._progress import SearchProgress
from repnas.search._samplers import (
    continuation_seed,
    make_sampler,
    resumed_sampler,
    save_sampler,
    search_population,
    search_sampler,
    spread_budgets,
)

_COUNTED_STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING")


def counted_trials(study) -> int:
    """Trials that count towards ``--trials``: finished or running, not interrupted, not lost and
    retried (:func:`~repnas.runs._workers.retried_trials`), and not a duplicate (a proposal
    answered from an earlier trial that built the same model)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    return sum(1 for t in trials if t.state.name in _COUNTED_STATES and not t.user_attrs.get("interrupted")
               and t.number not in retried and t.user_attrs.get("duplicate_of") is None)


def repeat_limit(search: SearchConfig) -> int:
    """How many proposals in a row may be models already trained before the search stops: the
    sampler keeps being asked (Optuna's FAQ answer to duplicated parameters), but not forever, as
    a space with fewer distinct models than ``--trials`` would otherwise never end."""
    return max(10, 2 * search_population(search))


def repeats_in_a_row(study) -> int:
    """Finished trials at the end of the study (by number) that were duplicates."""
    count = 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: -t.number):
        if t.state.name == "RUNNING" or t.user_attrs.get("interrupted"):
            continue
        if t.user_attrs.get("duplicate_of") is None:
            break
        count += 1
    return count


def progress_counts(study) -> dict[str, int]:
    """Trials per status (``STATUSES``), ``running`` and ``reused`` (duplicates, not in the
    statuses); interrupted and lost-and-retried trials are not counted."""
    counts = dict.fromkeys((*STATUSES, "running", "reused"), 0)
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    for t in trials:
        if t.state.name == "RUNNING":
            counts["running"] += 1
        elif t.user_attrs.get("duplicate_of") is not None:
            counts["reused"] += 1
        elif (t.state.name in ("COMPLETE", "FAIL", "PRUNED") and not t.user_attrs.get("interrupted")
              and t.number not in retried):
            status = trial_status(t)
            counts[status if status in counts else "failed"] += 1
    return counts


def write_table(study, run: RunDir, knob_names: list[str]) -> None:
    """``trials.parquet`` from the storage (all trials of the study, whichever machine ran them)."""
    trials = study.get_trials(deepcopy=False)
    frame = trials_frame(trials, knob_names)
    for lost, retry in retried_trials(trials).items():  # a killed or lost trial says where it went
        killed = frame["trial"] == lost
        interrupted = killed & (frame["status"] == "interrupted")
        frame.loc[interrupted, "error"] = f"interrupted (retried as trial {retry})"
        lost_rows = killed & ~interrupted & (frame["error"] == "")
        frame.loc[lost_rows, "error"] = f"lost (its worker stopped); point retried as trial {retry}"
        frame.loc[lost_rows, "status"] = "interrupted"
    run.write_trials(frame)


# --------------------------------------------------------------------- devices
def worker_devices(device: str, workers: int, gpus_per_trial: float) -> list[str]:
    """One device per worker: GPUs round-robin, ``1 / gpus_per_trial`` workers per GPU.

    ``auto`` and a bare ``cuda`` both spread the workers over the visible GPUs; a named device
    (``cpu``, ``cuda:1``) is every worker's.
    """
    if device not in ("auto", "cuda"):
        return [device] * workers
    import torch

    if not torch.cuda.is_available():  # auto: the CPU; cuda: the trainer reports it is missing
        return ["cpu" if device == "auto" else device] * workers
    per_gpu = max(1, math.floor(1.0 / gpus_per_trial + 1e-9))
    count = torch.cuda.device_count()
    return [f"cuda:{(k // per_gpu) % count}" for k in range(workers)]


# --------------------------------------------------------------------- the worker loop
def worker_loop(search: SearchConfig, root: str | Path, worker: int, device: str,
                progress: bool = True, resume: bool = False, *, sampler=None, after_trial=None,
                deadline: float | None = None, life: int = 0) -> bool:
    """Ask, train, tell until the study holds ``search.trials`` counted trials (``resume``: go on
    with the sampler this worker pickled, :func:`resumed_sampler`), or until ``deadline``
    (``time.time()``), or until ``after_trial(study, frozen_trial)`` returns True. ``sampler``: a
    given sampler object, used as is (``repnas.search.run_search``). Returns False when it stopped
    because the sampler kept proposing models already trained (:func:`repeat_limit`). ``life``: 0
    for the first process of worker number ``worker``, n for its n-th replacement
    (:mod:`~repnas.search._pool`), which names its fault points ``worker<k>.<n>:...``."""
    import torch

    from repnas.runs._claims import ModelClaims, TrialModels
    from repnas.runs._holder import HOLDER_ATTR, holder_stamp
    from repnas.runs._storage import is_server_storage
    from repnas.runs._workers import (
        TrialHeartbeat,
        claim_worker,
        fail_lost_trials,
        wait_for_running,
        worker_name,
    )
    from repnas.search._early_stop import make_rule
    from repnas.search._epochs import EpochReport
    from repnas.search._runner import run_trial

    run = RunDir(root)
    me = f"worker{worker}" if life == 0 else f"worker{worker}.{life}"  # its fault points' prefix
    if device == "cpu":
        torch.set_num_threads(cpu_threads(search.workers))
    space = search.search_space()
    distributions = search.distributions(space)
    knob_names = list(distributions)
    study = open_study(search, sampler=search_sampler(search, worker, sampler))
    name = f"w{worker}:{device}"
    distributed = is_server_storage(search.storage)
    if distributed:  # many machines: a study-wide worker number for the seed and the name
        number = claim_worker(search, study, run)
        name = worker_name(number, device)
        study.sampler = make_sampler(search.sampler, continuation_seed(search.seed, number, 0),
                                     search_population(search))
    if resume and sampler is None:
        study.sampler = resumed_sampler(search, run, worker, len(study.get_trials(deepcopy=False)))
    claims = ModelClaims(study, lambda: study_lock(search, run))  # every machine's workers claim models
    holder = holder_stamp()
    data = _load_data(search)
    display = SearchProgress(search.trials, counted_trials(study), search.workers)
    while True:
        with study_lock(search, run):
            if distributed:
                fail_lost_trials(study)
            full = counted_trials(study) >= search.trials or (deadline is not None and time.time() >= deadline)
            repeating = not full and repeats_in_a_row(study) >= repeat_limit(search)
            if not full and not repeating:
                trial = study.ask(fixed_distributions=distributions)
                trial.set_user_attr("worker", name)
                trial.set_user_attr(HOLDER_ATTR, holder)  # frees its model claims if this process dies
                heartbeat = TrialHeartbeat(study, trial)
                save_sampler(run, worker, study.sampler)
        if repeating:
            return False
        if full:  # on a server, stay while other machines' trials run: one may be lost and queued again
            if distributed and wait_for_running(search, study, run) and (deadline is None or time.time() < deadline):
                continue
            return True
        _faults.point("trial:asked")
        _faults.point(f"{me}:asked")  # one worker only (``trial:asked`` is every process's)
        point = {k: trial.params[k] for k in knob_names}
        report = EpochReport(study, trial.number, make_rule(search, study, trial.number))
        display.start_trial()
        show = _epoch_display(display, study, trial.number, search.epochs) if progress and worker == 0 else None
        show = _with_fault_point(f"{me}:epoch", show)
        models = TrialModels(claims, trial.number, alive=lambda number: _is_running(study, number))
        with heartbeat:
            row = run_trial(search, point, run.trial_dir(trial.number), report, device=device, data=data,
                            models=models, on_epoch=show)
        if row.get("duplicate_of") is not None:
            report.copy_from(int(row["duplicate_of"]))
        row["worker"] = name
        _faults.point("trial:trained")
        with run.lock():
            _tell(study, trial, row, search)
            write_table(study, run, knob_names)
            line = _progress_line(trial.number, row, study, search, display)
            with (run.logs / f"worker{worker}.log").open("a") as log:
                print(line, file=log)
            if progress:
                display.clear()
                print(line, flush=True)
        if after_trial is not None and after_trial(study, _frozen(study, trial.number)):
            return True


def _epoch_display(display, study, number: int, epochs: int):
    """The per-epoch status line of trial ``number`` (None off a terminal: nothing to redraw)."""
    if not display.stream.isatty():
        return None

    def show(epoch: int, metrics: dict[str, Any]) -> None:
        counts = progress_counts(study)
        display.epoch(number, epoch, epochs, metrics, sum(v for k, v in counts.items() if k != "running"))

    return show


def _with_fault_point(name: str, on_epoch):
    """``on_epoch`` preceded by fault point ``name`` after every epoch (a worker killed mid-training)."""
    def hook(epoch: int, metrics: dict[str, Any]) -> None:
        _faults.point(name)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    return hook


def _frozen(study, number: int):
    """The finished trial ``number`` as the ``FrozenTrial`` Optuna's callbacks receive."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _is_running(study, number: int) -> bool:
    """Whether trial ``number`` is still being trained (the holder of a model claim): RUNNING, and
    its process alive where this host can tell (:mod:`repnas.runs._holder`)."""
    from repnas.runs._holder import HOLDER_ATTR, holder_alive

    trial = study._storage.get_trial(trial_id_of(study, number))
    return trial.state.name == "RUNNING" and holder_alive(trial.user_attrs.get(HOLDER_ATTR))


def cpu_threads(workers: int) -> int:
    """Torch threads of a CPU worker: half the cores per worker (at least 1).

    Search models are small, so a step is dominated by per-op overhead that more threads do not
    shrink; on the 2-core CI box one thread ran a ``quick`` trial in 1.4 s, two threads in 4-18 s
    (shared with other jobs). The trial's result depends on the thread count on CPU; it is recorded
    in the trial's log.
    """
    return max(1, (os.cpu_count() or 1) // (2 * max(1, workers)))


def _load_data(search: SearchConfig):
    """The worker's dataset, loaded once for all its trials (each trial would reload it otherwise);
    none for a search that replays a table (nothing is trained)."""
    from repnas.search._validate import loaded_data
    from repnas.train._data import load_dataset

    if search.replay:
        return None
    data = loaded_data(search)  # the validation before the search loaded it already
    if data is not None:
        return data
    return load_dataset(search.dataset, data_dir=search.data_dir, seed=search.seed, image_size=search.image_size)


def _tell(study, trial, row: dict[str, Any], search: SearchConfig) -> None:
    """The row onto the trial's user attributes, then the state, values and constraints of
    :func:`~repnas.search._tell.optuna_answer` to the study."""
    from repnas.search._tell import optuna_answer, tell

    if row["status"] == "complete" and optuna_answer(row, search.objective_names, search.directions)[0] == "FAIL":
        row = {**row, "status": "failed", "error": "an objective is not finite"}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        trial.set_user_attr(key, value)
    tell(study, trial, row, search.objective_names, search.directions)


def _progress_line(number: int, row: dict[str, Any], study, search: SearchConfig, display=None) -> str:
    counts = progress_counts(study)
    done = sum(v for k, v in counts.items() if k not in ("running", "reused"))
    failed = counts["failed"] + counts["infeasible"]
    head = f"trial {number:>4} {row['status']:<10}"
    if row.get("duplicate_of") is not None:
        head = f"trial {number} = trial {row['duplicate_of']} (same model, reused)"
        body = ""
    elif row["status"] == "complete":
        body = (f"val {row['val_accuracy']:.4f}  params {int(row['params']):>9,}  "
                f"flops {_si(row['flops'])}  {row['train_seconds']:.1f}s")
    else:
        body = str(row.get("error", ""))[:70]
    front = len(study.best_trials) if counts["complete"] else 0
    eta = f" {display.eta_text(done)}" if display is not None else ""
    return (f"{head} {body:<60} | done {done}/{search.trials} running {counts['running']} "
            f"failed {failed} reused {counts['reused']} front {front}{eta}")


def _si(value: Any) -> str:
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


# --------------------------------------------------------------------- the whole search
def run_optuna_search(search: SearchConfig, root: str | Path, resume: bool = False, progress: bool = True, *,
                      sampler=None, after_trial=None, timeout: float | None = None, join: bool = False):
    """Run (or resume) the search of ``search`` in run directory ``root``; returns the study.

    ``sampler``, ``after_trial`` and ``timeout``: see ``repnas.search.run_search``. ``join``: add this
    machine's workers to a search another machine started on a database server (the study exists;
    :func:`repnas.runs._workers.join_search_config` checked it).
    """
    from repnas.runs._storage import is_server_storage
    from repnas.search._samplers import worker_sampler

    deadline = time.time() + timeout if timeout is not None else None
    run = RunDir(root)
    if not join:
        check_study(search, resume)
    run.create()
    run.remove_dead_temporaries()  # what a killed search left (a sampler pickle's temporary, at start-up)
    search.to_yaml(run.search_yaml)
    if join:
        study = open_study(search, sampler=search_sampler(search, 0, sampler))
    elif resume:
        study = open_study(search, sampler=search_sampler(search, 0, sampler))
        # on a shared server other machines' trials are running: lost ones are found by heartbeat
        interrupted = [] if is_server_storage(search.storage) else recover_interrupted(study)
        if interrupted and progress:
            print(f"resume: trials {interrupted} were interrupted; their points are queued again", flush=True)
        if not study.get_trials(deepcopy=False):  # a new run that supervised_search created empty
            spread_budgets(study, search)
    else:
        study = open_study(search, create=True, sampler=search_sampler(search, 0, sampler))
        spread_budgets(study, search)
    devices = worker_devices(search.device, search.workers, search.gpus_per_trial)
    if progress:
        print(f"search {search.study}: space {search.space_name}, dataset {search.dataset}, budget "
              f"{search.budget_spec.describe()}, {search.trials} trials, {search.workers} worker(s) on "
              f"{', '.join(devices)}",
              flush=True)
    context = multiprocessing.get_context("spawn")

    def start(k: int, life: int):
        """Worker ``k``'s process; a replacement (``life`` > 0) resumes the dead one's sampler pickle."""
        p = context.Process(target=_worker_main, args=(search.to_dict(), str(run.root), k, devices[k], progress,
                                                       resume or life > 0, os.getpid(), worker_sampler(sampler, k),
                                                       deadline, life))
        p.start()
        return p

    pool = WorkerPool(start, lambda k, p: _recover_dead(search, run, k, p), search.max_failures,
                      announce=(lambda line: print(line, flush=True)) if progress else None)
    pool.start(range(1, search.workers))
    try:
        finished = worker_loop(search, run.root, 0, devices[0], progress, resume, sampler=sampler,
                               after_trial=after_trial, deadline=deadline)
        pool.join()
    except BaseException:
        pool.stop()  # no worker outlives a failed or interrupted main process
        raise
    study = open_study(search, sampler=search_sampler(search, 0, sampler))
    write_table(study, run, search.knob_names())
    if pool.dead:
        from repnas._infra import InfrastructureError

        k, p = pool.dead[0]
        past = f" (not replaced: --max-failures {search.max_failures} reached)" if (
            p.exitcode < 0 and len(pool.replaced) >= search.max_failures) else ""
        raise InfrastructureError(
            f"worker {k} (pid {p.pid}) died ({exit_description(p.exitcode)}){past}"
            + (f" and {len(pool.dead) - 1} more" if len(pool.dead) > 1 else "")
            + f"; `repnas search --resume --out {run.root}` recovers its trial")
    models = counted_trials(study)
    if not finished and models < search.trials:
        print(f"note: the space looks exhausted: the last {repeat_limit(search)} proposals were models already "
              f"trained; stopped at {models} distinct trial(s) of the {search.trials} asked", flush=True)
    return study


def _recover_dead(search: SearchConfig, run: RunDir, worker: int, process) -> str:
    """Worker ``worker``'s process died by a signal while the others run: its trial is marked
    interrupted and its point queued again, as ``--resume`` would (under the study lock, in a
    study of this thread's own); the line that says so."""
    how = exit_description(process.exitcode)
    study = open_study(search)
    with study_lock(search, run):
        numbers = recover_interrupted(study, dead_only=True, why=f"its worker w{worker} died, {how}")
        count_replacement(study)
    retried = retried_trials(study.get_trials(deepcopy=False))
    what = ", ".join(f"trial {n} queued again as trial {retried[n]}" if n in retried else f"trial {n} failed"
                     for n in numbers) or "no trial was running"
    return f"worker {worker} (pid {process.pid}) died ({how}); {what}; a new worker {worker} takes its place"


def _worker_main(search_dict: dict, root: str, worker: int, device: str, progress: bool, resume: bool,
                 parent: int | None = None, sampler=None, deadline: float | None = None, life: int = 0) -> None:
    if parent is not None:
        die_with_parent(parent)
    # A spawned process has "spawn" as its default start method, under which every multiprocessing
    # lock is a named semaphore registered with the resource tracker; the ones libraries make here
    # for use inside this process (tqdm's write lock, tensorboardX's event queue: 4 per trial) were
    # what the tracker reported as "leaked semaphore objects" after a worker was SIGKILLed. This
    # process starts no process of its own, so the fork context is right for them: a fork
    # context's semaphore is unlinked at once and never registered.
    multiprocessing.set_start_method("fork", force=True)
    try:
        worker_loop(SearchConfig.from_dict(search_dict), root, worker, device, progress, resume, sampler=sampler,
                    deadline=deadline, life=life)
    except Exception as exc:  # one line (not a traceback) per worker; the main process says what to do
        from repnas._infra import EXIT_INFRASTRUCTURE, describe, is_infrastructure

        print(f"repnas: error: worker {worker}: {describe(exc)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INFRASTRUCTURE if is_infrastructure(exc) else 1)
