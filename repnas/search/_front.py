"""The Pareto front of a run's ``trials.parquet``, and what ``repnas search`` prints at the end.

Both backends are summarised (and exported, ``repnas export --pareto``) from the same place, the run
directory's ``trials.parquet`` table, not from the Optuna study: the table holds test accuracy and
the ``trials/<n>`` numbers for either backend, while a Ray Tune search cannot annotate its Optuna
trials (Optuna forbids changing finished trials) and numbers them in its own order. The front here
is exact (``O(n^2)`` dominance checks, fine for the hundreds of trials a search has);
``repnas.analysis`` has the full analysis (moocore fronts, hypervolume, reports).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from repnas.search._rundir import STATUSES, SearchConfig


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Trials per status of ``STATUSES`` (any other status counts as failed)."""
    counts = dict.fromkeys(STATUSES, 0)
    for status in frame["status"]:
        counts[status if status in counts else "failed"] += 1
    return counts


def nondominated(costs: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``costs`` (every column minimised) that no other row dominates."""
    no_worse = (costs[None, :, :] <= costs[:, None, :]).all(axis=2)  # [i, j]: row j is no worse than row i
    better = (costs[None, :, :] < costs[:, None, :]).any(axis=2)  # [i, j]: row j is better somewhere
    return ~(no_worse & better).any(axis=1)


def front_rows(frame: pd.DataFrame, search: SearchConfig) -> pd.DataFrame:
    """The complete trials no other complete trial dominates on the search's objectives (ties are
    all kept, as in ``optuna.Study.best_trials``), best validation accuracy first."""
    names = search.objective_names
    done = frame[frame["status"] == "complete"]
    values = done[names].to_numpy(dtype=float) if len(done) else np.empty((0, len(names)))
    keep = np.isfinite(values).all(axis=1)
    done, values = done[keep], values[keep]
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in search.directions])
    front = done[nondominated(values * signs)]
    order = "val_accuracy" if "val_accuracy" in names else names[0]
    return front.sort_values([order, "trial"], ascending=[order != "val_accuracy", True])


def front_text(frame: pd.DataFrame, search: SearchConfig) -> str:
    """The Pareto front as an aligned text table: trial, objectives, test accuracy, knobs."""
    front = front_rows(frame, search)
    if not len(front):
        return "no completed trials: the front is empty"
    names = search.objective_names
    knobs = [c.removeprefix("knob.") for c in frame.columns if c.startswith("knob.")]
    header = ["trial", *names, "test_accuracy", *knobs]
    rows = [[str(int(r["trial"])), *(_cell(n, r[n]) for n in names), _cell("test_accuracy", r["test_accuracy"]),
             *(str(r[f"knob.{k}"]) for k in knobs)] for _, r in front.iterrows()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def summary_text(frame: pd.DataFrame, search: SearchConfig, seconds: float) -> str:
    """The closing lines of ``repnas search``: counts per status, then the front."""
    counts = status_counts(frame)
    return (f"{counts['complete']} complete, {counts['failed']} failed, {counts['infeasible']} infeasible, "
            f"{counts['pruned']} pruned in {seconds:.0f}s; Pareto front ({', '.join(search.objective_names)}):\n"
            + front_text(frame, search))


def _cell(name: str, value) -> str:
    value = float(value)
    if not math.isfinite(value):
        return "-"
    if "accuracy" in name:
        return f"{value:.4f}"
    return f"{int(value):,}" if value.is_integer() else f"{value:.3g}"
