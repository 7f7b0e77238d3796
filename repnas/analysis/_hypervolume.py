"""Hypervolume of a front and how it grew over a search, computed by moocore.

The hypervolume is the volume of objective space that the front dominates, up to a reference
point that is worse than every point of interest. With mixed directions (maximise accuracy,
minimise params) moocore's ``maximise`` flags do the bookkeeping; the reference point is given in
the objectives' own units. Runs compared in one report must share the reference point (and the
ideal point used for normalising), which is why :func:`reference_point` takes several tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from repnas.analysis._pareto import Objectives, feasible_mask, objective_matrix
from repnas.errors import UserError


def _maximise_flags(maximize: bool | Sequence[bool], k: int) -> list[bool]:
    flags = [bool(maximize)] * k if isinstance(maximize, (bool, np.bool_)) else [bool(m) for m in maximize]
    if len(flags) != k:
        raise UserError(f"got {len(flags)} directions for {k} objectives")
    return flags


def hypervolume(points: np.ndarray | Sequence[Sequence[float]], ref: Sequence[float],
                maximize: bool | Sequence[bool] = False) -> float:
    """Hypervolume of ``points`` (n, k) with respect to ``ref`` (k,).

    ``maximize`` is one flag or one per objective. Points that do not strictly beat ``ref`` in every
    objective add nothing; an empty set has hypervolume 0.
    """
    import moocore

    ref_arr = np.asarray(ref, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, ref_arr.size)
    flags = _maximise_flags(maximize, ref_arr.size)
    if not np.isfinite(ref_arr).all():
        raise UserError(f"reference point must be finite, got {ref_arr.tolist()}")
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(pts, ref=ref_arr, maximise=flags))


def _is_accuracy(name: str) -> bool:
    return name.endswith("accuracy")


def reference_point(tables: Iterable[pd.DataFrame], objectives: Objectives,
                    margin: float = 0.1) -> list[float]:
    """A reference point worse than every feasible trial of every table.

    Accuracies (maximised, bounded below by 0) use 0. Other objectives use the worst feasible value
    pushed ``margin`` of the observed range further out (or ``margin`` of its magnitude when all
    values are equal), so that the worst front point still adds volume.
    """
    columns = [[] for _ in objectives]
    for trials in tables:
        ok = feasible_mask(trials, objectives)
        values, _ = objective_matrix(trials, objectives)
        for j in range(len(objectives)):
            columns[j].extend(values[ok, j].tolist())
    ref = []
    for obj, vals in zip(objectives, columns, strict=True):
        maximise = obj.get("direction") == "maximize"
        if maximise and _is_accuracy(obj["name"]):
            ref.append(0.0)
            continue
        if not vals:
            ref.append(0.0 if maximise else 1.0)
            continue
        lo, hi = min(vals), max(vals)
        spread = (hi - lo) or abs(hi) or 1.0
        ref.append(lo - margin * spread if maximise else hi + margin * spread)
    return ref


def ideal_point(tables: Iterable[pd.DataFrame], objectives: Objectives) -> list[float]:
    """The best feasible value of each objective over all tables (NaN where none is feasible)."""
    best = [math.nan] * len(objectives)
    for trials in tables:
        ok = feasible_mask(trials, objectives)
        if not ok.any():
            continue
        values, maximise = objective_matrix(trials, objectives)
        for j, flag in enumerate(maximise):
            v = values[ok, j].max() if flag else values[ok, j].min()
            best[j] = v if math.isnan(best[j]) else (max(best[j], v) if flag else min(best[j], v))
    return best


def hypervolume_history(trials: pd.DataFrame, objectives: Objectives, ref: Sequence[float],
                        ideal: Sequence[float] | None = None, budget: float | None = None) -> pd.DataFrame:
    """Hypervolume of the front found by trials ``0..k``, for each trial ``k`` in trial order.

    Returns columns ``trial``, ``hypervolume`` and ``front_size``. With ``ideal`` the hypervolume is
    divided by the volume of the box between ``ideal`` and ``ref`` (so 1.0 would mean one trial
    was best in everything), which makes runs with different units comparable at a glance.
    """
    order = trials.sort_values("trial", kind="stable")
    ok = feasible_mask(order, objectives, budget)
    values, maximise = objective_matrix(order, objectives)
    scale = 1.0
    if ideal is not None:
        box = float(np.prod(np.abs(np.asarray(ideal, dtype=float) - np.asarray(ref, dtype=float))))
        scale = box if np.isfinite(box) and box > 0 else 1.0

    import moocore

    front = np.empty((0, len(objectives)))
    hv, sizes = [], []
    current = 0.0
    for row, feasible in zip(values, ok, strict=True):
        if feasible:
            front = np.vstack([front, row])
            front = front[moocore.is_nondominated(front, maximise=maximise, keep_weakly=True)]
            current = hypervolume(front, ref, maximise) / scale
        hv.append(current)
        sizes.append(len(front))
    return pd.DataFrame({"trial": order["trial"].to_numpy(), "hypervolume": hv, "front_size": sizes})
