"""The budget solver: every candidate under the budget, and within 10% of it."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

from repnas.rescale import count_params
from repnas.spaces import InfeasibleError, build_model, dataset_info, load_space, smallest_candidate

POINTS = {"quick": 25, "vgg-depth": 10, "wrn-width": 10, "resnet": 8}


@pytest.mark.parametrize("name", list(POINTS))
def test_solver_lands_within_10_percent_under_the_budget(name):
    space = load_space(name)
    info = dataset_info(space.dataset)
    rng = random.Random(1234)
    fills = []
    for _ in range(POINTS[name]):
        solution = space.solve(space.sample(rng))
        assert solution.params <= space.budget
        fills.append(solution.params / space.budget)
        # the count the solver used is the real count of the built model
        with torch.device("meta"):
            model = build_model(solution.model_config, info.num_classes, info.in_channels)
        assert count_params(model) == solution.params
    assert min(fills) >= 0.90, (name, min(fills))


def test_other_budgets_and_datasets():
    space = load_space("vgg-depth")
    point = space.sample(7)
    for budget, dataset in [(150_000, "cifar10"), (1_200_000, "cifar100"), (300_000, "mnist")]:
        solution = space.solve(point, budget, dataset)
        assert 0.9 * budget <= solution.params <= budget


def test_infeasible_budget_names_the_minimum():
    space = load_space("quick")
    minimum = smallest_candidate(space)
    assert minimum > 50
    with pytest.raises(InfeasibleError) as info:
        space.solve(space.sample(0), budget=minimum - 1)
    assert info.value.min_params >= minimum
    assert f"{info.value.min_params:,}" in str(info.value)
    # no candidate fits under the minimum, and the smallest one fits exactly at it
    fits = 0
    for k in range(40):
        point = space.sample(k)
        with pytest.raises(InfeasibleError):
            space.solve(point, budget=minimum - 1)
    smallest = {n: (1 if n.startswith(("depth", "width_rep")) else v) for n, v in space.sample(0).items()}
    for share in ("own", "borrow", "bank"):
        for rank in (1, 2):
            point = {**smallest, "share.0": share, "share.1": share, "rank": rank}
            with contextlib.suppress(InfeasibleError):
                fits += space.solve(point, budget=minimum).params <= minimum
    assert fits >= 1
