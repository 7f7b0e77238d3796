"""Optuna workers on many machines sharing one database server (PostgreSQL, MySQL).

``repnas search ... --storage postgresql://USER@HOST/DB --study NAME`` starts a search on one machine;
``repnas search --join --storage ... --study NAME`` on any other machine adds workers to it. The
database is the one source of truth: the search config travels as a study user attribute, every
trial's row as its user attributes, and each machine keeps only the folders of the trials it ran
(``trials/<n>/``) plus ``trials.parquet``, a view of the whole study that any machine rebuilds.

What a file lock does on one machine, the server does for all of them:

- the global ``--trials`` cap: a worker counts the study's trials and asks for a new one under a
  database lock (PostgreSQL ``pg_advisory_lock``, MySQL ``GET_LOCK``), so the count that
  ``MaxTrialsCallback`` makes after the fact is exact here, however many machines ask at once;
- worker identities: each worker process takes the next number of a counter on the study (under
  the same lock), so sampler seeds (``seed + number``) and ``worker`` names never collide;
- lost workers: a running trial sends heartbeats (Optuna's RDB heartbeat); a trial whose machine
  died goes stale and the next worker that asks marks it failed and queues its point again
  (``retry_of``), as ``--resume`` does for a killed single-machine search. A retried trial does not
  count towards ``--trials``.

The lock is taken per ask (milliseconds), and a dead holder's connection closes, which frees it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

from repnas.errors import UserError
from repnas.runs._server import StudyLock, heartbeat_interval
from repnas.runs._storage import is_server_storage, storage_file
from repnas.runs._study import trial_id_of

_LOCKS: dict[tuple[str, str], StudyLock] = {}


@contextlib.contextmanager
def study_lock(search, run):
    """The lock under which a worker counts and asks: the run directory's file lock (the workers of
    this machine, and this machine's sampler pickles), and for a server storage the server's lock
    (every machine)."""
    with run.lock():
        if not is_server_storage(search.storage):
            yield
            return
        key = (search.storage, search.study)
        if key not in _LOCKS:
            _LOCKS[key] = StudyLock(search.storage, search.study)
        with _LOCKS[key].hold():
            yield


@contextlib.contextmanager
def storage_lock(search):
    """The study-wide lock of a process that has no run directory (a Ray trial on any node): the
    server's lock for a server storage, else a file lock beside the storage's file (SQLite or
    journal), which the processes of one node (or of a shared filesystem) see."""
    if is_server_storage(search.storage):
        key = (search.storage, search.study)
        if key not in _LOCKS:
            _LOCKS[key] = StudyLock(search.storage, search.study)
        with _LOCKS[key].hold():
            yield
        return
    import fcntl

    # not ``<file>.lock``: that is the name of Optuna's own journal lock (JournalFileOpenLock), which
    # a writer waits on and, after 30 s, breaks by deleting the file; holding it here stalled every
    # study write made under this lock by 30 s and broke both locks
    with open(f"{storage_file(search.storage)}.claims-lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)



def storage_reachable(search) -> bool:
    """Whether this process can open the study and lock it (:func:`storage_lock`): always for a
    server storage, for a file storage only where its file is visible (the driver's node, or a
    shared filesystem)."""
    if is_server_storage(search.storage):
        return True
    path = storage_file(search.storage)
    return path is not None and os.path.exists(path)


def claim_worker(search, study, run) -> int:
    """A worker number no other worker of the study has, on any machine (a counter on the study)."""
    with study_lock(search, run):
        number = int(study.user_attrs.get("repnas.workers", 0))
        study.set_user_attr("repnas.workers", number + 1)
    return number


def worker_name(number: int, device: str) -> str:
    """``<host>/w<number>:<device>``: the ``worker`` column says which machine holds a trial's folder."""
    return f"{socket.gethostname()}/w{number}:{device}"


# --------------------------------------------------------------------- lost workers
def fail_lost_trials(study) -> None:
    """Mark trials whose heartbeats stopped as failed; :func:`requeue_lost` queues their points."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)



def retried_trials(trials) -> dict[int, int]:
    """``{lost or interrupted trial: the trial that retries its point}``."""
    return {int(t.user_attrs["retry_of"]): t.number for t in trials if "retry_of" in t.user_attrs}


def recover_interrupted(study, dead_only: bool = False,
                        why: str = "the search process was killed") -> list[int]:
    """Trials left RUNNING by a killed process: mark them FAIL (``interrupted``) and enqueue their
    points again, so nothing is lost and they do not count towards ``--trials``.

    Only safe when no other process works on the study, which ``--resume`` asserts; or, with
    ``dead_only``, while the others run (a ``--workers`` process died and is replaced): then only
    the trials whose holder on this host is gone (:mod:`~repnas.runs._holder`), or that have no
    holder yet (their asker died between ask and stamp), and the caller holds the study lock, under
    which every ask and stamp happens. ``why`` goes into each trial's ``error``.
    """
    from optuna.trial import TrialState

    from repnas.runs._claims import ModelClaims
    from repnas.runs._holder import HOLDER_ATTR, holder_alive

    storage = study._storage
    numbers = []
    claims = ModelClaims(study, contextlib.nullcontext)  # no lock: --resume owns the study, or the caller holds it
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    for t in [t for t in trials if t.state == TrialState.RUNNING]:
        if dead_only and HOLDER_ATTR in t.user_attrs and holder_alive(t.user_attrs[HOLDER_ATTR]):
            continue
        # Its claims go, trained or not: the re-enqueued point trains the model again (deterministic,
        # so the same result) and counts as the distinct model the interrupted trial no longer is.
        # Left in place, a finished claim would make the retry a reused duplicate, and the search
        # would propose one point more than the run that was never killed.
        claims.release_all(t.number, finished=True)
        # The point is queued first (one storage write, a new row) and the trial marked after it: a
        # write that fails (a disk still full) leaves the trial RUNNING for the next resume, which
        # finds its retry already queued; marked first, it was 'interrupted; re-enqueued' with no
        # retry queued, and the point never ran.
        retry = queued.get(t.number)
        if t.params and retry is None:
            from repnas.runs._retry import enqueue_retry

            enqueue_retry(study, t)  # in t's NSGA-II generation
            retry = study.get_trials(deepcopy=False)[-1].number
        trial_id = trial_id_of(study, t.number)
        error = f"interrupted ({why})" + (f"; retried as trial {retry}" if retry is not None else "")
        for key, value in {"interrupted": True, "status": "interrupted", "error": error}.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        numbers.append(t.number)
    return numbers


#: study user attribute: how many dead ``--workers`` processes were replaced, over the run's life
REPLACED_ATTR = "repnas.workers_replaced"


def count_replacement(study) -> int:
    """Add one to the study's count of replaced workers (the caller holds the study lock); the new count."""
    count = int(study.user_attrs.get(REPLACED_ATTR, 0)) + 1
    study.set_user_attr(REPLACED_ATTR, count)
    return count


def workers_replaced(study) -> int:
    """How many dead ``--workers`` processes the run's searches replaced (0 for a study without any)."""
    try:
        return int(study.user_attrs.get(REPLACED_ATTR, 0))
    except (TypeError, ValueError):
        return 0


def wait_for_running(search, study, run) -> bool:
    """Once the cap is reached, wait while trials of other workers run, failing lost ones: True as
    soon as a lost trial's point is queued again (the caller asks for it), False when none runs.
    So no trial stays orphaned ``RUNNING`` because every live worker had already left, and every
    machine's ``trials.parquet`` ends complete."""
    while True:
        with study_lock(search, run):
            fail_lost_trials(study)
            states = {t.state.name for t in study.get_trials(deepcopy=False)}
        if "WAITING" in states:
            return True
        if "RUNNING" not in states:
            return False
        time.sleep(min(heartbeat_interval(), 5))


class TrialHeartbeat:
    """Trial ``trial``'s heartbeats: the first one at once (the worker makes this right after its
    ask, under the study lock, so no trial is ever RUNNING without one: Optuna only finds trials
    with a stale heartbeat, never those with none), then one per interval while it trains
    (``with``). A no-op for storages without heartbeats."""

    def __init__(self, study, trial):
        self.storage = study._storage
        self.trial_id = trial._trial_id
        getter = getattr(self.storage, "get_heartbeat_interval", None)
        self.interval = getter() if getter is not None else None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a server hiccup must not kill the trial
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> TrialHeartbeat:
        if self.interval:
            self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.trial_id}", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


# --------------------------------------------------------------------- joining a search
def join_search_config(storage: str, study_name: str, overrides: dict[str, Any], timeout: float = 0.0,
                       poll: float = 1.0):
    """The SearchConfig of a running search, read from its study (where the starting machine put
    it), with this machine's ``workers``/``device``/``gpus_per_trial``/``data_dir`` applied.

    Workers of a job array start at the same moment as the starter, which on a loaded machine had
    not created the study yet (the joiner exited 2): the study, and the starter's ``search.yaml``
    fields on it, are waited for up to ``timeout`` seconds, with one line saying so."""
    import optuna

    from repnas.runs._join_wait import wait_for_study
    from repnas.runs._rundir import SearchConfig

    if not is_server_storage(storage):
        raise UserError(f"--join needs a database server --storage (postgresql://...), got {storage!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    saved = wait_for_study(storage, study_name, timeout, poll)  # the study exists and carries it
    if not isinstance(saved, dict):
        raise UserError(f"study {study_name!r} was not made by repnas search (no repnas.search attribute)")
    search = SearchConfig.from_dict(dict(saved))
    if search.backend != "optuna":
        raise UserError(f"study {study_name!r} is a --backend {search.backend} search; add nodes to its Ray "
                        "cluster instead of joining it (docs/scaling.md)")
    for name, value in overrides.items():
        if value is not None:
            setattr(search, name, value)
    search.storage = storage  # this machine's URL for the same database (host names may differ)
    search.workers = max(1, search.workers)
    return search
