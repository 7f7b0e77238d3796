"""Which trials may compete (feasibility) and which of them nobody beats (the Pareto set).

The non-dominated filter is moocore's ``is_nondominated`` (O(n log n) for 2 and 3 objectives);
this module only decides *which* rows go in and in which direction each objective points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from repnas.errors import UserError

Objectives = Sequence[Mapping[str, str]]


def _check_objectives(trials: pd.DataFrame, objectives: Objectives) -> list[str]:
    if not 1 <= len(objectives) <= 3:
        raise UserError(f"Pareto sets are for 1 to 3 objectives, got {len(objectives)}")
    names = [o["name"] for o in objectives]
    missing = [n for n in names if n not in trials.columns]
    if missing:
        raise UserError(f"objective {missing[0]!r} is not a column of the trials table")
    return names


def feasible_mask(trials: pd.DataFrame, objectives: Objectives, budget: float | None = None) -> np.ndarray:
    """Rows that may sit on a front: complete, every objective finite, within budget, and not a
    duplicate.

    The budget is the parameter budget: the trial's own ``budget`` column where it is positive,
    and ``budget`` (if given) for every trial. Failed, pruned and infeasible trials never count,
    even if some of their metrics were recorded. A duplicate (``duplicate_of`` set: the search
    answered it from an earlier trial that built the same model) never counts either: its model
    is on the front once, as the trial that trained it. This is the one rule every front of a run
    uses: ``repnas search``'s printed front, ``repnas export --pareto`` and the report.
    """
    values, _ = objective_matrix(trials, objectives)
    ok = (trials["status"] == "complete").to_numpy() & np.isfinite(values).all(axis=1)
    if "duplicate_of" in trials.columns:
        ok &= pd.to_numeric(trials["duplicate_of"], errors="coerce").isna().to_numpy()
    params = pd.to_numeric(trials["params"], errors="coerce").to_numpy(dtype=float)
    if "budget" in trials.columns:
        own = pd.to_numeric(trials["budget"], errors="coerce").to_numpy(dtype=float)
        limited = np.isfinite(own) & (own > 0)
        ok &= ~limited | (params <= np.where(limited, own, np.inf))
    if budget is not None:
        ok &= params <= budget
    return ok


def objective_matrix(trials: pd.DataFrame, objectives: Objectives) -> tuple[np.ndarray, list[bool]]:
    """(n, k) float matrix of the objective columns and the per-objective ``maximise`` flags."""
    names = _check_objectives(trials, objectives)
    values = trials[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return values, [o.get("direction", "minimize") == "maximize" for o in objectives]


def pareto_mask(trials: pd.DataFrame, objectives: Objectives, budget: float | None = None) -> np.ndarray:
    """Boolean mask of the trials on the Pareto front among the feasible ones.

    A feasible trial is on the front when no other feasible trial is at least as good in every
    objective and strictly better in one; exact duplicates of a front point are all kept (two
    trials with the same numbers are equally good choices).
    """
    import moocore

    feasible = feasible_mask(trials, objectives, budget)
    mask = np.zeros(len(trials), dtype=bool)
    if feasible.any():
        values, maximise = objective_matrix(trials, objectives)
        mask[feasible] = moocore.is_nondominated(values[feasible], maximise=maximise, keep_weakly=True)
    return mask


def pareto_front(trials: pd.DataFrame, objectives: Objectives, budget: float | None = None) -> pd.DataFrame:
    """The front's rows, sorted by the first objective (best first)."""
    front = trials[pareto_mask(trials, objectives, budget)]
    first = objectives[0]
    return front.sort_values(first["name"], ascending=first.get("direction") != "maximize", kind="stable")
