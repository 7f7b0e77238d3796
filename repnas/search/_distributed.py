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
import hashlib
import os
import socket
import threading
import time
from typing import Any

from repnas.errors import UserError

#: URL schemes of database servers several machines can share (SQLite is a local file).
SERVER_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb")

#: seconds between heartbeats of a running trial; a trial silent for twice that is lost.
#: ``REPNAS_HEARTBEAT`` overrides it (tests use 1 s).
DEFAULT_HEARTBEAT = 30


def is_server_storage(url: str | None) -> bool:
    """Whether ``url`` names a database server (``postgresql://``, ``mysql+pymysql://``, ...)."""
    if not url or "://" not in url:
        return False
    return url.split("://", 1)[0].split("+", 1)[0].lower() in SERVER_SCHEMES


def heartbeat_interval() -> int:
    try:
        return max(1, int(os.environ.get("REPNAS_HEARTBEAT", DEFAULT_HEARTBEAT)))
    except ValueError:
        raise UserError(f"REPNAS_HEARTBEAT must be a number of seconds, got "
                        f"{os.environ['REPNAS_HEARTBEAT']!r}") from None


def open_server_storage(url: str, heartbeat: bool = True):
    """Optuna's RDB storage on a server, with heartbeats for trials run by the ask/tell workers
    (:func:`trial_heartbeat`) and :func:`requeue_lost` for trials whose heartbeats stopped.
    Ray's ``OptunaSearch`` sends no heartbeats, so it opens the storage with ``heartbeat=False``."""
    import warnings

    import optuna

    if not heartbeat:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    interval = heartbeat_interval()
    # Optuna warns that heartbeats are meant for Study.optimize; our ask/tell workers send their own
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore")
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=interval,
                grace_period=2 * interval, heartbeat_stale_trial_callback=requeue_lost)
        except ImportError:
            raise UserError(f"storage {url.split('://')[0]}:// needs its database driver; install "
                            "repnas[postgres] (psycopg) for PostgreSQL") from None


# --------------------------------------------------------------------- the study-wide lock
class StudyLock:
    """An exclusive lock held on the database server, named after the study: what serialises the
    count-then-ask of every worker on every machine. The lock belongs to one connection, opened
    for the ask and closed after it, so a worker that dies holding it frees it."""

    def __init__(self, url: str, study: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.dialect = self.engine.dialect.name
        self.name = f"repnas:{study}"
        self.key = int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "big", signed=True)
        if self.dialect not in ("postgresql", "mysql", "mariadb"):
            raise UserError(f"no server lock for {self.dialect} storages; use PostgreSQL or MySQL")

    @contextlib.contextmanager
    def hold(self):
        from sqlalchemy import text

        with self.engine.connect() as connection:
            if self.dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
                release = text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
            else:
                connection.execute(text("SELECT GET_LOCK(:name, -1)"), {"name": self.name})
                release = text("SELECT RELEASE_LOCK(:name)"), {"name": self.name}
            try:
                yield
            finally:
                connection.execute(*release)
                connection.commit()


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


def storage_file(url: str) -> str | None:
    """The file of a file-based storage (``sqlite:///path`` or a journal path), else None."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    return None if "://" in url else url


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


def requeue_lost(study, trial) -> None:
    """Optuna's callback for a trial whose worker stopped sending heartbeats (now ``FAIL``): queue
    its point again, marked ``retry_of``, so the search still trains it and the cap still holds."""
    if trial.params:
        from repnas.search._retry import enqueue_retry

        enqueue_retry(study, trial)  # in the lost trial's NSGA-II generation


def retried_trials(trials) -> dict[int, int]:
    """``{lost or interrupted trial: the trial that retries its point}``."""
    return {int(t.user_attrs["retry_of"]): t.number for t in trials if "retry_of" in t.user_attrs}


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

    from repnas.search._join_wait import wait_for_study
    from repnas.search._optuna_driver import open_storage
    from repnas.search._rundir import SearchConfig

    if not is_server_storage(storage):
        raise UserError(f"--join needs a database server --storage (postgresql://...), got {storage!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wait_for_study(storage, study_name, timeout, poll)
    try:
        names = optuna.get_all_study_names(open_storage(storage, heartbeat=False))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"storage {storage} is unreachable ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if study_name not in names:
        raise UserError(f"no study {study_name!r} in {storage}; start it first with "
                        f"repnas search --space ... --storage {storage} --study {study_name}")
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, heartbeat=False))
    saved = study.user_attrs.get("repnas.search")
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
