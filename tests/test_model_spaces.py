"""Model spaces: any model's convs, found by walking it, become the knobs of a fixed-shape space.

The lender choices of a model are exactly its earlier convs that fit (same kernel and groups, no
larger on either channel axis), in the order the forward pass runs them; the budget solver fills
the budget without touching the physical shape; the built-in families' spaces are unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from repnas.errors import UserError
from repnas.rescale import RepetitionPlan, count_flops, count_params, count_physical_params
from repnas.spaces import (
    DEFAULT_KNOBS,
    ModelSpace,
    SearchSpace,
    build_model,
    create_model,
    load_space,
    model_spec,
    smallest_candidate,
)
from repnas.spaces.models._vgg import REP_VGG_BORROWS

DATA = Path(__file__).parent / "data"
TINY = f"{DATA / 'tiny_net.py'}:TinyNet"
RESNET18 = "torchvision.models:resnet18"


def _space(model: str, **extra) -> ModelSpace:
    return SearchSpace.from_dict({"model": model, **extra})


@pytest.fixture(scope="module")
def resnet18_space() -> ModelSpace:
    return _space(RESNET18, budget="1M", dataset="cifar10")


def _fits(a: nn.Conv2d, b: nn.Conv2d) -> bool:
    return (a.kernel_size == b.kernel_size and a.groups == b.groups and a.out_channels <= b.out_channels
            and a.in_channels // a.groups <= b.in_channels // b.groups)


def test_resnet18_lender_choices_are_exactly_the_earlier_convs_that_fit(resnet18_space):
    import torchvision

    # torchvision's BasicBlock registers and runs conv1, conv2, downsample in that order
    convs = [(n, m) for n, m in torchvision.models.resnet18(num_classes=10).named_modules()
             if isinstance(m, nn.Conv2d)]
    expected = {}
    for k, (name, conv) in enumerate(convs):
        lenders = [n for n, m in convs[1:k] if _fits(m, conv)]  # convs[0] faces the image
        if lenders:
            expected[f"lender.{name}"] = ("none", *lenders)
    got = {n: k.choices for n, k in resnet18_space.knobs.items() if n.startswith("lender.")}
    assert got == expected
    # every conv but conv1, layer1.0.conv1 (only the stem is earlier) and layer2.0.downsample.0 (first 1x1)
    assert len(got) == 17
    assert got["lender.layer3.0.downsample.0"] == ("none", "layer2.0.downsample.0")
    # equal-shape groups of >= 2 convs may mix a bank: (64,64), (128,128), (256,256), (512,512)
    assert sorted(n for n in resnet18_space.knobs if n.startswith("share.")) == \
        ["share.g1", "share.g3", "share.g6", "share.g9"]


def test_user_file_model_knobs_follow_execution_order_not_attributes():
    space = _space(TINY, budget="20k", dataset="digits")
    graph = space.layout().graph
    # shortcut is the first attribute but runs after block.6; unused never runs
    assert [c.name for c in graph.convs] == ["stem", "block.0", "block.3", "block.6", "shortcut", "tail"]
    assert graph.unused == ("unused",)
    assert space.layout().plain == {"unused": "never called by the forward pass"}
    lenders = {n: k.choices for n, k in space.knobs.items() if n.startswith("lender.")}
    # block.3 is depthwise (groups 16): no earlier conv has its groups; the stem faces the image
    assert lenders == {"lender.block.6": ("none", "block.0"), "lender.tail": ("none", "block.0", "block.6")}
    assert space.plain_params() == 26_634
    # the stem was given the dataset's 1 channel by the class's own in_channels argument
    assert graph.convs[0].in_ == 1


def test_resnet18_at_1m_keeps_its_shape_and_flops(resnet18_space):
    plain = build_model({"base": "external", "kwargs": {"source": RESNET18}}, 10, 3)
    assert count_params(plain) == resnet18_space.plain_params() == 11_181_642
    plain_flops = count_flops(plain, (3, 32, 32))
    seen = set()
    for seed in range(3):
        solution = resnet18_space.solve(resnet18_space.sample(seed), 1_000_000, "cifar10")
        assert 970_000 <= solution.params <= 1_000_000
        model = build_model(solution.model_config, 10, 3)
        assert count_params(model) == solution.params
        assert count_physical_params(model) == 11_181_642
        assert count_flops(model, (3, 32, 32)) == plain_flops
        assert [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d)] == \
            [tuple(m.weight.shape) for m in plain.modules() if isinstance(m, nn.Conv2d)]
        seen.add(str(solution.model_config["plan"]))
    assert len(seen) == 3


def test_a_point_without_sharing_at_the_plain_count_is_the_plain_model(resnet18_space):
    point = {n: k.choices[0] for n, k in resnet18_space.knobs.items()}  # none / own / rank 1 / swish
    solution = resnet18_space.solve(point, 11_181_642, "cifar10")
    assert solution.params == 11_181_642 and solution.model_config["plan"]["layers"] == {}


def test_lenders_and_banks_the_budget_needs_are_kept():
    space = _space(RESNET18, budget="1M", dataset="cifar10")
    point = {n: k.choices[0] for n, k in space.knobs.items()}
    point["lender.layer4.1.conv2"] = "layer4.1.conv1"
    point["share.g6"] = "bank"
    plan = space.solve(point, 1_000_000).model_config["plan"]
    assert plan["layers"]["layer4.1.conv2"] == {"borrow": "layer4.1.conv1"}
    assert {plan["layers"][n]["bank"] for n in ("layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2")} == {"g6"}
    assert plan["banks"]["g6"]["rank"] == 1


def test_grouped_lender_knobs_for_many_convs():
    space = _space(RESNET18, knobs={"lender": "grouped"})
    lenders = {n: k.choices for n, k in space.knobs.items() if n.startswith("lender.")}
    assert lenders["lender.g1"] == ("none", "self")  # the four (64, 64) convs: later ones tile the first
    # (512, 512): the first conv of every earlier 3x3 group (all fit), or its own first
    assert lenders["lender.g9"] == ("none", "self", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2",
                                    "layer3.0.conv1", "layer3.0.conv2", "layer4.0.conv1")
    point = {n: k.choices[0] for n, k in space.knobs.items()}
    point["lender.g9"] = "self"
    plan = space.solve(point, 2_000_000).model_config["plan"]
    assert [n for n, r in plan["layers"].items() if r.get("borrow") == "layer4.0.conv2"] == \
        ["layer4.1.conv1", "layer4.1.conv2"]


def test_mobilenet_v2_depthwise_convs_tile_in_whole_groups():
    space = _space("torchvision.models:mobilenet_v2", budget="500k", dataset="cifar10")
    assert len(space.layout().graph.convs) == 52
    solution = space.solve(space.sample(0), 500_000)
    assert 485_000 <= solution.params <= 500_000
    layout = space.layout()
    for c in layout.graph.convs:
        rule = solution.model_config["plan"]["layers"].get(c.name, {})
        if c.groups > 1 and "own" in rule:
            assert rule["own"][1] == 1 and rule["own"][0] % c.out_per_group == 0
    plain = _space("torchvision.models:mobilenet_v2", knobs={"grouped": "plain", "lender": "none"})
    assert sum("grouped conv" in why for why in plain.layout().plain.values()) == 17


def test_model_space_round_trips_and_defaults():
    space = _space(TINY, budget="20k", dataset="digits")
    assert space.to_dict()["knobs"] == DEFAULT_KNOBS and space.to_dict()["model"] == TINY
    again = SearchSpace.from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict() and set(again.knobs) == set(space.knobs)
    assert smallest_candidate(space, "digits") == space.smallest_params("digits")


@pytest.mark.parametrize("data, message", [
    ({"model": "nosuchmodule_xyz:net"}, "cannot import module 'nosuchmodule_xyz'"),
    ({"model": f"{DATA / 'tiny_net.py'}:not_a_model"}, "returned dict, not a torch.nn.Module"),
    ({"model": f"{DATA / 'tiny_net.py'}:NoConvs"}, "has no nn.Conv2d layers: nothing to repeat"),
    ({"model": f"{DATA / 'tiny_net.py'}:Missing"}, "has no 'Missing'"),
    ({"model": "resnet18"}, "expected module:callable"),
    ({"model": TINY, "knobs": {"lender.tail": {"choices": ["none", "stem"]}}}, "'stem' is not one of"),
    ({"model": TINY, "family": "vgg"}, "either a model (model:) or a family"),
])
def test_bad_model_specs_are_one_line_user_errors(data, message):
    with pytest.raises(UserError, match=None) as info:
        SearchSpace.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------- built-in families unchanged
def _meta_count(build) -> int:
    with torch.device("meta"):
        return count_params(build())


def test_rep_vgg6_is_still_a_point_of_vgg11_shape_with_its_count():
    space = load_space("vgg11-shape")
    point = {name: "none" for name in space.knobs if name.startswith("lender.")}
    point["map"] = "swish"
    for borrower, lender in REP_VGG_BORROWS[6].items():
        point[f"lender.{(borrower - 1) // 2}.{(borrower - 1) % 2}"] = f"{(lender - 1) // 2}.{(lender - 1) % 2}"
    expected = _meta_count(lambda: create_model("rep_vgg6"))
    assert expected == 568_746
    solution = space.solve(point, expected, "cifar10")
    assert solution.params == expected
    assert RepetitionPlan.from_dict(solution.model_config["plan"]).to_dict() == model_spec("rep_vgg6").plan.to_dict()


def test_rep_wrn16_4_is_still_a_point_of_wrn16_shape_with_its_count():
    space = load_space("wrn16-shape")
    point = {name: "none" for name in space.knobs if name.startswith("lender.")}
    point.update(map="swish", widen=4, full_source="plain")
    expected = _meta_count(lambda: create_model("rep_wrn16_4"))
    assert expected == 183_498
    solution = space.solve(point, expected, "cifar10")
    assert solution.params == expected
    assert RepetitionPlan.from_dict(solution.model_config["plan"]).to_dict() == \
        model_spec("rep_wrn16_4").plan.to_dict()
    assert type(space) is SearchSpace and not isinstance(space, ModelSpace)


def test_the_external_base_is_buildable_but_not_listed():
    from repnas.spaces import list_models

    assert "external" not in list_models() and "rep_vgg6" in list_models()
    with pytest.raises(UserError, match=r"needs kwargs\.source"):
        build_model({"base": "external"})


# --------------------------------------------------------------- the command line
def test_search_model_dry_run_shows_five_candidates_filling_1m_at_resnet18s_shape(capsys):
    import re

    from repnas.cli import main

    assert main(["search", "--model", RESNET18, "--dataset", "cifar10", "--budget", "1M", "--dry-run", "5"]) == 0
    out = capsys.readouterr().out
    reference = re.search(r"plain torchvision.models:resnet18: ([\d,]+) params, FLOPs ([\d,]+) per image", out)
    assert reference and reference.group(1) == "11,181,642"
    plain_flops = int(reference.group(2).replace(",", ""))
    points = re.findall(r"^\[\d\] (.*)$", out, re.M)
    params = [int(p.replace(",", "")) for p in re.findall(r"^    params ([\d,]+) ", out, re.M)]
    flops = [int(f.replace(",", "")) for f in re.findall(r"FLOPs ([\d,]+) per image \(2", out)]
    physical = re.findall(r"physical widths (\[.*\])", out)
    assert len(points) == len(set(points)) == 5
    assert len(params) == 5 and all(970_000 <= p <= 1_000_000 for p in params)
    assert flops == [plain_flops] * 5
    import torchvision

    widths = [m.out_channels for m in torchvision.models.resnet18().modules() if isinstance(m, nn.Conv2d)]
    assert physical == [str(widths)] * 5


@pytest.mark.parametrize("argv, message", [
    (["--model", "nosuchmodule_xyz:net"], "cannot import module 'nosuchmodule_xyz'"),
    (["--model", f"{DATA / 'tiny_net.py'}:not_a_model"], "returned dict, not a torch.nn.Module"),
    (["--model", f"{DATA / 'tiny_net.py'}:NoConvs"], "has no nn.Conv2d layers"),
    (["--model", TINY, "--dataset", "digits", "--budget", "5k"],
     "budget 5,000 is below the smallest candidate of space 'TinyNet' on digits (10,077 params); "
     "use --budget 10,077 or more"),
    (["--model", TINY, "--space", "quick"], "give --space or --model, not both"),
    (["--stem", "conv1", "--space", "quick"], "--model-kwargs, --stem and --head go with --model"),
])
def test_bad_model_specs_exit_2_with_one_line(argv, message, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "repnas", "search", *argv, "--out", str(out), "--trials", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("repnas: error: ") and message in lines[0]
    assert not out.exists()


def test_timm_spec_without_timm_is_one_line():
    pytest.importorskip("torch")
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"^model 'timm:resnet18': timm is not installed \(pip install timm\)$"):
            SearchSpace.from_dict({"model": "timm:resnet18"})
    else:
        space = SearchSpace.from_dict({"model": "timm:resnet18", "dataset": "cifar10"})
        assert space.plain_params() == 11_181_642


def test_a_space_yaml_names_a_model_with_stem_head_and_kwargs(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny-wide\nmodel: {TINY}\nmodel_kwargs: {{width: 8}}\nstem: stem\nhead: fc\n"
                    "budget: 5k\ndataset: digits\nknobs:\n  lender: per_conv\n  map: linear\n"
                    "  lender.tail: {choices: [none, block.6]}\n")
    space = load_space(path)
    assert isinstance(space, ModelSpace) and space.name == "tiny-wide"
    assert space.plain_params() == 8 * 9 + 8 * 8 * 9 + 8 * 9 + 16 * 8 * 9 + 16 * 8 + 16 * 16 * 9 + \
        (16 * 16 * 9 + 16) + 2 * (8 + 8 + 16) + 16 * 10 + 10
    assert space.knobs["lender.tail"].choices == ("none", "block.6") and space.fixed["map"] == "linear"
    point = {n: k.choices[-1] for n, k in space.knobs.items()}
    # at 4k the two borrows leave the model under budget even with full sources: tail's is released
    released = space.solve(point, 4_000)
    assert released.model_config["plan"]["layers"]["tail"] == {"own": [10, 10]}
    assert "released 1 borrow(s)/bank(s) the budget did not need: tail" in released.notes
    solution = space.solve(point, 3_000)
    assert solution.model_config["plan"]["layers"]["tail"] == {"borrow": "block.6"}
    assert solution.model_config["plan"]["layers"]["block.6"] == {"borrow": "block.0"}
    assert solution.model_config["plan"]["map"] == "linear" and solution.params == 2_950


@pytest.mark.parametrize("argv, message", [
    (["describe", "--model", "nosuchmodule_xyz:net"], "cannot import module 'nosuchmodule_xyz'"),
    (["describe", "--plan", "plan.yaml"], "--plan, --model-kwargs, --stem and --head go with --model SPEC"),
    (["describe", "rep_vgg6", "--model", TINY], "give MODEL or --model SPEC, not both"),
    (["describe", "--model", TINY, "--plan", "missing.yaml"], "--plan missing.yaml: No such file or directory"),
])
def test_describe_model_errors_are_one_line(argv, message, capsys):
    from repnas.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]


def test_describe_model_with_a_plan_file(tmp_path, capsys):
    import json

    from repnas.cli import main

    plan = tmp_path / "plan.yaml"
    plan.write_text("layers:\n  tail: {borrow: block.6}\n  block.0: {own: [8, 8]}\n")
    assert main(["describe", "--model", TINY, "--dataset", "digits", "--plan", str(plan), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["tail"]["source"] == "borrow:block.6 (32, 16)" and rows["block.0"]["source"] == "own (8, 8)"
    assert out["physical_params"] == 26_634
    # tail's 32x32x3x3 weight is replaced by 2 x (1x2 tiles) scalars; block.0's 16x16 by an 8x8 source + 2x2 tiles
    assert out["params"] == 26_634 - 9_216 + 2 * 2 - (16 * 16 * 9 - 8 * 8 * 9) + 2 * 4
