"""Spaces that contain the paper's designs: cross-layer lenders and fixed physical shapes.

The paper's RepVGG-N and RepWRN-16-k must be points of built-in spaces: built from a space point
at the family's own parameter count, the model config is the family's (same base, kwargs and
plan) and the count is the family's.
"""

from __future__ import annotations

import random

import pytest
import torch

from repnas.errors import UserError
from repnas.rescale import RepetitionPlan, count_params
from repnas.spaces import (
    KNOB_DEFAULTS,
    InfeasibleError,
    SearchSpace,
    build_model,
    create_model,
    dataset_info,
    list_spaces,
    load_space,
    model_spec,
    smallest_candidate,
)
from repnas.spaces.models._vgg import REP_VGG_BORROWS
from repnas.spaces.models._wrn import WIDEN_FACTORS


def _meta_count(build) -> int:
    with torch.device("meta"):
        return count_params(build())


def _full_source(family: str) -> str:
    """``own`` if the family's plan lists convs that own an untiled (full-size) source, else ``plain``."""
    spec = model_spec(family)
    with torch.device("meta"):
        base = build_model({"base": spec.base, "kwargs": spec.base_kwargs})
    shapes = {name: tuple(m.weight.shape[:2]) for name, m in base.named_modules() if isinstance(m, torch.nn.Conv2d)}
    full = any(rule.own is not None and rule.own == shapes[name] for name, rule in spec.plan.layers.items())
    return "own" if full else "plain"


def _assert_is_family(space: SearchSpace, point: dict, family: str) -> None:
    """The space builds exactly ``family`` from ``point`` at the family's parameter count; where
    the space searches ``full_source``, the point takes the family's choice."""
    if "full_source" in space.knobs:
        point = {**point, "full_source": _full_source(family)}
    else:
        assert _full_source(family) == "plain"
    expected = _meta_count(lambda: create_model(family))
    solution = space.solve(point, expected, "cifar10")
    spec = model_spec(family)
    config = solution.model_config
    assert (config["base"], config["kwargs"]) == (spec.base, spec.base_kwargs)
    assert RepetitionPlan.from_dict(config["plan"]).to_dict() == spec.plan.to_dict()
    assert solution.params == expected
    assert _meta_count(lambda: build_model(config, 10, 3)) == expected


def _slot(layer: int) -> str:
    """PAPER.md's conv Lx (1-based) of VGG11 (2 convs per stage) as a space slot 'stage.conv'."""
    return f"{(layer - 1) // 2}.{(layer - 1) % 2}"


def _no_lenders(space: SearchSpace) -> dict:
    return {name: "none" for name in space.knobs if name.startswith("lender.")}


@pytest.mark.parametrize("n", sorted(REP_VGG_BORROWS))
def test_rep_vgg_is_a_point_of_vgg11_shape(n):
    space = load_space("vgg11-shape")
    point = {**_no_lenders(space), "map": "swish"}
    for borrower, lender in REP_VGG_BORROWS[n].items():
        point[f"lender.{_slot(borrower)}"] = _slot(lender)
    _assert_is_family(space, point, f"rep_vgg{n}")


def test_a_point_carries_plan_options_into_its_plan():
    """Without ``plan_options``, a point whose knobs take the family's plan-level values (every
    option that is a knob of the space, whatever the plan version defines) builds the family."""
    family = model_spec("rep_vgg6").plan.to_dict()
    data = load_space("vgg11-shape").to_dict()
    del data["plan_options"]
    options = {k: v for k, v in family.items() if k in KNOB_DEFAULTS}
    assert {"map", "scalar_init"} <= set(options)
    data["knobs"].update({k: {"choices": sorted({v, KNOB_DEFAULTS[k][0]})} for k, v in options.items()})
    space = SearchSpace.from_dict(data)
    point = {**_no_lenders(space), **options}
    point.update({f"lender.{_slot(b)}": _slot(lender) for b, lender in REP_VGG_BORROWS[6].items()})
    _assert_is_family(space, point, "rep_vgg6")


@pytest.mark.parametrize("k", WIDEN_FACTORS)
def test_rep_wrn16_is_a_point_of_wrn16_shape(k):
    space = load_space("wrn16-shape")
    _assert_is_family(space, {**_no_lenders(space), "map": "swish", "widen": k}, f"rep_wrn16_{k}")


def test_lender_knobs_are_static_earlier_convs_that_fit():
    assert {"vgg11-shape", "wrn16-shape"} <= set(list_spaces())
    space = load_space("vgg11-shape")
    lenders = {n: k.choices for n, k in space.knobs.items() if n.startswith("lender.")}
    # VGG11: L2 has no possible lender (L1 faces the image), L3..L10 have one knob each
    assert sorted(lenders) == [f"lender.{_slot(x)}" for x in range(3, 11)]
    assert lenders["lender.1.0"] == ("none", "0.1")  # L3 (128, 64) may tile L2 (64, 64) only
    assert lenders["lender.4.1"] == ("none", *(_slot(x) for x in range(2, 10)))
    assert set(space.distributions()) == set(space.knobs)
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        return
    assert set(space.to_ray()) == set(space.distributions())


QUICK_LENDER = """
name: lend
family: vgg
widths: {widths}
budget: 12k
dataset: digits
knobs:
  depth: 2
  lender.1.1: {{choices: [none, '0.1']}}
"""


def test_cross_stage_borrowing_in_a_solved_space():
    space = SearchSpace.from_yaml(QUICK_LENDER.format(widths="[8, 16]"))
    solution = space.solve({"lender.1.1": "0.1"})
    plan = solution.model_config["plan"]
    w0, w1 = solution.source_widths
    assert w0 <= w1
    # stage 1's second conv (features.10) tiles stage 0's second conv (features.3)
    assert plan["layers"]["features.10"] == {"borrow": "features.3"}
    assert solution.params <= 12_000
    info = dataset_info("digits")
    assert _meta_count(lambda: build_model(solution.model_config, info.num_classes, 1)) == solution.params
    # the same point without the lender keeps features.10 plain: the knob is what changed the model
    assert "features.10" not in space.solve({"lender.1.1": "none"}).model_config["plan"]["layers"]


def test_a_lender_whose_source_does_not_fit_is_ignored():
    # stage 0 is wider than stage 1, so its conv cannot be tiled into stage 1's
    space = SearchSpace.from_yaml(QUICK_LENDER.format(widths="[32, 8]"))
    solution = space.solve({"lender.1.1": "0.1"})
    w0, w1 = solution.source_widths
    assert w0 > w1
    assert "features.10" not in solution.model_config["plan"]["layers"]
    assert solution.model_config == space.solve({"lender.1.1": "none"}).model_config


@pytest.mark.parametrize("name, budgets", [("vgg11-shape", (600_000, 90_000)), ("wrn16-shape", (200_000, 60_000))])
def test_fixed_shape_solver_fills_the_budget_with_real_counts(name, budgets):
    space = load_space(name)
    info = dataset_info(space.dataset)
    rng = random.Random(7)
    sized = 0
    for budget in budgets:
        for _ in range(2):
            solution = space.solve(space.sample(rng), budget)
            assert solution.params <= budget
            plain = solution.source_widths == solution.physical_widths
            sized += not plain
            assert plain or solution.fill >= 0.95, (solution.source_widths, solution.fill)
            assert all(s <= p for s, p in zip(solution.source_widths, solution.physical_widths, strict=True))
            real = _meta_count(lambda c=solution.model_config: build_model(c, info.num_classes, info.in_channels))
            assert real == solution.params
    assert sized >= 2  # the solver really sized sources, not only kept plain convs


def test_fixed_shape_infeasible_names_the_points_minimum():
    space = load_space("wrn16-shape")
    point = {**space.sample(0), "widen": 4}
    with pytest.raises(InfeasibleError) as info:
        space.solve(point, 1000)
    minimum = info.value.min_params
    assert f"{minimum:,}" in str(info.value)
    assert space.solve(point, minimum).params <= minimum  # the named minimum is a budget that fits
    with pytest.raises(InfeasibleError):
        space.solve(point, minimum - 1)
    assert smallest_candidate(space) > 1000


def test_huge_depth_range_is_never_enumerated(monkeypatch):
    calls = []
    original = SearchSpace.architecture

    def counting(self, point):
        calls.append(point)
        return original(self, point)

    monkeypatch.setattr(SearchSpace, "architecture", counting)
    text = "name: big\nfamily: vgg\nwidths: [8, 16]\nknobs:\n  depth: {low: 1, high: 100000, per_stage: true}\n"
    space = SearchSpace.from_yaml(text)
    assert space.grid_size() == 100_000**2
    assert len(calls) <= 10  # range ends only, not 100,000 values
    assert smallest_candidate(space, "digits") > 0
    assert space.solve({"depth.0": 1, "depth.1": 1}, 12_000, "digits").params <= 12_000
    with pytest.raises(UserError, match="at most 64 convs"):
        SearchSpace.from_yaml(text + "  lender: {per_conv: true}\n")


def test_yaml_round_trip_keeps_shape_lenders_and_plan_options():
    for name in ("vgg11-shape", "wrn16-shape"):
        space = load_space(name)
        again = SearchSpace.from_yaml(space.to_yaml())
        assert again.distributions() == space.distributions()
        assert (again.shape, again.plan_options, again.fixed) == (space.shape, space.plan_options, space.fixed)


FIXED = "name: x\nfamily: vgg\nwidths: [8, 16]\nshape: fixed\n"
SOLVED = "name: x\nfamily: vgg\nwidths: [8, 16]\n"


@pytest.mark.parametrize("text, message", [
    (SOLVED + "knobs: {widen: 2}", "widen needs shape: fixed"),
    (FIXED + "knobs: {width_rep: {choices: [1, 2], per_stage: true}}", "width_rep must be 1"),
    (SOLVED + "shape: stretchy", "shape must be one of"),
    (SOLVED + "knobs: {lender.0.1: {choices: [none, '1.0']}}", "only from an earlier conv"),
    (SOLVED + "knobs: {lender.0.1: 0.0}", "quoted 'stage.conv'"),
    (SOLVED + "knobs: {lender.5.0: '0.1'}", "no stage 5"),
    (SOLVED + "knobs: {lender: own}", "per_conv: true"),
    (SOLVED + "knobs: {lender.1.2: '0.1'}", "stage 1 has no conv 2"),
    (SOLVED + "plan_options: {layers: {}}", "not layers or banks"),
    (SOLVED + "plan_options: {like: vgg11}", "has no plan"),
    (SOLVED + "plan_options: {map: sparkle}", "unknown map"),
])
def test_bad_shape_and_lender_input_is_a_user_error(text, message):
    with pytest.raises(UserError, match=message):
        SearchSpace.from_yaml(text)
