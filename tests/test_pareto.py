"""Pareto sets: moocore's filter plus our feasibility rules equal a brute-force definition."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repnas.analysis import feasible_mask, normalize_trials, pareto_front, pareto_mask

ACC_PARAMS = [{"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"}]
THREE = [*ACC_PARAMS, {"name": "flops", "direction": "minimize"}]


def brute_force_front(trials: pd.DataFrame, objectives) -> np.ndarray:
    """The textbook definition, O(n^2): feasible, and no feasible trial at least as good everywhere
    and strictly better somewhere. Written independently of the library (no moocore, no masks)."""
    names = [o["name"] for o in objectives]
    sign = np.array([-1.0 if o["direction"] == "maximize" else 1.0 for o in objectives])
    rows = []
    for _, r in trials.iterrows():
        values = np.array([float(r[n]) for n in names])
        ok = r["status"] == "complete" and bool(np.all(np.isfinite(values)))
        budget = float(r["budget"])
        if ok and math.isfinite(budget) and budget > 0:
            ok = float(r["params"]) <= budget
        rows.append((ok, values * sign))
    out = np.zeros(len(rows), dtype=bool)
    for i, (ok_i, v_i) in enumerate(rows):
        if not ok_i:
            continue
        out[i] = not any(ok_j and np.all(v_j <= v_i) and np.any(v_j < v_i)
                         for j, (ok_j, v_j) in enumerate(rows) if j != i)
    return out


# Few distinct values so that ties and exact duplicates are common; NaN for unmeasured metrics.
_values = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 3.0]), st.floats(0, 10, allow_nan=False),
                    st.just(math.nan))
_row = st.fixed_dictionaries({
    "status": st.sampled_from(["complete", "complete", "complete", "failed", "infeasible", "pruned"]),
    "val_accuracy": _values, "params": _values, "flops": _values,
    "budget": st.sampled_from([math.nan, 0.0, 2.0, 100.0]),
})


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(_row, max_size=25), three=st.booleans(),
       directions=st.lists(st.sampled_from(["maximize", "minimize"]), min_size=3, max_size=3))
def test_pareto_mask_equals_brute_force(rows, three, directions):
    trials = normalize_trials([{"trial": i, **r} for i, r in enumerate(rows)])
    objectives = [{"name": o["name"], "direction": d} for o, d in zip(THREE, directions, strict=True)]
    objectives = objectives if three else objectives[:2]
    got = pareto_mask(trials, objectives)
    np.testing.assert_array_equal(got, brute_force_front(trials, objectives))


def _table(values, status=None, budget=math.nan):
    rows = [{"trial": i, "val_accuracy": a, "params": p, "flops": f, "budget": budget,
             "status": (status[i] if status else "complete")} for i, (a, p, f) in enumerate(values)]
    return normalize_trials(rows)


def test_single_point_is_its_own_front():
    trials = _table([(0.9, 100, 1000)])
    assert pareto_mask(trials, THREE).tolist() == [True]


def test_duplicates_of_a_front_point_are_all_kept_and_dominated_ones_dropped():
    trials = _table([(0.9, 100, 1000), (0.9, 100, 1000), (0.8, 100, 1000), (0.95, 300, 1000)])
    assert pareto_mask(trials, ACC_PARAMS).tolist() == [True, True, False, True]


def test_ties_in_one_objective_keep_only_the_better_in_the_other():
    trials = _table([(0.9, 100, 0), (0.9, 50, 0), (0.9, 200, 0)])
    assert pareto_mask(trials, ACC_PARAMS).tolist() == [False, True, False]


def test_failed_nan_and_over_budget_trials_never_join_the_front():
    # trial 1 would dominate everything but failed; trial 2 has NaN accuracy; trial 3 is over budget
    trials = _table([(0.8, 100, 10), (0.99, 1, 1), (math.nan, 1, 1), (0.99, 500, 10)],
                    status=["complete", "failed", "complete", "complete"], budget=400)
    assert feasible_mask(trials, ACC_PARAMS).tolist() == [True, False, False, False]
    assert pareto_mask(trials, ACC_PARAMS).tolist() == [True, False, False, False]
    assert pareto_mask(trials, ACC_PARAMS, budget=50).tolist() == [False] * 4


def test_empty_and_all_failed_tables_have_empty_fronts():
    assert pareto_mask(normalize_trials([]), ACC_PARAMS).tolist() == []
    failed = _table([(math.nan, math.nan, math.nan)] * 3, status=["failed"] * 3)
    assert pareto_mask(failed, THREE).tolist() == [False] * 3


def test_three_objective_front_keeps_points_a_two_objective_front_drops():
    # (0.8, 100, 10) loses to (0.9, 100, 50) in acc/params but wins on flops
    trials = _table([(0.9, 100, 50), (0.8, 100, 10)])
    assert pareto_mask(trials, ACC_PARAMS).tolist() == [True, False]
    assert pareto_mask(trials, THREE).tolist() == [True, True]


def test_pareto_front_sorted_by_first_objective_best_first():
    trials = _table([(0.8, 10, 0), (0.95, 100, 0), (0.9, 50, 0)])
    assert pareto_front(trials, ACC_PARAMS)["trial"].tolist() == [1, 2, 0]


def test_bad_objectives_are_user_errors():
    trials = _table([(0.9, 1, 1)])
    with pytest.raises(ValueError, match="not a column"):
        pareto_mask(trials, [{"name": "latency", "direction": "minimize"}])
    with pytest.raises(ValueError, match="1 to 3 objectives"):
        pareto_mask(trials, [*THREE, {"name": "train_seconds", "direction": "minimize"}])
