"""Read trials from wherever a search left them into one table shaped like ``trials.parquet``.

Three sources, one output (docs/design.md, "The run directory"):

* a run directory written by ``repnas search`` (``trials.parquet``, else its Optuna study);
* any Optuna storage URL / study (``sqlite:///...``, a ``.db`` file, a journal ``.log`` file,
  or an ``optuna.Study`` object);
* a Ray Tune experiment directory (read with ``ray.tune.ExperimentAnalysis``, no cluster needed).

Everything downstream (Pareto sets, hypervolume, reports) only sees the common table, so a new
source is one more function here.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from repnas.errors import UserError
from repnas.runs._rundir import STATUSES

#: The columns of ``trials.parquet`` in contract order (knob columns ``knob.<name>`` follow them).
TRIAL_COLUMNS: tuple[str, ...] = (
    "trial",
    "status",
    "val_accuracy",
    "test_accuracy",
    "params",
    "physical_params",
    "flops",
    "train_seconds",
    "seed",
    "worker",
    "error",
    "budget",
    "config",
    "duplicate_of",  # the trial whose model this one reused without training (NaN: trained its own)
)
KNOB_PREFIX = "knob."
_FLOAT_COLUMNS = ("val_accuracy", "test_accuracy", "params", "physical_params", "flops", "train_seconds",
                  "budget", "seed", "duplicate_of")
_STRING_COLUMNS = ("worker", "error", "config")

#: Objectives assumed when a source does not name its own (the search's default).
DEFAULT_OBJECTIVES: tuple[dict[str, str], ...] = (
    {"name": "val_accuracy", "direction": "maximize"},
    {"name": "params", "direction": "minimize"},
    {"name": "flops", "direction": "minimize"},
)


@dataclass
class Run:
    """One search's results: its trials table plus what is needed to read it.

    ``objectives`` is a list of ``{"name", "direction"}`` dicts (from ``search.yaml`` where there is
    one); ``path`` is the run directory (None for a study or Tune experiment loaded directly).
    """

    name: str
    trials: pd.DataFrame
    objectives: list[dict[str, str]] = field(default_factory=lambda: [dict(o) for o in DEFAULT_OBJECTIVES])
    config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def knobs(self) -> list[str]:
        """Knob column names (``knob.<name>``) in table order."""
        return knob_columns(self.trials)


def knob_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c.startswith(KNOB_PREFIX)]


def normalize_trials(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return a table with every contract column, the contract dtypes, sorted by trial number.

    Missing columns are filled (NaN for numbers, "" for strings), unknown statuses are rejected,
    and numbers stay float so that NaN can mark "not measured" (failed trials have no params).
    Extra columns other than ``knob.*`` are kept after the contract ones.
    """
    df = pd.DataFrame(rows).copy()
    if "trial" not in df.columns:
        df["trial"] = np.arange(len(df))
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float) if col in df.columns else np.nan
    for col in _STRING_COLUMNS:
        df[col] = df[col].fillna("").astype(str) if col in df.columns else ""
    if "status" not in df.columns:
        df["status"] = "complete"
    df["status"] = df["status"].fillna("failed").astype(str).str.lower()
    unknown = sorted(set(df["status"]) - set(STATUSES))
    if unknown:
        raise UserError(f"unknown trial status {unknown[0]!r} (expected one of {', '.join(STATUSES)})")
    df["trial"] = pd.to_numeric(df["trial"], errors="raise").astype(int)
    knobs = sorted(knob_columns(df))
    extra = [c for c in df.columns if c not in TRIAL_COLUMNS and c not in knobs]
    return df[[*TRIAL_COLUMNS, *knobs, *extra]].sort_values("trial", kind="stable").reset_index(drop=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def parse_objectives(spec: Any) -> list[dict[str, str]]:
    """Objectives from ``search.yaml`` (list of ``{name, direction}`` or of names) as dicts."""
    if spec is None:
        return [dict(o) for o in DEFAULT_OBJECTIVES]
    out = []
    for item in spec:
        if isinstance(item, str):
            default = next((o["direction"] for o in DEFAULT_OBJECTIVES if o["name"] == item), "minimize")
            item = {"name": item, "direction": default}
        if not isinstance(item, Mapping) or "name" not in item:
            raise UserError(f"objective {item!r}: expected {{name: ..., direction: maximize|minimize}}")
        direction = str(item.get("direction", "minimize")).lower()
        if direction not in ("maximize", "minimize"):
            raise UserError(f"objective {item['name']}: direction must be maximize or minimize, "
                            f"not {direction}")
        out.append({"name": str(item["name"]), "direction": direction})
    return out


def is_run_directory(path: Path) -> bool:
    return path.is_dir() and ((path / "search.yaml").exists() or (path / "trials.parquet").exists())


def is_tune_experiment(path: Path) -> bool:
    return path.is_dir() and any(path.glob("experiment_state*.json"))


def load_run(path: str | Path) -> Run:
    """Load a run directory, a Ray Tune experiment directory or an Optuna storage as a :class:`Run`.

    A run directory's ``trials.parquet`` is the source of truth; where the search has not written
    it yet (or was interrupted) the Optuna study named in ``search.yaml`` is read instead, so a
    report can be made of a search still in progress.
    """
    if isinstance(path, str) and "://" in path:
        return Run(name=path.rsplit("/", 1)[-1], trials=load_trials(path))
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run directory")
    if is_run_directory(path):
        config = _read_yaml(path / "search.yaml") if (path / "search.yaml").exists() else {}
        objectives = parse_objectives(config.get("objectives"))
        if (path / "trials.parquet").exists():
            trials = _read_parquet(path / "trials.parquet")
        else:
            trials = _trials_from_run_study(path, config, objectives)
        return Run(name=path.name, trials=trials, objectives=objectives, config=config, path=path)
    if is_tune_experiment(path):
        return Run(name=path.name, trials=trials_from_tune(path))
    if path.is_file() and path.suffix in (".db", ".sqlite", ".sqlite3", ".log"):
        return Run(name=path.stem, trials=load_trials(path))
    raise UserError(
        f"{path}: not a run directory (no search.yaml or trials.parquet), Ray Tune experiment "
        "(no experiment_state*.json) or Optuna storage (.db / .log)"
    )


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return normalize_trials(pd.read_parquet(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from exc


def _trials_from_run_study(path: Path, config: Mapping[str, Any], objectives: list[dict[str, str]]):
    """The run's Optuna study, found from ``search.yaml`` or the conventional file names."""
    storage = config.get("storage") or config.get("storage_url")
    study_name = config.get("study_name") or config.get("study")
    if not storage:
        for candidate in ("study.db", "journal.log"):
            if (path / candidate).exists():
                storage = str(path / candidate)
                break
    if not storage:
        return normalize_trials([])  # a search that has not produced anything yet
    if isinstance(storage, str):  # a relative storage file in search.yaml is relative to the run dir
        from repnas.runs._storage import absolute_storage

        storage = absolute_storage(storage, path)
    return load_trials(storage, study_name=study_name, objectives=objectives)


def load_trials(
    source: Any,
    study_name: str | None = None,
    objectives: Sequence[Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """One trials table from a run directory, Tune experiment, Optuna storage/URL or ``optuna.Study``."""
    import optuna

    if isinstance(source, optuna.Study):
        return trials_from_study(source, objectives)
    if isinstance(source, Path) or (isinstance(source, str) and "://" not in source):
        path = Path(source)
        if path.is_dir():
            return load_run(path).trials
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
        storage: Any = _storage_for_file(path)
    else:
        storage = source
    try:
        if study_name is None:
            names = optuna.get_all_study_names(storage)
            if len(names) != 1:
                choices = ", ".join(names) or "none"
                raise UserError(f"{source}: holds {len(names)} studies ({choices}); name one with study_name")
            study_name = names[0]
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as exc:
        raise UserError(f"{source}: no study named {study_name!r}") from exc
    return trials_from_study(study, objectives)


def _storage_for_file(path: Path) -> Any:
    import optuna

    if path.suffix == ".log":
        from repnas.runs._journal_lock import journal_backend

        return optuna.storages.JournalStorage(journal_backend(str(path)))  # the lock the search takes
    with path.open("rb") as fh:
        if not fh.read(16).startswith(b"SQLite format 3"):
            raise UserError(f"{path}: not an SQLite database or Optuna journal")
    # Optuna creates its tables in any database it opens; look read-only first so that a report
    # never writes into someone else's SQLite file.
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            check = db.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:  # truncated or damaged
        raise UserError(f"{path}: damaged SQLite database ({exc})") from None
    if not check or check[0] != "ok":
        raise UserError(f"{path}: damaged SQLite database (integrity check: {check[0] if check else '?'})")
    if "studies" not in tables:
        raise UserError(f"{path}: an SQLite database without Optuna studies")
    from repnas.runs._storage import sqlite_url

    return sqlite_url(path)  # escaped: a '?' or '%' in the path stays in it


_OPTUNA_STATUS = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned", "RUNNING": "failed",
                  "WAITING": "failed"}


def trials_from_study(study: Any, objectives: Sequence[Mapping[str, str]] | None = None) -> pd.DataFrame:
    """Map an Optuna study onto the trials table.

    Values go to the columns named by ``study.metric_names`` (else ``objectives``, else the
    default objectives); user attributes named like contract columns (``params``, ``status``,
    ``error``...) fill those columns; ``trial.params`` become ``knob.<name>``. Running/waiting
    trials are reported as ``failed`` with error "not finished" so they never join a front.
    """
    import optuna

    names = list(study.metric_names or [])
    if not names:
        names = [o["name"] for o in (objectives or DEFAULT_OBJECTIVES)][: len(study.directions)]
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "status": _OPTUNA_STATUS[t.state.name]}
        if t.values is not None:
            row.update(zip(names, t.values, strict=False))
        for key, value in t.user_attrs.items():
            key = key.removeprefix("repnas.")
            if (key in TRIAL_COLUMNS and key != "trial") or key.startswith(KNOB_PREFIX):
                row[key] = json.dumps(value) if key == "config" and not isinstance(value, str) else value
        for key, value in t.params.items():
            row.setdefault(key if key.startswith(KNOB_PREFIX) else KNOB_PREFIX + key, value)
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            row["error"] = "not finished"
        elif t.state == optuna.trial.TrialState.FAIL and not row.get("error"):
            row["error"] = str(t.system_attrs.get("fail_reason", "failed"))
        if "train_seconds" not in row and t.datetime_complete and t.datetime_start:
            row["train_seconds"] = (t.datetime_complete - t.datetime_start).total_seconds()
        if row["status"] != "complete":
            for key in ("val_accuracy", "test_accuracy"):
                row[key] = math.nan
        rows.append(row)
    return normalize_trials(rows)


_TUNE_STATUS = {"TERMINATED": "complete", "ERROR": "failed"}


def trials_from_tune(path: str | Path) -> pd.DataFrame:
    """Map a Ray Tune experiment directory onto the trials table (via ``ExperimentAnalysis``).

    The last reported result gives the metric columns; the trial's config gives the knobs (the
    search's Ray driver uses the knob names as ``param_space`` keys); the trial number is the
    index Tune puts in front of ``experiment_tag``.
    """
    from ray.tune import ExperimentAnalysis

    path = Path(path)
    try:
        analysis = ExperimentAnalysis(str(path))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise UserError(f"{path}: cannot read Ray Tune experiment ({str(exc).splitlines()[0]})") from exc
    rows = []
    for i, t in enumerate(analysis.trials):
        match = re.match(r"(\d+)", t.experiment_tag or "")
        result = t.last_result or {}
        row: dict[str, Any] = {
            "trial": int(match.group(1)) if match else i,
            "status": _TUNE_STATUS.get(t.status, "failed"),
            "worker": str(result.get("hostname", "")),
        }
        row.update({k: v for k, v in result.items() if k in TRIAL_COLUMNS and k not in ("trial", "worker")})
        row.setdefault("train_seconds", result.get("time_total_s", math.nan))
        for key, value in (t.config or {}).items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                row.setdefault(key if key.startswith(KNOB_PREFIX) else KNOB_PREFIX + key, value)
        if row["status"] == "failed":
            row["error"] = row.get("error") or _tune_error(Path(t.storage.trial_fs_path), t)
            row["val_accuracy"] = row["test_accuracy"] = math.nan
        rows.append(row)
    return normalize_trials(rows)


def _tune_error(trial_dir: Path, trial: Any) -> str:
    """Last non-empty line of Tune's error.txt: the exception message, without the traceback."""
    name = getattr(trial.run_metadata, "error_filename", None) or "error.txt"
    try:
        lines = [ln.strip() for ln in (trial_dir / name).read_text().splitlines() if ln.strip()]
    except OSError:
        return "failed"
    return lines[-1] if lines else "failed"
