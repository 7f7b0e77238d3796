"""WideResNet-16-k and RepWRN-16-k of PAPER.md (widths 16k/32k/64k, 2 blocks per stage).

The block is the authors' (RepeatNet) one, not the WRN paper's pre-activation block:
post-activation conv-BN-ReLU and a 1x1 conv + BN shortcut where the shape changes; the stem conv
has no bias. As in the authors' code:

* ``wrn16_K`` (the plain width baseline) has no conv biases: 175,258 / 692,122 / 2,749,786 /
  10,963,162 / 17,118,874 parameters for K = 1, 2, 4, 8, 10 on CIFAR-10;
* ``rep_wrn16_K`` repeats every block conv and shortcut (the authors' repeated conv always has a
  bias): 175,802 / 183,498 / 194,042 / 199,626 for K = 1, 4, 8, 10 (PAPER.md). For K = 1 nothing is
  tiled, but the layers are still the authors' repeated convs (own source of the full shape,
  xavier-initialised, zero bias), as the plan says.

``wrn`` initialises as the authors' ``ResNetCifar`` does: every ``nn.Conv2d`` kaiming-normal
(fan_out, ReLU), every BatchNorm weight 1 and bias 0.01. In a RepWRN the plan then re-initialises
the repeated convs (its ``source_init``/``bias_init``), so only the stem keeps the kaiming init, as
in the authors' model, where the stem is the only ``nn.Conv2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from repnas.spaces._registry import register_family, register_model
from repnas.spaces.models._resnet import STEM_WIDTH, CifarResNet, block_conv_shapes

WIDEN_FACTORS = (1, 2, 4, 8, 10)
_WRN16_1 = (16, (16, 32, 64))


def _blocks_per_stage(depth: int) -> int:
    """WRN's convention ``depth = 6n + 4``: n basic blocks per stage (for any number of stages)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
    return (depth - 4) // 6


def authors_init(model: nn.Module) -> nn.Module:
    """The authors' WRN init: convs kaiming-normal (fan_out, ReLU), BatchNorms weight 1, bias 0.01."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0.01)
    return model


@register_model
def wrn(depth: int = _WRN16_1[0], widths: Sequence[int] = _WRN16_1[1], num_classes: int = 10,
        in_channels: int = 3, bias: bool = True) -> CifarResNet:
    """Parametric WideResNet: ``depth`` = 6n + 4 (n blocks per stage), ``widths`` per stage.

    ``bias``: whether block convs and shortcuts have biases (the authors' repeated convs do, so the
    default suits repetition; the plain ``wrn16_K`` baselines are built with ``bias=False``).
    """
    n = _blocks_per_stage(int(depth))
    return authors_init(CifarResNet([n] * len(widths), widths, num_classes=num_classes,
                                    in_channels=in_channels, bias=bias))


def rep_wrn_plan(k: int, depth: int = 16) -> dict:
    """RepWRN-depth-k: every block conv and shortcut owns WRN-depth-1's shape, tiled k x k.

    The input side of a conv fed by the 16-channel stem is not tiled (r1 = 1). A layer whose shape
    is already the width-1 one (all of them for k = 1) owns an untiled source: no scalars, so it
    counts as a plain conv, but it is initialised as the authors' repeated conv (plan v2 defaults).
    """
    widths = [w * k for w in _WRN16_1[1]]
    n = _blocks_per_stage(depth)
    layers = {}
    for name, out_c, in_c in block_conv_shapes([n] * len(widths), widths):
        layers[name] = {"own": [out_c // k, in_c if in_c == STEM_WIDTH else in_c // k]}
    return {"version": 2, "map": "swish", "scalar_init": "xavier", "remainder": "paper",
            "source_init": "small_xavier", "bias_init": "zeros", "layers": layers}


for _k in WIDEN_FACTORS:
    _kwargs = {"depth": 16, "widths": [16 * _k, 32 * _k, 64 * _k]}
    register_family(f"wrn16_{_k}", base="wrn", base_kwargs={**_kwargs, "bias": False})
    register_family(f"rep_wrn16_{_k}", base="wrn", base_kwargs=_kwargs, plan=rep_wrn_plan(_k))
