"""The run directory of a search (design.md, "The run directory") and the search's own config.

::

    runs/<name>/
      search.yaml        SearchConfig (space definition included, so the folder is self-contained)
      study.db           Optuna SQLite storage (journal.log with --workers > 1)
      trials.parquet     one row per finished trial (columns: TRIAL_COLUMNS + knob.<name>)
      trials/<number>/   config.yaml, checkpoint.pt, metrics.json (the trainer's), log.txt
      logs/              one log per worker

The Optuna storage is the single source of truth: every column of ``trials.parquet`` is stored on
the trial (``trial.user_attrs``) when it finishes, and the table is rewritten from the storage
(atomically) after every trial. So a killed search never leaves the table and the study out of step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repnas._io import atomic_path, atomic_write_text, remove_dead_temporaries
from repnas.errors import UserError

#: objective name -> Optuna direction. Validation accuracy is what the search maximises (test
#: accuracy is reported, never optimised).
OBJECTIVES = {
    "val_accuracy": "maximize",
    "params": "minimize",
    "physical_params": "minimize",
    "flops": "minimize",
    "train_seconds": "minimize",
}
DEFAULT_OBJECTIVES = ("val_accuracy", "params", "flops")
SAMPLERS = ("nsga2", "tpe", "gp", "random")
#: ``interrupted``: killed with its process (or lost with its worker) and retried as a new trial; not
#: a candidate's failure, which ``failed`` is kept for
STATUSES = ("complete", "failed", "infeasible", "pruned", "interrupted")
#: ``trials.parquet``'s columns and their pandas dtypes, the same whatever the trials' statuses (an
#: all-failed run has the dtypes of a normal one): counts are nullable ``Int64`` (missing = <NA>, not a
#: float NaN), times are UTC timestamps. ``knob.<name>`` columns follow, typed by their values
#: (:func:`knob_dtype`). docs/design.md, "The run directory", documents each column.
TRIAL_SCHEMA: dict[str, str] = {
    "trial": "int64",
    "status": "string",
    "val_accuracy": "float64",
    "test_accuracy": "float64",
    "params": "Int64",
    "physical_params": "Int64",
    "flops": "Int64",
    "train_seconds": "float64",
    "epochs": "Int64",
    "seed": "Int64",
    "worker": "string",
    "error": "string",
    "budget": "Int64",
    "config": "string",
    "duplicate_of": "Int64",
    "started": "datetime64[ns, UTC]",
    "finished": "datetime64[ns, UTC]",
}
TRIAL_COLUMNS = tuple(TRIAL_SCHEMA)
#: ``--max-failures`` default, one for both backends: under Ray the restarts of a trial whose node or
#: process died (Tune's ``FailureConfig``); with ``--workers`` the dead worker processes replaced,
#: in all, in one run of the command (past it a dead worker stops the search, exit 3).
DEFAULT_MAX_FAILURES = 3


@dataclass
class SearchConfig:
    """Everything that defines a search: written to ``search.yaml``, read back on ``--resume``."""

    space: dict[str, Any]  # the SearchSpace definition (to_dict)
    dataset: str = "digits"
    budget: int | str = 0  # one count, or ``LOW:HIGH`` / ``A,B,C`` searched as the ``budget`` dimension
    trials: int = 12
    epochs: int = 4
    seed: int = 0
    objectives: list[dict[str, str]] = field(
        default_factory=lambda: [{"name": n, "direction": OBJECTIVES[n]} for n in DEFAULT_OBJECTIVES])
    sampler: str = "nsga2"
    population_size: int = 0  # NSGA-II population; 0 = a third of the trials (4..50)
    backend: str = "optuna"
    storage: str = ""
    study: str = ""
    workers: int = 1
    gpus_per_trial: float = 1.0
    early_stop: str = "none"
    device: str = "auto"
    data_dir: str | None = None
    image_size: int | None = None  # every image resized to this square side on load (None: as stored)
    recipe: dict[str, Any] = field(default_factory=dict)
    space_name: str = ""
    # --backend ray: storage (Tune's storage_path or URI), resources (per trial)
    ray: dict[str, Any] = field(default_factory=dict)
    max_failures: int = DEFAULT_MAX_FAILURES  # see DEFAULT_MAX_FAILURES
    # --replay TABLE: table (absolute path), speed (0: virtual time), fingerprint; empty: trials train
    replay: dict[str, Any] = field(default_factory=dict)

    @property
    def objective_names(self) -> list[str]:
        return [o["name"] for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o["direction"] for o in self.objectives]

    def search_space(self):
        from repnas.spaces import SearchSpace

        return SearchSpace.from_dict(self.space, f"space {self.space_name or 'of search.yaml'}")

    def dataset_shape(self):
        """The :class:`~repnas.spaces.DatasetInfo` the search's candidates are built for: a named
        dataset's, or the one read from an ``imagefolder:PATH`` (:func:`repnas.train.dataset_shape`)."""
        from repnas.train import dataset_shape

        return dataset_shape(self.dataset, self.data_dir, self.image_size)

    @property
    def budget_spec(self):
        """The budget as a :class:`~repnas.spaces.BudgetSpec` (one count, a range or levels)."""
        from repnas.spaces import parse_budget

        return parse_budget(self.budget, "search.yaml: budget")

    def distributions(self, space=None) -> dict[str, Any]:
        """What the sampler searches: the space's knobs, plus ``budget`` where it is a range or levels."""
        from repnas.spaces import BUDGET_PARAM

        space = space if space is not None else self.search_space()
        out = dict(space.distributions())
        budget = self.budget_spec.to_optuna()
        if budget is not None:
            out[BUDGET_PARAM] = budget
        return out

    def knob_names(self, space=None) -> list[str]:
        """The ``knob.<name>`` columns of ``trials.parquet``: the space's knobs (and ``budget``)."""
        return list(self.distributions(space))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SearchConfig:
        if not isinstance(data, dict):
            raise UserError("search.yaml: expected a mapping")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise UserError(f"search.yaml: unknown keys {sorted(unknown)}")
        ray = data.get("ray")
        if isinstance(ray, dict) and "max_failures" in ray:  # where a Ray run kept it before it was both backends'
            ray = dict(ray)
            data = {**data, "ray": ray, "max_failures": data.get("max_failures", ray.pop("max_failures"))}
        from repnas.runs._checks import check_search_fields

        return check_search_fields(cls(**data))

    def to_yaml(self, path: str | Path, home: str | Path | None = None) -> None:
        """Write ``path``; a storage file inside run directory ``home`` (default: the folder of
        ``path``) is written relative to it, so the run folder can move (``portable_storage``)."""
        from repnas.runs._storage import portable_storage

        data = self.to_dict()
        data["storage"] = portable_storage(self.storage, home if home is not None else Path(path).parent)
        atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchConfig:
        """Read ``path``; a relative storage file is relative to the folder holding it."""
        from repnas.runs._storage import absolute_storage

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a YAML text file (not UTF-8)") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
        config = cls.from_dict(data)
        if config.storage:
            config.storage = absolute_storage(config.storage, Path(path).parent)
        return config


def objectives_from_names(text: str) -> list[dict[str, str]]:
    """``val_accuracy,params`` -> ``[{name, direction}, ...]``; ``UserError`` for unknown names."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or not names or len(set(names)) != len(names):
        raise UserError(f"objectives: {text!r} is not a list of distinct names from {', '.join(OBJECTIVES)}")
    return [{"name": n, "direction": OBJECTIVES[n]} for n in names]


class RunDir:
    """Paths of one run directory, the lock that serialises its writers, and the table writer."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def search_yaml(self) -> Path:
        return self.root / "search.yaml"

    @property
    def trials_parquet(self) -> Path:
        return self.root / "trials.parquet"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / str(number)

    def default_storage(self, workers: int) -> str:
        """SQLite for one process; Optuna's journal file when several processes share the study
        (SQLite's file locking serialises badly under concurrent writers)."""
        if workers > 1:
            return str((self.root / "journal.log").resolve())
        from repnas.runs._storage import sqlite_url

        return sqlite_url(self.root / "study.db")  # escaped: '?' or '%' in the path stay in it

    def is_used(self) -> bool:
        return self.root.exists() and any(self.root.iterdir())

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "trials").mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)

    def remove_dead_temporaries(self) -> list[Path]:
        """The temporaries killed writers left here (``repnas._io``: of ``trials.parquet``, of a
        sampler pickle written at start-up, of a killed trial's checkpoint, whose folder is never
        written again); a live process's are kept. A search removes them when it starts or resumes."""
        folders = [self.root, self.root / "samplers", self.logs]
        if (self.root / "trials").is_dir():
            folders += sorted(p for p in (self.root / "trials").iterdir() if p.is_dir())
        return [path for folder in folders for path in remove_dead_temporaries(folder)]

    @contextlib.contextmanager
    def lock(self):
        """An exclusive inter-process lock (``fcntl.flock``) on ``<run>/.lock``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_trials(self, frame) -> None:
        """Write ``trials.parquet`` atomically (write a temporary file, then rename)."""
        with atomic_path(self.trials_parquet) as tmp:
            frame.to_parquet(tmp, index=False)


def trial_status(trial) -> str:
    """The ``status`` of a finished Optuna trial: the one ``run_trial`` stored on it (``infeasible``
    is told ``FAIL``), else what its state says; ``interrupted`` for a trial killed with its process
    (marked so by ``recover_interrupted``, whatever status an older run stored on it)."""
    if trial.user_attrs.get("interrupted"):
        return "interrupted"
    return trial.user_attrs.get("status") or {"COMPLETE": "complete", "PRUNED": "pruned"}.get(
        trial.state.name, "failed")


def trials_frame(trials, knob_names: list[str]):
    """The ``trials.parquet`` table of finished Optuna trials (FrozenTrial list), one row each; a
    trial without its own ``started``/``finished`` attributes gets Optuna's start/complete times."""
    rows = [{"started": _utc(t.datetime_start), "finished": _utc(t.datetime_complete), **t.user_attrs,
             "status": trial_status(t), "trial": t.number, **{f"knob.{k}": v for k, v in t.params.items()}}
            for t in trials if t.state.name in ("COMPLETE", "FAIL", "PRUNED")]
    return rows_frame(rows, knob_names)


def rows_frame(rows: list[dict[str, Any]], knob_names: list[str]):
    """The ``trials.parquet`` table of result rows (``run_trial``'s rows + ``trial``, ``worker`` and
    ``knob.<name>`` keys): the columns and dtypes of ``TRIAL_SCHEMA``, sorted by trial number."""
    import pandas as pd

    table = []
    for attrs in rows:
        row: dict[str, Any] = {name: _missing(attrs.get(name)) for name in TRIAL_SCHEMA}
        row["trial"] = int(attrs["trial"])
        row["status"] = str(attrs.get("status") or "failed")
        row["worker"] = str(attrs.get("worker") or "")
        row["error"] = str(attrs.get("error") or "")
        config = attrs.get("config")
        row["config"] = config if isinstance(config, str) else json.dumps(config) if config is not None else ""
        for name in ("params", "physical_params", "flops", "epochs", "seed", "budget", "duplicate_of"):
            row[name] = _count(row[name])
        for name in ("val_accuracy", "test_accuracy", "train_seconds"):
            row[name] = _float(row[name])
        for name in knob_names:
            row[f"knob.{name}"] = _missing(attrs.get(f"knob.{name}"))
        table.append(row)
    columns = list(TRIAL_SCHEMA) + [f"knob.{n}" for n in knob_names]
    frame = pd.DataFrame(table, columns=columns)
    for name, dtype in TRIAL_SCHEMA.items():
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601").astype(dtype) \
            if dtype.startswith("datetime") else frame[name].astype(dtype)
    for name in knob_names:
        column = f"knob.{name}"
        frame[column] = frame[column].astype(knob_dtype(frame[column]))
    return frame.sort_values("trial").reset_index(drop=True)


def knob_dtype(values) -> str:
    """A knob column's dtype from its values' Python types (fixed by the knob's distribution, not by
    the trials' statuses): ``Int64`` for integers, ``float64``, ``boolean``, else ``string``."""
    import numpy as np

    kinds = {type(v) for v in values if not _is_missing(v)}
    if kinds and all(issubclass(k, (bool, np.bool_)) for k in kinds):
        return "boolean"
    if kinds and all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_)) for k in kinds):
        return "Int64"
    if kinds and all(issubclass(k, (int, float, np.integer, np.floating)) for k in kinds):
        return "float64"
    return "string"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, dict, tuple)) else False
    except (TypeError, ValueError):
        return False


def _missing(value: Any) -> Any:
    return None if _is_missing(value) else value


def _count(value: Any) -> int | None:
    """An integer count, or None (<NA>) when missing or not a finite number."""
    value = _float(value)
    return None if math.isnan(value) else int(value)


def _utc(moment) -> str | None:
    """An Optuna trial time (a naive local datetime) as an ISO 8601 UTC string."""
    from datetime import timezone

    return moment.astimezone(timezone.utc).isoformat() if moment is not None else None


def _float(value: Any) -> float:
    try:
        return float(value) if not _is_missing(value) else math.nan
    except (TypeError, ValueError):
        return math.nan
