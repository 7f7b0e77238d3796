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
    assert count_physical_params(model) == count_params(built(f"wrn16_{k}"))


@pytest.mark.parametrize(("k", "expected"), [(4, 2.75e6), (8, 11.0e6)])
def test_plain_wrn_sizes_match_paper(k, expected):
    assert abs(count_params(built(f"wrn16_{k}")) - expected) <= 0.01 * expected


def test_rep_wrn_tiles_width_one_shapes():
    layers = spaces.model_spec("rep_wrn16_4").plan.layers
    assert layers["layer1.0.conv1"].own == (16, 16)  # fed by the 16-channel stem: r1 = 1
    assert layers["layer1.0.shortcut.0"].own == (16, 16)
    assert layers["layer2.0.conv1"].own == (32, 16)
    assert layers["layer3.1.conv2"].own == (64, 64)
    assert len(layers) == 15  # 12 block convs + 3 shortcuts; the stem stays plain
    assert spaces.model_spec("rep_wrn16_1").plan.layers == {}  # width 1: nothing to tile


def test_cifar_resnets():
    counts = [count_params(built(f"resnet{d}")) for d in (20, 32, 56)]
    assert counts[0] < counts[1] < counts[2]
    # He et al.'s ResNet-20 has 0.27M parameters (option A); option-B projections add 2,752
    assert counts[0] == 272_474
    convs = [m for m in built("resnet56").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 27 + 2  # stem, 27 blocks, two projection shortcuts


def test_rotmnist_cnn_and_rep_cnn():
    base = built("cnn_rotmnist")
    # convs 1*22*49 + (22*33 + 33*45 + 45*45 + 45*67 + 67*90)*25 = 333,103; BN 604;
    # head 90*64+64 + 128 + 64*10+10
    assert count_params(base) == 333_103 + 604 + 5_824 + 128 + 650
    assert next(base.modules()).features[0].in_channels == 1  # rot-MNIST is grey
    for n, widths in ((4, (64, 96, 128, 128, 192, 256)), (8, (88, 136, 184, 184, 272, 360)),
                      (16, (128, 192, 256, 256, 384, 512))):
        rep = built(f"rep_cnn_c{n}")
        convs = [m for m in rep.modules() if isinstance(m, nn.Conv2d)]
        assert tuple(c.out_channels for c in convs) == widths
        sources = [rep_.bank.source_shape[:2] for _, _, rep_ in repeated_layers(rep)]
        assert [tuple(s) for s in sources] == [(22, 1), (33, 22), (45, 33), (45, 45), (67, 45), (90, 67)]
        # "about the same parameter count": only BN, scalars and the head's input grow
        assert count_params(base) < count_params(rep) < 1.1 * count_params(base)


@needs_e2cnn
@pytest.mark.parametrize(("n", "width"), [(4, 256), (8, 360), (16, 512)])
def test_gcnn_widths_and_size(n, width):
    model = built(f"gcnn_c{n}")
    assert model.features.out_type.size == width
    assert abs(count_params(model) - 300_000) <= 0.05 * 300_000
    assert spaces.model_spec(f"gcnn_c{n}").plan is None


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
DEFAULTS_OF = {"vgg": "vgg11", "wrn": "wrn16_1", "cifar_resnet": "resnet20", "rot_cnn": "cnn_rotmnist",
               "gcnn": "gcnn_c4"}


@pytest.mark.parametrize(("base", "family"), sorted(DEFAULTS_OF.items()))
def test_base_defaults_are_a_family(base, family):
    spec = spaces.model_spec(family)
    assert spec.base == base and spec.plan is None
    params = inspect.signature(_base_builder(base)).parameters
    for key, value in spec.base_kwargs.items():
        assert list(params[key].default) == value if isinstance(value, list) else params[key].default == value


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_materialize_gives_the_same_outputs(name):
    if "gcnn" in name and not HAS_E2CNN:
        pytest.skip("e2cnn is not installed")
    model = built(DEFAULTS_OF.get(name, name))
    _randomize(model)
    model.eval()
    in_channels = spaces.dataset_info(spaces.default_dataset(name)).in_channels
    x = torch.randn(2, in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    plain = materialize(model).eval()
    assert not list(repeated_layers(plain))
    assert count_params(plain) == count_physical_params(model)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max().item() <= 1e-5


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
