"""The Pareto front of a run's ``trials.parquet``, and what ``repnas search`` prints at the end.

Both backends are summarised (and exported, ``repnas export --pareto``) from the same place, the run
directory's ``trials.parquet`` table, not from the Optuna study: the table holds test accuracy and
the ``trials/<n>`` numbers for either backend, while a Ray Tune search cannot annotate its Optuna
trials (Optuna forbids changing finished trials) and numbers them in its own order. Which trials
are on the front is decided by one helper for the printed front, the export and the report:
``repnas.analysis.pareto_mask`` (complete, within budget, not a duplicate, non-dominated; ties
kept, as ``optuna.Study.best_trials`` keeps them).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from repnas.runs._rundir import STATUSES, SearchConfig


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Trials per status of ``STATUSES`` (any other status counts as failed), duplicates apart as
    ``reused`` (they are not trained models)."""
    counts = dict.fromkeys((*STATUSES, "reused"), 0)
    reused = (frame["duplicate_of"].notna() if "duplicate_of" in frame.columns
              else pd.Series(False, index=frame.index))
    for status, duplicate in zip(frame["status"], reused, strict=True):
        counts["reused" if duplicate else status if status in counts else "failed"] += 1
    return counts


def nondominated(costs: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``costs`` (every column minimised) that no other row dominates."""
    no_worse = (costs[None, :, :] <= costs[:, None, :]).all(axis=2)  # [i, j]: row j is no worse than row i
    better = (costs[None, :, :] < costs[:, None, :]).any(axis=2)  # [i, j]: row j is better somewhere
    return ~(no_worse & better).any(axis=1)


def front_rows(frame: pd.DataFrame, search: SearchConfig) -> pd.DataFrame:
    """The front of the run (:func:`repnas.analysis.pareto_mask` on the search's objectives: each
    model once, ties all kept, as in ``optuna.Study.best_trials``), best validation accuracy first."""
    from repnas.analysis._pareto import pareto_mask

    names = search.objective_names
    front = frame[pareto_mask(frame, search.objectives)] if len(frame) else frame
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


def summary_text(frame: pd.DataFrame, search: SearchConfig, seconds: float, workers_replaced: int = 0) -> str:
    """The closing lines of ``repnas search``: counts per status (and the dead ``--workers``
    processes that were replaced), then the front."""
    counts = status_counts(frame)
    killed = f", {counts['interrupted']} interrupted (retried)" if counts["interrupted"] else ""
    if workers_replaced:
        killed += f", {workers_replaced} worker{'s' if workers_replaced > 1 else ''} replaced"
    return (f"{counts['complete']} complete, {counts['failed']} failed, {counts['infeasible']} infeasible, "
            f"{counts['pruned']} pruned, {counts['reused']} reused (same model as an earlier trial){killed} in "
            f"{seconds:.0f}s; Pareto front ({', '.join(search.objective_names)}):\n" + front_text(frame, search))


def _cell(name: str, value) -> str:
    value = float(value)
    if not math.isfinite(value):
        return "-"
    if "accuracy" in name:
        return f"{value:.4f}"
    return f"{int(value):,}" if value.is_integer() else f"{value:.3g}"


def no_complete_reason(frame: pd.DataFrame, search: SearchConfig) -> str | None:
    """Why a finished search has no complete trial, in one line (None when it has one).

    All infeasible: the smallest budget that would have fitted one of the proposed points (the
    fewest parameters any of them needs at its smallest widths).
    """
    if len(frame) and frame["status"].eq("complete").any():
        return None
    counts = status_counts(frame)
    if not len(frame):
        return "no trial ran"
    if counts["infeasible"] == len(frame):
        needed = int(pd.to_numeric(frame["params"], errors="coerce").min())
        return (f"no trial completed: all {len(frame)} were over the budget {search.budget_spec.describe()}; "
                f"the smallest budget that fits one of them is {needed:,} (--budget {needed})")
    errors = frame.loc[frame["status"] == "failed", "error"].astype(str)
    first = f"; first error: {errors.iloc[0][:160]}" if len(errors) else ""
    return (f"no trial completed: {counts['failed']} failed, {counts['infeasible']} infeasible, "
            f"{counts['pruned']} pruned{first}")
