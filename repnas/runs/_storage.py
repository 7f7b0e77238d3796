"""Storage URLs that survive any path, and a read-only look at a storage before Optuna opens it.

* SQLAlchemy URL-decodes the path of ``sqlite:///PATH`` and cuts it at ``?``: a run directory named
  ``a?b`` put its study in ``a``, one named ``a%20b`` in ``a b``. :func:`sqlite_url` escapes ``%``
  and ``?`` (and ``#``) so the URL names exactly the file; :func:`storage_file` reads it back.
* ``search.yaml`` names a storage inside its run directory relative to it (:func:`portable_storage`),
  so a run folder can be moved or copied and resumed where it lies.
* Optuna creates its tables in any database it opens, and appends to any journal file: pointed at
  someone else's SQLite file, at a 0-byte or damaged ``study.db``, or at a text file, it writes
  into it. :func:`inspect_storage` looks first, read-only, and refuses with one line.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from repnas.errors import UserError

#: URL schemes of database servers several machines can share (SQLite is a local file).
SERVER_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb")


def sqlite_url(path: str | Path) -> str:
    """``sqlite:///`` URL of the file ``path`` (absolute), escaped so that SQLAlchemy reads ``path``."""
    return "sqlite:///" + _escaped(str(Path(path).resolve()))


def _escaped(text: str) -> str:
    return text.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def absolute_storage(url: str, base: str | Path | None = None) -> str:
    """``url`` with a relative file (``sqlite:///run.db``, ``journal.log``) made absolute against
    ``base`` (default: the working directory); server URLs, in-memory SQLite and absolute files are
    returned as they are. A YAML file's relative storage is relative to the folder holding it."""
    path = storage_file(url)
    if path is None or path.is_absolute():
        return url
    located = Path(base if base is not None else Path.cwd()) / path
    return sqlite_url(located) if url.startswith("sqlite:") else str(located.resolve())


def portable_storage(url: str, home: str | Path) -> str:
    """``url`` as ``search.yaml`` in run directory ``home`` keeps it: a storage file inside the run
    directory relative to it (``sqlite:///study.db``, ``journal.log``), so a run folder that is moved
    or copied resumes on its own study, never on the one it was copied from;
    :func:`absolute_storage` with ``base=home`` reads it back."""
    path = storage_file(url)
    if path is None or not path.is_absolute():
        return url
    try:
        relative = path.resolve().relative_to(Path(home).resolve())
    except ValueError:  # outside the run directory (--storage elsewhere): where it is
        return url
    return "sqlite:///" + _escaped(relative.as_posix()) if url.startswith("sqlite:") else relative.as_posix()


def is_server_storage(url: str | None) -> bool:
    """Whether ``url`` names a database server (``postgresql://``, ``mysql+pymysql://``, ...)."""
    if not url or "://" not in url:
        return False
    return url.split("://", 1)[0].split("+", 1)[0].lower() in SERVER_SCHEMES


def open_storage(url: str, heartbeat: bool = True, durable: bool = True):
    """An Optuna storage from a URL (``sqlite:///...``, any RDB URL) or a journal file path; a
    database server (``postgresql://``) gets trial heartbeats unless ``heartbeat=False``
    (:mod:`repnas.runs._server`). ``durable=False`` (a search replaying a recorded table, which
    writes a few hundred rows a second and can be replayed again) lets an SQLite file skip the
    sync to disk of every commit (``PRAGMA synchronous=OFF``): a commit then costs microseconds,
    not a disk flush (18 ms each on a loaded 2-core machine, 50 per trial)."""
    import optuna

    from repnas.runs._server import open_server_storage

    if is_server_storage(url):
        return open_server_storage(url, heartbeat)
    if "://" in url:
        path = storage_file(url) if url.startswith("sqlite:") else None
        if not durable and path is not None:
            return optuna.storages.RDBStorage(url, engine_kwargs={"creator": lambda: _unsynced_sqlite(path)})
        return optuna.storages.RDBStorage(url)
    from repnas.runs._journal_lock import journal_backend

    return optuna.storages.JournalStorage(journal_backend(str(url)))  # a kernel lock: never stale


def _unsynced_sqlite(path: Path):
    """An sqlite3 connection to ``path`` that does not wait for the disk at each commit."""
    connection = sqlite3.connect(str(path), check_same_thread=False)
    connection.execute("PRAGMA synchronous=OFF")
    return connection


def storage_exists(url: str) -> bool:
    """Whether the storage already holds data (without creating an SQLite file as a side effect)."""
    path = storage_file(url)  # URL-decoded: a run directory may have '?' or '%' in its name
    return True if path is None else path.exists()  # None: a server, ask it


def storage_file(url: str) -> Path | None:
    """The local file behind a storage: the SQLite database of a ``sqlite://`` URL or a journal
    file path; None for a database server."""
    if url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        try:
            database = make_url(url).database
        except Exception:
            return None
        if not database or database == ":memory:":
            return None
        return Path(database.removeprefix("file:")) if database.startswith("file:") else Path(database)
    if "://" in url:
        return None
    return Path(url)


def inspect_storage(url: str, resume: bool) -> None:
    """Refuse, without writing anything, a storage Optuna would damage or that holds other data."""
    path = storage_file(url)
    if url.startswith("sqlite:"):
        if path is None:
            raise UserError(f"storage {url}: not a file-backed SQLite URL")
        _inspect_sqlite(path, resume)
    elif "://" not in url:
        _inspect_journal(path, resume)
    else:
        _inspect_server(url)


def _inspect_sqlite(path: Path, resume: bool) -> None:
    if path.is_dir():
        raise UserError(f"storage {path} is a directory, not an SQLite file")
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        if resume:
            raise UserError(f"cannot resume: storage {path} is empty (0 bytes), it holds no study")
        return
    with path.open("rb") as handle:
        if not handle.read(16).startswith(b"SQLite format 3"):
            raise UserError(f"storage {path} is not an SQLite database; it is left as it is")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            status = db.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise UserError(f"storage {path} is damaged ({exc}); it is left as it is") from None
    if not status or status[0] != "ok":
        raise UserError(f"storage {path} is damaged (integrity check: {status[0] if status else '?'}); "
                        "it is left as it is")
    if tables and "studies" not in tables:
        raise UserError(f"storage {path} holds other data (tables {', '.join(sorted(tables)[:3])}), "
                        "not Optuna studies; choose another --storage")


def _inspect_journal(path: Path, resume: bool) -> None:
    if path.is_dir():
        raise UserError(f"storage {path} is a directory, not an Optuna journal file")
    if not path.exists():
        return
    if path.stat().st_size == 0:
        if resume:
            raise UserError(f"cannot resume: storage {path} is empty (0 bytes), it holds no study")
        return
    with path.open("rb") as handle:
        first = handle.readline(1 << 20)
    try:
        record = json.loads(first)
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise UserError(f"storage {path} is not an Optuna journal (it holds other data); "
                        "choose another --storage")


def _inspect_server(url: str) -> None:
    """A database server: its tables, read through SQLAlchemy's inspector (which creates nothing)."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise UserError(f"storage {url}: cannot open it ({type(exc).__name__}: {text[0] if text else ''})"
                        ) from None
    if tables and "studies" not in tables:
        raise UserError(f"storage {url} holds other data (tables {', '.join(sorted(tables)[:3])}), "
                        "not Optuna studies; choose another --storage")
