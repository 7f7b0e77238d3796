"""Model families: exact parameter counts of PAPER.md, specs, and materialize == repeated."""

from __future__ import annotations

import importlib.util
import inspect
import sys

import pytest
import torch
from torch import nn

from repnas import spaces
from repnas.errors import UserError
from repnas.rescale import count_params, count_physical_params, materialize, repeated_layers
from repnas.spaces._registry import _base_builder

HAS_E2CNN = importlib.util.find_spec("e2cnn") is not None
needs_e2cnn = pytest.mark.skipif(not HAS_E2CNN, reason="e2cnn is not installed")

#: PAPER.md's table: N -> (VGG-N C10, RepVGG-N C10, VGG-N C100, RepVGG-N C100).
PAPER_VGG = {
    4: (114_378, 126_534, 125_988, 172_704),
    5: (262_218, 273_914, 273_828, 320_084),
    6: (559_178, 568_746, 582_308, 614_916),
    7: (1_149_770, 1_158_562, 1_172_900, 1_204_732),
    8: (2_333_514, 2_338_150, 2_379_684, 2_384_320),
    9: (4_694_346, 4_697_422, 4_740_516, 4_743_592),
    10: (7_055_178, 7_056_714, 7_101_348, 7_102_884),
    11: (9_416_010, None, 9_462_180, None),
}
#: PAPER.md: the authors' RepWRN-16-k counts on CIFAR-10.
PAPER_REP_WRN = {1: 175_802, 4: 183_498, 8: 194_042, 10: 199_626}
#: the authors' plain WRN-16-k (no conv biases) on CIFAR-10 (issue 11).
AUTHORS_WRN = {1: 175_258, 2: 692_122, 4: 2_749_786, 8: 10_963_162, 10: 17_118_874}
#: the authors' rot-MNIST models (issue 11): CNN, RepCNN-C_N and G-CNN C_N.
AUTHORS_ROTMNIST = {"cnn_rotmnist": 340_309, "rep_cnn_c4": 352_987, "rep_cnn_c8": 360_963,
                    "rep_cnn_c16": 372_179, "gcnn_c4": 304_154, "gcnn_c8": 305_098, "gcnn_c16": 301_746}

_cache: dict[tuple[str, int], nn.Module] = {}


def built(name: str, num_classes: int = 10) -> nn.Module:
    """Each model is built once per test session (rep models cost a second or two on CPU)."""
    key = (name, num_classes)
    if key not in _cache:
        _cache[key] = spaces.create_model(name, num_classes=num_classes)
    return _cache[key]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _cache.clear()


VGG_CASES = [
    (f"{prefix}vgg{n}", classes, counts[column + (0 if classes == 10 else 2)])
    for n, counts in PAPER_VGG.items()
    for column, prefix in enumerate(("", "rep_"))
    for classes in (10, 100)
    if counts[column] is not None
]


@pytest.mark.parametrize(("name", "classes", "expected"), VGG_CASES)
def test_vgg_counts_match_paper_table(name, classes, expected):
    model = built(name, classes)
    assert count_params(model) == expected
    # every RepVGG-N is VGG11-shaped once materialized
    if name.startswith("rep_"):
        assert count_physical_params(model) == PAPER_VGG[11][0 if classes == 10 else 2]


def test_rep_vgg6_parts_add_up_as_paper_says():
    """556,608 (L1..L5 + BN) + 96 scalars + 2,304 biases + 4,608 BN (L6..L10) + 5,130 Linear."""
    model = built("rep_vgg6")
    reps = {name: rep for name, _, rep in repeated_layers(model)}
    scalars = sum(rep.n_scalars() for rep in reps.values())
    assert scalars == 96
    assert count_params(model) == 556_608 + 96 + 2_304 + 4_608 + 5_130
    borrows = {n: r.borrow for n, r in spaces.model_spec("rep_vgg6").plan.layers.items()}
    # L6 <- L3, L7 <- L4, L8 <- L5, L9 <- L4, L10 <- L5 (VGG11 conv names)
    assert borrows == {"features.17": "features.7", "features.21": "features.10",
                       "features.24": "features.14", "features.28": "features.10",
                       "features.31": "features.14"}


@pytest.mark.parametrize(("k", "expected"), sorted(PAPER_REP_WRN.items()))
def test_rep_wrn_counts_match_authors(k, expected):
    model = built(f"rep_wrn16_{k}")
    assert abs(count_params(model) - expected) <= 0.01 * expected
    assert count_params(model) == expected  # our block reproduces the authors' exactly
    # materialized: the plain WRN-16-k plus the repeated convs' biases: 4 (5 with layer1's shortcut,
    # which k = 1 lacks), 5 and 5 convs of 16k, 32k and 64k channels
    biases = k * (16 * (4 + (k > 1)) + 32 * 5 + 64 * 5)
    assert count_physical_params(model) == AUTHORS_WRN[k] + biases


@pytest.mark.parametrize(("k", "expected"), sorted(AUTHORS_WRN.items()))
def test_plain_wrn_counts_match_authors(k, expected):
    with torch.device("meta"):  # counts only: WRN-16-10 has 17M parameters
        model = spaces.create_model(f"wrn16_{k}")
    assert count_params(model) == expected
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 15 + (k > 1) and all(c.bias is None for c in convs)  # k = 1: no layer1 shortcut


def test_rep_wrn_tiles_width_one_shapes():
    layers = spaces.model_spec("rep_wrn16_4").plan.layers
    assert layers["layer1.0.conv1"].own == (16, 16)  # fed by the 16-channel stem: r1 = 1
    assert layers["layer1.0.shortcut.0"].own == (16, 16)
    assert layers["layer2.0.conv1"].own == (32, 16)
    assert layers["layer3.1.conv2"].own == (64, 64)
    assert len(layers) == 15  # 12 block convs + 3 shortcuts; the stem stays plain
    # width 1 (no shortcut in layer1): nothing is tiled, but every conv is the authors' repeated conv
    # (an own source of the full shape: no scalars)
    plan = spaces.model_spec("rep_wrn16_1").plan
    assert len(plan.layers) == 14 and not any(rep.tiled for _, _, rep in repeated_layers(built("rep_wrn16_1")))
    assert (plan.remainder, plan.source_init, plan.bias_init) == ("paper", "small_xavier", "zeros")


def test_wrn_init_is_the_authors():
    """Stem kaiming-normal (fan_out), BN biases 0.01; the repeated convs: xavier sources, zero biases."""
    torch.manual_seed(0)
    model = built("rep_wrn16_4")
    stem = model.conv1.weight
    assert stem.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.15)  # fan_out = 16 * 3 * 3
    assert all(torch.all(m.bias == 0.01) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    conv = model.get_submodule("layer2.1.conv2")
    source = conv.parametrizations.weight[0].source()
    assert source.shape == (32, 32, 3, 3)
    assert source.std().item() == pytest.approx((6 / (64 * 9)) ** 0.5 / 3**0.5, rel=0.05)  # 0.0589
    assert not conv.bias.any()


def test_cifar_resnets():
    counts = [count_params(built(f"resnet{d}")) for d in (20, 32, 56)]
    assert counts[0] < counts[1] < counts[2]
    # He et al.'s ResNet-20 has 0.27M parameters (option A); option-B projections add 2,752
    assert counts[0] == 272_474
    convs = [m for m in built("resnet56").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 27 + 2  # stem, 27 blocks, two projection shortcuts


def _feature_map_sizes(model: nn.Module, conv_type: type) -> list[int]:
    """Spatial width of every conv's output on one 29x29 rot-MNIST image."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(getattr(out, "tensor", out).shape[-1]))
             for m in model.modules() if isinstance(m, conv_type)]
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 29, 29))
    for h in hooks:
        h.remove()
    return sizes


def test_rotmnist_cnn_and_rep_cnn():
    base = built("cnn_rotmnist")
    # convs 1*22*49 + (22*33 + 33*45 + 45*45 + 45*67 + 67*90)*25 = 333,103 (no bias); BN 604;
    # head 90*64+64 + 128 + 64*10+10
    assert count_params(base) == 333_103 + 604 + 5_824 + 128 + 650 == AUTHORS_ROTMNIST["cnn_rotmnist"]
    assert next(base.modules()).features[0].in_channels == 1  # rot-MNIST is grey
    # the authors' padding (conv1 pads 1, conv6 pads 0) and floor pools
    assert _feature_map_sizes(base, nn.Conv2d) == [25, 25, 12, 12, 6, 2]
    for n, widths in ((4, (64, 96, 128, 128, 192, 256)), (8, (90, 135, 181, 181, 271, 362)),
                      (16, (128, 192, 256, 256, 384, 512))):
        rep = built(f"rep_cnn_c{n}")
        assert count_params(rep) == AUTHORS_ROTMNIST[f"rep_cnn_c{n}"]
        convs = [m for m in rep.modules() if isinstance(m, nn.Conv2d)]
        assert tuple(c.out_channels for c in convs) == widths
        assert all(c.bias is not None and not c.bias.any() for c in convs)  # the authors': zero biases
        sources = [rep_.bank.source_shape[:2] for _, _, rep_ in repeated_layers(rep)]
        assert [tuple(s) for s in sources] == [(22, 1), (33, 22), (45, 33), (45, 45), (67, 45), (90, 67)]
        assert {rep_.remainder for _, _, rep_ in repeated_layers(rep)} == {"paper"}
    assert _feature_map_sizes(built("rep_cnn_c8"), nn.Conv2d) == [25, 25, 12, 12, 6, 2]


@needs_e2cnn
@pytest.mark.parametrize(("n", "width"), [(4, 256), (8, 360), (16, 512)])
def test_gcnn_widths_and_size(n, width):
    model = built(f"gcnn_c{n}")
    assert model.features.out_type.size == width
    assert count_params(model) == AUTHORS_ROTMNIST[f"gcnn_c{n}"]
    assert spaces.model_spec(f"gcnn_c{n}").plan is None


@needs_e2cnn
def test_gcnn_pools_space_before_the_group():
    """The authors' order: average over space (2x2 -> 1x1 on 29x29), then max over the rotations."""
    from e2cnn import nn as enn

    model = built("gcnn_c4")
    assert _feature_map_sizes(model, enn.R2Conv) == [25, 25, 12, 12, 6, 2]
    seen: list[tuple[int, ...]] = []
    hook = model.group_pool.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].tensor.shape)))
    with torch.no_grad():
        model(torch.randn(1, 1, 29, 29))
    hook.remove()
    assert seen == [(1, 256, 1, 1)]


@needs_e2cnn
def test_gcnn_c4_is_invariant_to_quarter_turns():
    model = built("gcnn_c4").eval()
    x = torch.randn(2, 1, 28, 28)  # 28 -> 14 -> 7: every pool window maps onto a pool window
    with torch.no_grad():
        y, y_rot = model(x), model(torch.rot90(x, 1, dims=(2, 3)))
    assert torch.allclose(y, y_rot, atol=1e-4)


def _randomize(model: nn.Module) -> None:
    """BN running stats and tile scalars away from their init, so equivalence is not trivial."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        for _, _, rep in repeated_layers(model):
            for p in (rep.alpha, rep.beta):
                if p is not None:
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))


MODEL_NAMES = spaces.list_models()
#: parametric bases whose defaults are exactly a named family (checked below); built once, as that.
#: (``wrn``'s default has conv biases, as RepWRN's; the plain ``wrn16_1`` has none: built separately.)
DEFAULTS_OF = {"vgg": "vgg11", "cifar_resnet": "resnet20", "rot_cnn": "cnn_rotmnist", "gcnn": "gcnn_c4"}


@pytest.mark.parametrize(("base", "family"), sorted(DEFAULTS_OF.items()))
def test_base_defaults_are_a_family(base, family):
    spec = spaces.model_spec(family)
    assert spec.base == base and spec.plan is None
    params = inspect.signature(_base_builder(base)).parameters
    for key, value in spec.base_kwargs.items():
        assert list(params[key].default) == value if isinstance(value, list) else params[key].default == value


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_materialize_gives_the_same_outputs_and_gradients_reach_every_parameter(name):
    if "gcnn" in name and not HAS_E2CNN:
        pytest.skip("e2cnn is not installed")
    model = built(DEFAULTS_OF.get(name, name))
    _randomize(model)
    model.eval()
    info = spaces.dataset_info(spaces.default_dataset(name))
    size = 24 if spaces.default_dataset(name) == "rotmnist" else 8  # the smallest the authors' rot-MNIST nets take
    x = torch.randn(2, info.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    plain = materialize(model).eval()
    assert not list(repeated_layers(plain))
    assert count_params(plain) == count_physical_params(model)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max().item() <= 1e-5
    if not list(repeated_layers(model)):
        return  # a plain model's gradients are torch's own business
    model.train()
    model.zero_grad()
    model(x).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    model.zero_grad(set_to_none=True)
    assert not missing, missing


def test_every_family_is_base_plus_plan():
    for name in MODEL_NAMES:
        spec = spaces.model_spec(name)
        assert spec.base in MODEL_NAMES
        assert spaces.model_spec(spec.base).plan is None
    config = spaces.model_spec("rep_vgg6").to_model_config()
    assert config["base"] == "vgg" and config["plan"]["layers"]["features.31"] == {"borrow": "features.14"}
    assert count_params(spaces.build_model(config, num_classes=10, in_channels=3)) == 568_746


def test_build_model_forms():
    assert count_params(spaces.build_model({"family": "vgg4"}, 10, 3)) == 114_378
    assert count_params(spaces.build_model({"family": "vgg", "kwargs": {"cfg": [8, "M", 16]}}, 10, 3)) == (
        3 * 8 * 9 + 8 + 16 + 8 * 16 * 9 + 16 + 32 + 16 * 10 + 10)
    small = {"base": "vgg", "kwargs": {"cfg": [8, 16, "M", 16]},
             "plan": {"layers": {"features.3": {"own": [8, 8]}, "features.7": {"borrow": "features.3"}}}}
    model = spaces.build_model(small, num_classes=2, in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2)
    assert len(list(repeated_layers(model))) == 2


@pytest.mark.parametrize(("config", "message"), [
    ({"family": "rep_vgg66"}, "did you mean rep_vgg6"),
    ({"family": "vgg6", "plan": {}}, "unknown key"),
    ({"base": "vgg", "family": "vgg6"}, "exactly one"),
    ({"kwargs": {}}, "exactly one"),
    ({"family": "vgg", "kwargs": {"depth": 3}}, "bad arguments"),
    ({"base": "rep_vgg6", "plan": {"layers": {}}}, "already has a plan"),
    ("nonsense_net", "unknown model"),
    ({"family": "vgg6", "kwargs": {"num_classes": 3}}, "dataset decides"),
])
def test_bad_model_configs_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        spaces.build_model(config, num_classes=10, in_channels=3)


def test_registry_helpers():
    assert spaces.list_models("vgg*")[:3] == ["vgg", "vgg4", "vgg5"]
    assert spaces.list_models("rep_wrn16_*") == [f"rep_wrn16_{k}" for k in (1, 2, 4, 8, 10)]
    assert spaces.default_dataset("rep_cnn_c8") == "rotmnist"
    assert spaces.default_dataset("wrn16_4") == "cifar10"
    assert spaces.dataset_info("cifar100").input_shape == (3, 32, 32)
    with pytest.raises(UserError, match="cifar10"):
        spaces.dataset_info("cifar-10")
    with pytest.raises(ValueError, match="already registered"):
        spaces.register_family("vgg6", base="vgg")


def test_gcnn_without_e2cnn_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "e2cnn", None)  # makes `import e2cnn` raise ImportError
    with pytest.raises(UserError, match=r"gcnn_c8 needs e2cnn: pip install repnas\[equivariant\]"):
        spaces.create_model("gcnn_c8")
