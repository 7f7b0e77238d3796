"""Reference points for plain models (``vgg6``, ``wrn16_4`` ...) drawn next to a search's trials.

A baselines file is CSV or YAML (docs/analysis.md). Columns / keys: ``name`` (required),
``params`` (required), ``flops``, ``val_accuracy``, ``test_accuracy`` (at least one accuracy).

CSV::

    name,params,flops,val_accuracy,test_accuracy
    vgg6,292000,9100000,0.962,0.958

YAML (a list, a ``baselines:`` list, or a mapping from name to fields)::

    vgg6: {params: 292000, flops: 9100000, val_accuracy: 0.962, test_accuracy: 0.958}

Or a search run directory, e.g. a search over a plain (no repetition) space at budget levels
(``--budget 4k,10k,20k,40k``): its trained, complete trials are the plain family's scaling curve,
trained with the same recipe as the run it is drawn beside; each is named ``<run>:<trial>``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from repnas.errors import UserError

BASELINE_COLUMNS = ("name", "params", "flops", "val_accuracy", "test_accuracy")


def _rows_from_yaml(path: Path) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if isinstance(data, dict) and "baselines" in data:
        data = data["baselines"]
    if isinstance(data, dict):
        data = [{"name": name, **(fields or {})} for name, fields in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a list of baselines or a mapping name -> fields")
    return data


def _rows_from_run(path: Path) -> list[dict[str, Any]]:
    """Baseline rows of a run directory: complete trials that trained their own model."""
    trials = pd.read_parquet(path / "trials.parquet")
    keep = trials["status"].eq("complete")
    if "duplicate_of" in trials.columns:
        keep &= trials["duplicate_of"].isna()
    if not keep.any():
        raise UserError(f"{path}: no complete trials to use as baselines")
    return [{"name": f"{path.name}:{int(r['trial'])}", **{k: r[k] for k in BASELINE_COLUMNS[1:]}}
            for _, r in trials[keep].sort_values("params").iterrows()]


def load_baselines(path: str | Path) -> pd.DataFrame:
    """Read and check a baselines file; returns one row per model with :data:`BASELINE_COLUMNS`."""
    path = Path(path)
    if path.is_dir() and (path / "trials.parquet").is_file():
        rows = _rows_from_run(path)
    elif not path.is_file():
        raise UserError(f"{path}: no such baselines file")
    elif path.suffix.lower() in (".yaml", ".yml"):
        rows = _rows_from_yaml(path)
    elif path.suffix.lower() == ".csv":
        try:
            rows = pd.read_csv(path).to_dict("records")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    else:
        raise UserError(f"{path}: baselines must be .csv, .yaml or .yml")
    out = []
    for i, row in enumerate(rows, start=1):
        unknown = sorted(set(row) - set(BASELINE_COLUMNS))
        if unknown:
            raise UserError(f"{path}: baseline {i}: unknown field {unknown[0]!r} "
                            f"(allowed: {', '.join(BASELINE_COLUMNS)})")
        name = row.get("name")
        if name is None or (isinstance(name, float) and math.isnan(name)) or not str(name).strip():
            raise UserError(f"{path}: baseline {i} has no name")
        clean: dict[str, Any] = {"name": str(name)}
        for key in BASELINE_COLUMNS[1:]:
            value = row.get(key)
            try:
                clean[key] = math.nan if value is None or value == "" else float(value)
            except (TypeError, ValueError):
                raise UserError(f"{path}: baseline {name}: {key} must be a number, got {value!r}") from None
        if not math.isfinite(clean["params"]) or clean["params"] <= 0:
            raise UserError(f"{path}: baseline {name}: params must be a positive number")
        if math.isnan(clean["val_accuracy"]) and math.isnan(clean["test_accuracy"]):
            raise UserError(f"{path}: baseline {name}: give val_accuracy or test_accuracy")
        out.append(clean)
    return pd.DataFrame(out, columns=list(BASELINE_COLUMNS))
