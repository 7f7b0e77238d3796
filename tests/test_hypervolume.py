"""Hypervolume: hand-computed values, agreement with Optuna's implementation, history over trials."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repnas.analysis import hypervolume, hypervolume_history, ideal_point, normalize_trials, reference_point

ACC_PARAMS = [{"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"}]


def test_two_d_staircase_minimise():
    # boxes to ref (4, 4): 3x1 + 2x1 + 1x1
    assert hypervolume([[1, 3], [2, 2], [3, 1]], ref=[4, 4]) == pytest.approx(6.0)


def test_mixed_directions_accuracy_up_params_down():
    # union of [0, 0.9] x [2, 4] and [0, 0.8] x [1, 4] = 0.9*2 + 0.8*1
    hv = hypervolume([[0.9, 2], [0.8, 1]], ref=[0.0, 4.0], maximize=[True, False])
    assert hv == pytest.approx(2.6)


def test_three_d_single_box_and_overlap():
    assert hypervolume([[1, 1, 1]], ref=[2, 3, 4]) == pytest.approx(6.0)
    # two 2-volume boxes overlapping in the unit cube [2,3]^3
    assert hypervolume([[1, 2, 2], [2, 1, 2]], ref=[3, 3, 3]) == pytest.approx(3.0)


def test_dominated_outside_nan_and_empty_points_add_nothing():
    base = hypervolume([[1, 3], [3, 1]], ref=[4, 4])
    assert base == pytest.approx(5.0)
    assert hypervolume([[1, 3], [3, 1], [3.5, 3.5], [5, 0], [math.nan, 0]], ref=[4, 4]) == pytest.approx(base)
    assert hypervolume(np.empty((0, 2)), ref=[4, 4]) == 0.0
    assert hypervolume([[1, 1]], ref=[1, 1]) == 0.0  # on the reference point: no volume


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.floats(0, 10, allow_nan=False)] * 3), min_size=1, max_size=20))
def test_agrees_with_optuna_implementation(points):
    from optuna._hypervolume import compute_hypervolume

    pts = np.array(points)
    ref = np.array([11.0, 11.0, 11.0])
    assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(pts, ref), rel=1e-9, abs=1e-9)


def _trials():
    rows = [
        {"trial": 0, "val_accuracy": 0.5, "params": 4.0},   # hv 0.5 * (10 - 4) = 3.0
        {"trial": 1, "status": "failed"},                    # unchanged
        {"trial": 2, "val_accuracy": 0.4, "params": 6.0},   # dominated: unchanged
        {"trial": 3, "val_accuracy": 0.8, "params": 8.0},   # + (0.8 - 0.5) * (10 - 8) = 3.6
        {"trial": 4, "val_accuracy": 0.9, "params": 2.0, "status": "infeasible"},  # unchanged
        {"trial": 5, "val_accuracy": 0.6, "params": 2.0},   # 0.6*8 + 0.2*2 = 5.2
    ]
    return normalize_trials([{"status": "complete", **r} for r in rows])


def test_history_is_hand_computed_per_trial():
    h = hypervolume_history(_trials(), ACC_PARAMS, ref=[0.0, 10.0])
    assert h["trial"].tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(h["hypervolume"], [3.0, 3.0, 3.0, 3.6, 3.6, 5.2])
    assert h["front_size"].tolist() == [1, 1, 1, 2, 2, 2]


def test_history_normalised_by_ideal_box():
    trials = _trials()
    ideal = ideal_point([trials], ACC_PARAMS)
    assert ideal == [0.8, 2.0]  # the infeasible 0.9 does not count
    h = hypervolume_history(trials, ACC_PARAMS, ref=[0.0, 10.0], ideal=ideal)
    assert h["hypervolume"].iloc[-1] == pytest.approx(5.2 / (0.8 * 8.0))


def test_reference_point_zero_accuracy_and_worst_cost_plus_margin():
    ref = reference_point([_trials()], ACC_PARAMS)
    # feasible params 4, 6, 8, 2 -> worst 8, range 6 -> 8 + 0.6
    assert ref == pytest.approx([0.0, 8.6])


def test_history_of_all_failed_run_is_zero():
    trials = normalize_trials([{"trial": i, "status": "failed"} for i in range(3)])
    h = hypervolume_history(trials, ACC_PARAMS, ref=[0.0, 1.0])
    assert h["hypervolume"].tolist() == [0.0, 0.0, 0.0]
