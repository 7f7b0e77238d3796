"""A database-server storage (PostgreSQL, MySQL) shared by workers on many machines.

Opening it (:func:`open_server_storage`) turns on Optuna's trial heartbeats, with
:func:`requeue_lost` as the callback for a trial whose heartbeats stopped; :class:`StudyLock` is the
server's own lock (``pg_advisory_lock``, ``GET_LOCK``) under which every machine counts and asks.
How the workers use them: :mod:`repnas.runs._workers`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

from repnas.errors import UserError

#: seconds between heartbeats of a running trial; a trial silent for twice that is lost.
#: ``REPNAS_HEARTBEAT`` overrides it (tests use 1 s).
DEFAULT_HEARTBEAT = 30


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


def requeue_lost(study, trial) -> None:
    """Optuna's callback for a trial whose worker stopped sending heartbeats (now ``FAIL``): queue
    its point again, marked ``retry_of``, so the search still trains it and the cap still holds."""
    if trial.params:
        from repnas.runs._retry import enqueue_retry

        enqueue_retry(study, trial)  # in the lost trial's NSGA-II generation


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
