"""WideResNet-16-k and RepWRN-16-k of PAPER.md (widths 16k/32k/64k, 2 blocks per stage).

The block is the authors' (RepeatNet) one, not the WRN paper's pre-activation block:
post-activation conv-BN-ReLU with conv *biases*, and a 1x1 conv (bias) + BN shortcut where the
shape changes; the stem conv has no bias. With it the counts are exact: rep_wrn16_1 175,802,
rep_wrn16_4 183,498, rep_wrn16_8 194,042, rep_wrn16_10 199,626 (PAPER.md); a pre-activation
block without biases would miss WRN-16-10's by 4%.
"""

from __future__ import annotations

from collections.abc import Sequence

from repnas.spaces._registry import register_family, register_model
from repnas.spaces.models._resnet import STEM_WIDTH, CifarResNet, block_conv_shapes

WIDEN_FACTORS = (1, 2, 4, 8, 10)
_WRN16_1 = (16, (16, 32, 64))


def _blocks_per_stage(depth: int) -> int:
    """WRN's convention ``depth = 6n + 4``: n basic blocks per stage (for any number of stages)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
    return (depth - 4) // 6


@register_model
def wrn(depth: int = _WRN16_1[0], widths: Sequence[int] = _WRN16_1[1], num_classes: int = 10,
        in_channels: int = 3) -> CifarResNet:
    """Parametric WideResNet: ``depth`` = 6n + 4 (n blocks per stage), ``widths`` per stage."""
    n = _blocks_per_stage(int(depth))
    return CifarResNet([n] * len(widths), widths, num_classes=num_classes, in_channels=in_channels,
                       bias=True)


def rep_wrn_plan(k: int, depth: int = 16) -> dict:
    """RepWRN-depth-k: every block conv and shortcut owns WRN-depth-1's shape, tiled k x k.

    The input side of a conv fed by the 16-channel stem is not tiled (r1 = 1). Layers whose
    shape is already the width-1 one (all of them for k = 1) stay plain, as PAPER.md says.
    """
    widths = [w * k for w in _WRN16_1[1]]
    n = _blocks_per_stage(depth)
    layers = {}
    for name, out_c, in_c in block_conv_shapes([n] * len(widths), widths):
        own = [out_c // k, in_c if in_c == STEM_WIDTH else in_c // k]
        if own != [out_c, in_c]:
            layers[name] = {"own": own}
    return {"version": 1, "map": "swish", "scalar_init": "xavier", "layers": layers}


for _k in WIDEN_FACTORS:
    _kwargs = {"depth": 16, "widths": [16 * _k, 32 * _k, 64 * _k]}
    register_family(f"wrn16_{_k}", base="wrn", base_kwargs=_kwargs)
    register_family(f"rep_wrn16_{_k}", base="wrn", base_kwargs=_kwargs, plan=rep_wrn_plan(_k))
