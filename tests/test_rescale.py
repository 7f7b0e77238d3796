"""The repetition method itself: tiling math, plans, rescale/materialize, accounting, learning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from repnas.rescale import (
    RepetitionPlan,
    count_params,
    count_physical_params,
    describe,
    layer_table,
    materialize,
    repeated_layers,
    rescale,
)


def reference_weight(source: torch.Tensor, out: int, in_: int, alpha, beta) -> torch.Tensor:
    """PAPER.md's construction written as loops over tiles: whole tiles, then the output remainder
    (first e0 filters once more through the extra pair), then the input remainder (all rows)."""
    o, i = source.shape[:2]
    r0, r1, e0, e1 = out // o, in_ // i, out % o, in_ % i

    def f(w, k):
        return alpha[k] * w * torch.sigmoid(-beta[k] * w)

    rows = []
    for a in range(r0):
        rows.append(torch.cat([f(source, a * r1 + b) for b in range(r1)], dim=1))
    tiled = torch.cat(rows, dim=0)  # (r0*o, r1*i)
    pure = source.repeat(r0 + 1, r1 + 1, 1, 1)
    k = r0 * r1
    if e0:
        tiled = torch.cat([tiled, f(pure[:e0, : r1 * i], k)], dim=0)
        k += 1
    if e1:
        tiled = torch.cat([tiled, f(pure[:out, :e1], k)], dim=1)
    return tiled


@pytest.mark.parametrize(
    ("source", "target"), [((4, 3), (8, 9)), ((4, 3), (10, 7)), ((5, 5), (5, 12)), ((3, 2), (3, 2))]
)
def test_tiling_matches_the_source_rule(source, target):
    """``remainder: source`` (plan version 1's rule, asked for explicitly)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(target[1], target[0], 3)
    model = rescale(nn.Sequential(conv), {"remainder": "source", "layers": {"0": {"own": list(source)}}})
    ((_, layer, rep),) = repeated_layers(model)
    src = rep.source().detach()
    if source == target:
        assert rep.alpha is None and rep.beta is None  # plain conv: no tiling, no scalars
        assert torch.equal(layer.weight, src)
        return
    expected = reference_weight(src, *target, rep.alpha.detach(), rep.beta.detach())
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-6, atol=1e-9)
    r0, r1, e0, e1 = rep.layout
    assert rep.alpha.numel() == r0 * r1 + (e0 > 0) + (e1 > 0)


def test_tiles_are_contiguous_blocks_of_the_source():
    conv = nn.Conv2d(6, 8, 1)
    model = rescale(nn.Sequential(conv), {"map": "none", "layers": {"0": {"own": [4, 3]}}})
    w = model[0].weight.detach()[:, :, 0, 0]
    src = w[:4, :3]
    for a in range(2):
        for b in range(2):
            assert torch.equal(w[a * 4 : (a + 1) * 4, b * 3 : (b + 1) * 3], src)


def test_exact_parameter_counts_of_a_hand_computed_plan():
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(128, 200, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
    )
    plan = {"layers": {"2": {"own": [48, 20]}, "4": {"borrow": "2"}}}
    repeated = rescale(model, plan)
    # conv0 plain 3*64*9+64; conv2 source 48*20*9 + bias 128 + 2*(2*3 + 2) scalars;
    # conv4 bias 200 + 2*(4*6 + 2) scalars (4 x 6 tiles, remainders on both axes)
    assert count_params(repeated) == 1792 + (8640 + 128 + 16) + (200 + 52)
    assert count_physical_params(repeated) == count_params(model)
    assert sum(row["params"] for row in layer_table(repeated)) == count_params(repeated)
    plain = materialize(repeated)
    assert sum(p.numel() for p in plain.parameters()) == count_params(model)


def test_linear_and_none_maps_count_their_scalars():
    model = nn.Sequential(nn.Conv2d(8, 8, 3))
    linear = rescale(model, {"map": "linear", "layers": {"0": {"own": [4, 4]}}})
    none = rescale(model, {"map": "none", "layers": {"0": {"own": [4, 4]}}})
    assert count_params(linear) == 4 * 4 * 9 + 8 + 4
    assert count_params(none) == 4 * 4 * 9 + 8


def test_identity_init_starts_as_pure_tiling():
    model = nn.Sequential(nn.Conv2d(6, 8, 3))
    torch.manual_seed(0)  # the authors' small_xavier source init draws; both draw the same
    swish = rescale(model, {"scalar_init": "identity", "layers": {"0": {"own": [4, 3]}}})
    torch.manual_seed(0)
    none = rescale(model, {"map": "none", "layers": {"0": {"own": [4, 3]}}})
    torch.testing.assert_close(swish[0].weight, none[0].weight)


def _resnet18_plans(model: nn.Module) -> dict[str, dict]:
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    width = {
        n: {"own": [max(1, m.out_channels // 2), max(1, m.in_channels // 4) if m.in_channels > 3 else 3]}
        for n, m in convs.items()
    }
    inter = {
        "layer2.1.conv2": {"borrow": "layer2.1.conv1"},
        "layer3.0.conv2": {"borrow": "layer2.1.conv1"},  # (256, 256) tiles a (128, 128) source
        "layer3.1.conv1": {"borrow": "layer3.0.conv2"},  # chain: resolves to layer2.1.conv1
        "layer4.1.conv2": {"borrow": "layer4.1.conv1"},  # same shape: plain sharing
        "layer4.0.downsample.0": {"borrow": "layer3.0.downsample.0"},
    }
    return {"width": {"layers": width}, "inter": {"layers": inter, "map": "linear"}}


@pytest.mark.parametrize("plan_name", ["width", "inter"])
def test_materialize_equals_repeated_on_torchvision_resnet18(plan_name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    plan = _resnet18_plans(model)[plan_name]
    repeated = rescale(model, plan)
    for m in repeated.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    repeated.eval()
    plain = materialize(repeated).eval()
    assert not list(repeated_layers(plain))
    assert all(type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (repeated(x) - plain(x)).abs().max().item()
    assert diff <= 1e-5
    assert count_physical_params(repeated) == sum(p.numel() for p in plain.parameters())
    assert count_physical_params(repeated) == count_params(model)
    assert count_params(repeated) < count_params(model)
    # materialize must not break the repeated model (it shares nothing with the copy)
    with torch.no_grad():
        assert (repeated(x) - plain(x)).abs().max().item() <= 1e-5


def test_gradients_reach_every_source_coefficient_and_scalar():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    plan = {
        "banks": {"b": {"out": 16, "in": 16, "rank": 3}},
        "layers": {
            "2": {"own": [16, 8]},
            "4": {"bank": "b"},
            "6": {"bank": "b", "map": "linear"},
            "8": {"borrow": "6"},
        },
    }
    repeated = rescale(model, plan)
    repeated(torch.randn(4, 3, 8, 8)).square().sum().backward()
    names = [n for n, p in repeated.named_parameters()]
    assert any("coefficients" in n for n in names) and any("alpha" in n for n in names)
    for name, p in repeated.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the bank is one tensor, shared: counted once
    banks = {id(rep.bank) for _, _, rep in repeated_layers(repeated) if rep.coefficients is not None}
    assert len(banks) == 1
    (row6,) = [r for r in layer_table(repeated) if r["name"] == "6"]
    assert row6["source"] == "bank:b (16, 16) r3"


def test_borrowing_from_a_plain_layer_keeps_its_count_and_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1))
    repeated = rescale(model, {"layers": {"1": {"borrow": "0"}}})
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(repeated[0](x), model[0](x))  # the lender is unchanged
    assert count_params(repeated) == count_params(model[0]) + 16 + 2 * 2 * 2


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"layers": {"1": {"own": [32, 4]}}}, r"'1'.*larger"),
        ({"layers": {"2": {"borrow": "0"}}}, r"'2'.*kernel"),
        ({"layers": {"features.9": {"own": [2, 2]}}}, r"'features.9'.*no nn.Conv2d"),
        ({"layers": {"0": {"borrow": "1"}, "1": {"borrow": "0"}}}, r"cycle"),
        ({"layers": {"1": {"borrow": "nope"}}}, r"'1'.*'nope'"),
        ({"layers": {"1": {"bank": "missing"}}}, r"'1'.*bank 'missing'"),
        ({"layers": {"1": {"own": [2, 2], "borrow": "0"}}}, r"'1'.*exactly one"),
        ({"layers": {"1": {"own": [2, -1]}}}, r"'1'.*positive"),
        ({"layers": {}, "extra": 1}, r"unknown keys"),
        ({"version": 3, "layers": {}}, r"version"),
        ({"version": 1, "remainder": "paper", "layers": {}}, r"remainder need version 2"),
        ({"remainder": "tiles", "layers": {}}, r"unknown remainder 'tiles'"),
        ({"layers": {"1": {"borrow": "0", "source_init": "physical"}}}, r"'1'.*source_init applies to an own"),
        ({"layers": {"1": {"own": [2, 2], "bias_init": "ones"}}}, r"'1'.*unknown bias_init"),
    ],
)
def test_bad_plans_raise_value_errors_naming_the_problem(plan, message):
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        rescale(model, plan, inplace=True)
    assert not list(repeated_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plan_round_trips_through_dict_and_yaml(tmp_path):
    plan = RepetitionPlan.from_dict(
        {
            "map": "linear",
            "scalar_init": "identity",
            "banks": {"b0": {"out": 8, "in": 4, "rank": 2}},
            "layers": {"a": {"own": [4, 2]}, "b": {"borrow": "a"}, "c": {"bank": "b0", "map": "swish"}},
        }
    )
    assert RepetitionPlan.from_dict(plan.to_dict()) == plan
    path = tmp_path / "plan.yaml"
    plan.to_yaml(path)
    assert RepetitionPlan.from_yaml(path) == plan
    with pytest.raises(ValueError, match="malformed YAML"):
        RepetitionPlan.from_yaml("layers: [unclosed\n")


def test_state_dict_loads_into_a_fresh_rescale_of_the_same_plan():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3))
    plan = {"layers": {"1": {"own": [4, 4]}, "2": {"borrow": "1"}}}
    a, b = rescale(base, plan), rescale(base, plan)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(a(x), b(x))


def test_describe_reports_flops_of_the_physical_shape():
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1, bias=False))
    repeated = rescale(model, {"layers": {"0": {"own": [2, 1]}}})
    info = describe(repeated, (2, 5, 5))
    assert info["flops"] == 2 * 8 * 2 * 9 * 25  # 2 x MACs of an 8x2x3x3 conv on 5x5
    assert info["params"] == 2 * 1 * 9 + 2 * 8  # source + 4x2 tiles x (alpha, beta)
    assert info["physical_params"] == 8 * 2 * 9


def test_a_repeated_cnn_learns_real_digits():
    """scikit-learn's bundled digits: a repeated CNN far above chance (10%) after a short training."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    base = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    model = rescale(base, {"layers": {"3": {"own": [8, 8]}, "7": {"borrow": "3"}}})
    assert count_params(model) < count_params(base) / 3
    epochs, batches = 10, -(-len(train) // 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * batches)
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train))].split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.93, accuracy  # seeds 0-2 measured 0.975-0.987; chance is 0.10


def test_flops_of_a_model_that_borrows_from_a_plain_layer():
    """A plain lender's weight is an untiled view of its bank: FlopCounterMode must still count it."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.Conv2d(4, 8, 3, padding=1, bias=False))
    repeated = rescale(model, {"layers": {"1": {"borrow": "0"}}})
    info = describe(repeated, (2, 4, 4))
    assert info["flops"] == 2 * (4 * 2 * 9 + 8 * 4 * 9) * 16
    assert info["physical_params"] == 4 * 2 * 9 + 8 * 4 * 9


def paper_rule_by_loops(source: torch.Tensor, out: int, in_: int, f) -> torch.Tensor:
    """The authors' remainder rule (issue 11), one weight position at a time, from its description
    alone: whole tile (a, b) is f_(a,b)(W); extra output row p is f_e0(f_(0,b)(W[p])) in column
    block b; extra input column q is f_e1(f_(a,0)(W[:, q])) in row block a; the corner carries three
    maps, f_e1(f_e0(f_(0,0)(W[p, q]))). ``f(w, pair)`` maps with scalar pair ``pair``: whole tiles
    are pairs a*r1 + b, then the output remainder's pair, then the input remainder's."""
    o, i = source.shape[:2]
    r0, r1, e0 = out // o, in_ // i, out % o
    pair_e0, pair_e1 = r0 * r1, r0 * r1 + (e0 > 0)
    weight = torch.empty(out, in_, *source.shape[2:], dtype=source.dtype)
    for x in range(out):
        for y in range(in_):
            extra_row, extra_col = x >= r0 * o, y >= r1 * i
            a = 0 if extra_row else x // o
            b = 0 if extra_col else y // i
            w = f(source[x % o if not extra_row else x - r0 * o, y % i if not extra_col else y - r1 * i],
                  a * r1 + b)
            if extra_row:
                w = f(w, pair_e0)
            if extra_col:
                w = f(w, pair_e1)
            weight[x, y] = w
    return weight


@pytest.mark.parametrize("scalar_map", ["swish", "linear"])
@pytest.mark.parametrize(("source", "target"), [((4, 3), (10, 7)), ((4, 3), (9, 6)), ((3, 5), (6, 12)),
                                                ((5, 4), (7, 4))])
def test_paper_remainder_rule_matches_an_independent_loop(source, target, scalar_map):
    """Remainders on both axes and the corner ((4, 3) -> (10, 7)), one axis only, and an input side
    that is not tiled at all ((5, 4) -> (7, 4): r1 = 1, e1 = 0)."""
    torch.manual_seed(0)
    model = rescale(nn.Sequential(nn.Conv2d(target[1], target[0], 3)),
                    {"version": 2, "map": scalar_map, "layers": {"0": {"own": list(source)}}})
    ((_, layer, rep),) = repeated_layers(model)
    assert rep.remainder == "paper"
    with torch.no_grad():  # scalars away from their init; beta large enough that the swish bends
        rep.alpha.copy_(torch.linspace(-1.5, 2.0, rep.alpha.numel()))
        if rep.beta is not None:
            rep.beta.copy_(torch.linspace(3.0, -2.0, rep.beta.numel()))
    alpha = rep.alpha.detach().double()
    beta = rep.beta.detach().double() if rep.beta is not None else None

    def f(w, pair):
        if beta is None:
            return alpha[pair] * w
        return alpha[pair] * w / (1 + torch.exp(beta[pair] * w))  # the authors' form of swish

    src = rep.source().detach().double() * 10  # weights of order 1: the map's curvature shows
    with torch.no_grad():
        rep.bank.templates.mul_(10)
    expected = paper_rule_by_loops(src, *target, f)
    torch.testing.assert_close(layer.weight.detach().double(), expected, rtol=1e-5, atol=1e-6)
    r0, r1, e0, e1 = rep.layout
    assert rep.alpha.numel() == r0 * r1 + (e0 > 0) + (e1 > 0)  # same scalars as the source rule
    if e0 and e1:  # the rules really differ where there are remainders
        source_rule = rescale(nn.Sequential(nn.Conv2d(target[1], target[0], 3)),
                              {"version": 2, "remainder": "source", "map": scalar_map,
                               "layers": {"0": {"own": list(source)}}})
        source_rule.load_state_dict(model.state_dict())
        whole = (slice(0, r0 * source[0]), slice(0, r1 * source[1]))
        torch.testing.assert_close(source_rule[0].weight[whole], layer.weight[whole])
        assert not torch.allclose(source_rule[0].weight, layer.weight)


def _remainder_model() -> nn.Module:
    """Convs with remainders on both axes, a borrow and a bank, BN after each (eval statistics matter)."""
    return nn.Sequential(
        nn.Conv2d(3, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(),
        nn.Conv2d(10, 14, 3, padding=1), nn.BatchNorm2d(14), nn.ReLU(),
        nn.Conv2d(14, 14, 3, padding=1), nn.BatchNorm2d(14), nn.ReLU(),
        nn.Conv2d(14, 9, 3, padding=1), nn.BatchNorm2d(9), nn.ReLU(),
        nn.Conv2d(9, 9, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


_OPTION_PLANS = [
    {"remainder": "paper"}, {"remainder": "source"},
    {"source_init": "small_xavier", "bias_init": "zeros"}, {"source_init": "physical", "bias_init": "default"},
    {"remainder": "source", "layers_override": {"3": {"remainder": "paper", "source_init": "physical"}}},
]


@pytest.mark.parametrize("options", _OPTION_PLANS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_materialize_and_gradients_hold_for_every_plan_option(options):
    options = dict(options)
    override = options.pop("layers_override", {})
    torch.manual_seed(0)
    layers = {"3": {"own": [4, 3]}, "6": {"bank": "b"}, "9": {"borrow": "3"}, "12": {"bank": "b"}}
    for name, extra in override.items():
        layers[name] = {**layers[name], **extra}
    plan = {"version": 2, **options, "banks": {"b": {"out": 4, "in": 4, "rank": 2}}, "layers": layers}
    repeated = rescale(_remainder_model(), plan)
    assert any(rep.layout[2] and rep.layout[3] for _, _, rep in repeated_layers(repeated))  # corners
    x = torch.randn(4, 3, 6, 6)
    repeated(x).square().sum().backward()  # train mode: BN batch statistics
    for name, p in repeated.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for m in repeated.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    repeated.eval()
    plain = materialize(repeated).eval()
    with torch.no_grad():
        assert (repeated(x) - plain(x)).abs().max().item() <= 1e-5
    assert count_physical_params(repeated) == sum(p.numel() for p in plain.parameters())


def test_source_and_bias_init_options():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(64, 128, 3), nn.Conv2d(128, 128, 3), nn.Conv2d(128, 256, 3))
    layers = {"0": {"own": [32, 64]}, "1": {"own": [64, 64]}, "2": {"borrow": "1"}}
    authors = rescale(base, {"version": 2, "layers": layers})
    today = rescale(base, {"version": 1, "layers": layers})
    # small_xavier: uniform with bound sqrt(6 / ((i + o) k^2)), so std = bound / sqrt(3)
    src = authors[1].parametrizations.weight[0].source()
    assert src.std().item() == pytest.approx((6 / (128 * 9)) ** 0.5 / 3**0.5, rel=0.05)
    assert src.abs().max().item() <= (6 / (128 * 9)) ** 0.5
    # physical: the top-left crop of the conv's own (PyTorch default) init
    assert torch.equal(today[1].parametrizations.weight[0].source(), base[1].weight[:64, :64])
    for name in ("0", "1", "2"):  # zeros for every layer the plan names, default otherwise
        assert not authors[int(name)].bias.any()
        assert torch.equal(today[int(name)].bias, base[int(name)].bias)
    per_layer = rescale(base, {"version": 2, "layers": {**layers, "1": {"own": [64, 64], "bias_init": "default",
                                                                        "source_init": "physical"}}})
    assert torch.equal(per_layer[1].bias, base[1].bias) and not per_layer[0].bias.any()
    assert torch.equal(per_layer[1].parametrizations.weight[0].source(), base[1].weight[:64, :64])


def test_version_1_documents_keep_their_meaning(tmp_path):
    v1 = {"version": 1, "map": "swish", "scalar_init": "xavier", "layers": {"a": {"own": [4, 2]}}}
    for data in (v1, RepetitionPlan.from_dict(v1).to_dict()):
        plan = RepetitionPlan.from_dict(data)
        assert (plan.remainder, plan.source_init, plan.bias_init) == ("source", "physical", "default")
        # written back it is a version-2 document that says the same explicitly
        written = plan.to_dict()
        assert written["version"] == 2 and written["remainder"] == "source"
        assert RepetitionPlan.from_dict(written) == plan
    v2 = RepetitionPlan.from_dict({"version": 2, "layers": {}})
    assert (v2.remainder, v2.source_init, v2.bias_init) == ("paper", "small_xavier", "zeros")
    # no version but a version-2 key: version 2
    assert RepetitionPlan.from_dict({"bias_init": "default", "layers": {}}).remainder == "paper"


def test_a_plan_without_version_is_the_authors_method():
    """A dict without ``version`` (the README's own example) meant version 1: new users got the old
    remainder rule, the physical-crop source init and default biases instead of the authors' method."""
    bare = RepetitionPlan.from_dict({"layers": {"a": {"own": [4, 2]}}})
    assert bare == RepetitionPlan.from_dict({"version": 2, "layers": {"a": {"own": [4, 2]}}})
    assert (bare.remainder, bare.source_init, bare.bias_init) == ("paper", "small_xavier", "zeros")


def _readme_plan_example() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "RepetitionPlan.from_dict" in b)
    return block.split("```")[0]


def test_readme_plan_example_builds_the_authors_layer():
    """The README's Python plan example, run as printed, builds what a ``version: 2`` plan builds:
    same parameter count, the authors' remainder rule, zero biases on repeated convs, the same weights."""
    from repnas.rescale import count_params

    code = _readme_plan_example()
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code.replace("print(", "(lambda *a: None)("), "README.md", "exec"), scope)
    layers = {"layer4.0.conv2": {"own": [128, 128]}, "layer4.1.conv1": {"borrow": "layer4.0.conv2"}}
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    v2 = rescale(model, RepetitionPlan.from_dict({"version": 2, "layers": layers}))
    readme = scope["repeated"]
    assert count_params(readme) == count_params(v2) == 6_610_570
    reps = {name: rep for name, _, rep in repeated_layers(readme)}
    assert {rep.remainder for rep in reps.values()} == {"paper"}
    for (name, conv, _), (name2, conv2, _) in zip(repeated_layers(readme), repeated_layers(v2), strict=True):
        assert name == name2
        assert torch.equal(conv.weight, conv2.weight)


def test_an_exported_version_1_run_config_still_builds_what_it_built():
    """Old exported run configs carry version-1 plans: the model they build is unchanged."""
    import yaml

    from repnas.spaces import build_model
    from repnas.train import RunConfig

    text = """
model:
  base: vgg
  kwargs: {cfg: [8, 12, M, 12]}
  plan: {version: 1, map: swish, scalar_init: xavier, layers: {features.3: {own: [5, 8]}}}
dataset: {name: digits}
"""
    config = RunConfig.from_dict(yaml.safe_load(text))
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=10, in_channels=1)
    torch.manual_seed(0)
    base = build_model({"base": "vgg", "kwargs": {"cfg": [8, 12, "M", 12]}}, num_classes=10, in_channels=1)
    ((_, conv, rep),) = repeated_layers(model)
    assert rep.remainder == "source" and rep.layout == (2, 1, 2, 0)
    assert torch.equal(conv.bias, base.features[3].bias)  # default bias, not zeros
    assert torch.equal(rep.source(), base.features[3].weight[:5, :8])  # physical init
    assert RunConfig.from_dict(config.to_dict()).model == config.model
