"""Search spaces: YAML in, Optuna distributions / Ray param_space / deterministic model configs out."""

from __future__ import annotations

import random

import pytest
import torch

from repnas.errors import UserError
from repnas.rescale import count_params
from repnas.spaces import SearchSpace, build_model, dataset_info, list_spaces, load_space

BUILTIN = ["quick", "vgg-depth", "wrn-width", "resnet"]


def test_builtin_spaces_are_listed_and_load():
    assert set(BUILTIN) <= set(list_spaces())
    for name in BUILTIN:
        space = load_space(name)
        assert space.name == name
        assert space.knobs, name
        # every distribution is static and discrete-or-range: what NSGA-II needs
        dists = space.distributions()
        assert set(dists) == set(space.knobs)


def test_ray_param_space_has_the_same_knobs_as_optuna():
    pytest.importorskip("ray.tune")
    space = load_space("resnet")
    assert set(space.to_ray()) == set(space.distributions())


def test_per_stage_knobs_expand_one_per_stage():
    space = load_space("quick")
    assert {"depth.0", "depth.1", "width_rep.0", "width_rep.1", "share.0", "share.1"} <= set(space.knobs)
    assert space.fixed == {"scalar_init": "identity"}


def test_to_model_config_is_deterministic_and_fits_the_budget():
    space = load_space("quick")
    point = space.sample(3)
    first = space.to_model_config(point, "12k")
    second = space.to_model_config(dict(point), 12_000)
    assert first == second
    info = dataset_info("digits")
    model = build_model(first, info.num_classes, info.in_channels)
    assert count_params(model) <= 12_000
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)


def test_yaml_round_trip_keeps_the_space():
    space = load_space("wrn-width")
    again = SearchSpace.from_yaml(space.to_yaml())
    assert again.distributions() == space.distributions()
    assert again.fixed == space.fixed and again.widths == space.widths and again.budget == space.budget


def test_width_repetition_and_sharing_reach_the_plan():
    space = load_space("quick")
    point = {"depth.0": 2, "depth.1": 2, "width_rep.0": 2, "width_rep.1": 1, "share.0": "own",
             "share.1": "borrow", "rank": 1, "map": "swish"}
    solution = space.solve(point)
    plan = solution.model_config["plan"]
    w0, w1 = solution.source_widths
    assert solution.physical_widths == (2 * w0, w1)
    cfg = solution.model_config["kwargs"]["cfg"]
    assert cfg == [2 * w0, 2 * w0, "M", w1, w1, "M"]
    # stage 0: both convs own sources tiled x2; stage 1: its second conv borrows the first
    assert plan["layers"]["features.0"] == {"own": [w0, 1]}
    assert plan["layers"]["features.3"] == {"own": [w0, w0]}
    assert plan["layers"]["features.10"] == {"borrow": "features.7"}
    # a search writes this plan into every trial's config: it names its version, so a run directory
    # keeps its meaning whatever a plan without ``version`` comes to mean (issue 22: it became v2)
    assert plan["version"] == 2


def test_banks_are_shared_with_the_sampled_rank():
    space = load_space("resnet")
    point = {**space.sample(0), "depth.1": 3, "share.1": "bank", "rank": 4}
    plan = space.to_model_config(point)["plan"]
    assert plan["banks"]["stage1"]["rank"] == 4
    members = [name for name, rule in plan["layers"].items() if rule.get("bank") == "stage1"]
    assert len(members) >= 5  # 3 blocks x 2 convs, less the first conv if its input is too narrow


def test_remainder_and_source_init_knobs_reach_the_model():
    """wrn-width searches the remainder rule and the source init (docs/method.md); a network bank
    tiled into wider stages has remainders whenever the solved widths do not divide."""
    from repnas.rescale import repeated_layers

    space = load_space("wrn-width")
    assert space.knobs["remainder"].choices == ("paper", "source")
    assert space.knobs["source_init"].choices == ("small_xavier", "physical")
    point = {**space.sample(0), "width_rep.0": 1, "width_rep.1": 1, "width_rep.2": 1, "share.0": "bank",
             "share.1": "bank", "share.2": "bank", "bank_scope": "network", "rank": 1, "map": "swish"}
    for remainder, source_init in (("paper", "small_xavier"), ("source", "physical")):
        config = space.to_model_config({**point, "remainder": remainder, "source_init": source_init})
        plan = config["plan"]
        assert plan["version"] == 2 and plan["bias_init"] == "zeros"
        assert (plan["remainder"], plan["source_init"]) == (remainder, source_init)
        model = build_model(config, num_classes=10, in_channels=3)
        reps = [rep for _, _, rep in repeated_layers(model)]
        assert {rep.remainder for rep in reps} == {remainder}
        assert any(rep.layout[2] or rep.layout[3] for rep in reps)  # the rule has remainders to act on


@pytest.mark.parametrize("text, message", [
    ("name: x\nfamily: vgg\nwidths: [8, 16]\nknobs: {remainder: {choices: [paper, tiles]}}", "remainder must be"),
    ("name: x\nfamily: vgg\nwidths: [8, 16]\nknobs: {depht: {low: 1, high: 2}}", "unknown knob 'depht'"),
    ("name: x\nfamily: mobilenet\nwidths: [8]", "unknown family"),
    ("name: x\nfamily: vgg\nwidths: [8, 16]\nknobs: {share: {choices: [own, steal]}}", "unknown share"),
    ("name: x\nfamily: vgg\nwidths: eight", "widths must be"),
    ("name: x\nfamily: vgg\nwidths: [8]\nknobs: {depth: {low: 3, high: 1}}", "low <= high"),
    ("name: [x\n", "malformed YAML"),
])
def test_malformed_space_yaml_is_a_user_error(text, message):
    with pytest.raises(UserError, match=message):
        SearchSpace.from_yaml(text)


def test_unknown_space_names_the_built_ins():
    with pytest.raises(UserError, match=r"unknown space 'quik'.*quick"):
        load_space("quik")


def test_sampling_is_seeded():
    space = load_space("vgg-depth")
    assert space.sample(random.Random(5)) == space.sample(random.Random(5))
