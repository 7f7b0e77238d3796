"""Learning curves of a run's trials: validation accuracy and loss after every epoch.

The trainer writes each trial's per-epoch history into ``trials/<n>/metrics.json`` (both backends
train into ``trials/<n>/``), and the Optuna backend also puts the accuracies into its study as
intermediate values (what optuna-dashboard plots). The report reads the files: they need no
database connection (a report never writes to a run), exist for Ray runs too, and hold the loss as
well. A trial that reused another's result (``duplicate_of``) has no folder of its own to read: its
model's curve is drawn once, under the trial that trained it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from repnas.analysis._load import Run

CURVE_COLUMNS = ("trial", "epoch", "val_accuracy", "val_loss")


def learning_curves(run: Run) -> pd.DataFrame:
    """One row per (trial, epoch) with ``val_accuracy`` and ``val_loss``; empty where the run has
    no trial folders (a study or Tune experiment loaded directly)."""
    rows = []
    if run.path is not None and len(run.trials):
        for trial in run.trials["trial"].astype(int):
            for epoch in _history(Path(run.path) / "trials" / str(trial) / "metrics.json"):
                rows.append({"trial": trial, "epoch": int(epoch.get("epoch", 0)),
                             "val_accuracy": _number(epoch.get("val_accuracy")),
                             "val_loss": _number(epoch.get("val_loss"))})
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def _history(path: Path) -> list[dict]:
    """The ``history`` list of a trainer's metrics.json; empty when missing or unreadable (a trial
    still training, or one that failed before its first epoch)."""
    try:
        history = json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
