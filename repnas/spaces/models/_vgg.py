"""VGG-N and RepVGG-N of PAPER.md (CIFAR, 3x3 convs with bias + BN + ReLU, one Linear).

The layout follows torchvision's ``vgg*_bn`` (``features`` is one ``nn.Sequential`` of
conv, BN, ReLU triplets and max-pools), so conv names are ``features.0``, ``features.3``,
``features.7``, ... as in design.md's plan example.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from repnas.spaces._registry import register_family, register_model

CfgItem = int | str

#: PAPER.md's VGG-N configurations: widths of the N-1 convs, "M" = 2x2 max-pool.
VGG_CFGS: dict[int, list[CfgItem]] = {
    4: [64, 64, "M", 128, "M"],
    5: [64, 64, "M", 128, 128, "M"],
    6: [64, 64, "M", 128, 128, "M", 256, "M"],
    7: [64, 64, "M", 128, 128, "M", 256, 256, "M"],
    8: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, "M"],
    9: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"],
    10: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, "M"],
    11: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}

#: RepVGG-N (PAPER.md): on VGG11's shape, conv Lx (1-based) borrows the weight of conv Ly.
REP_VGG_BORROWS: dict[int, dict[int, int]] = {
    4: {x: 3 for x in range(4, 11)},
    5: {5: 3, 7: 3, 9: 3, 6: 4, 8: 4, 10: 4},
    6: {6: 3, 7: 4, 8: 5, 9: 4, 10: 5},
    7: {7: 3, 8: 4, 9: 5, 10: 6},
    8: {8: 5, 9: 6, 10: 7},
    9: {9: 7, 10: 8},
    10: {10: 9},
}


def _check_cfg(cfg: Sequence[CfgItem]) -> list[CfgItem]:
    items = list(cfg)
    if not any(v != "M" for v in items):
        raise ValueError(f"a VGG cfg needs at least one conv width, got {items}")
    for v in items:
        if v != "M" and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError(f"a VGG cfg holds positive ints and 'M', got {v!r} in {items}")
    return items


def vgg_conv_names(cfg: Sequence[CfgItem]) -> list[str]:
    """Module names of the convs of ``VGG(cfg)``, in order (for writing plans without a model)."""
    names, index = [], 0
    for v in _check_cfg(cfg):
        if v == "M":
            index += 1
        else:
            names.append(f"features.{index}")
            index += 3
    return names


class VGG(nn.Module):
    """Convs 3x3 pad 1 (bias) + BN + ReLU, 2x2 max-pools, global average pool, one Linear.

    Pools use ``ceil_mode=True`` (identical on CIFAR's even sizes) so that deep configs still run
    on 28x28 or 8x8 inputs; the global average pool is the identity when the map is already 1x1,
    which is PAPER.md's "global average pool when the map is larger than 1x1".
    """

    def __init__(self, cfg: Sequence[CfgItem], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _check_cfg(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1, bias=True),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


_VGG11_CFG = tuple(VGG_CFGS[11])


@register_model
def vgg(cfg: Sequence[CfgItem] = _VGG11_CFG, num_classes: int = 10,
        in_channels: int = 3) -> VGG:
    """Parametric VGG: any list of conv widths and "M" pools (default: VGG11's)."""
    return VGG(cfg, num_classes=num_classes, in_channels=in_channels)


def rep_vgg_plan(n: int) -> dict:
    """The RepetitionPlan dict of RepVGG-N: VGG11's later convs borrow from earlier ones.

    With the authors' choices (plan v2 defaults): a borrowing conv's bias starts at zero; the lenders
    are ordinary convs and keep their init; no layer has remainders, so the rule does not matter.
    """
    names = vgg_conv_names(VGG_CFGS[11])
    layers = {names[x - 1]: {"borrow": names[y - 1]} for x, y in sorted(REP_VGG_BORROWS[n].items())}
    return {"version": 2, "map": "swish", "scalar_init": "xavier", "remainder": "paper",
            "source_init": "small_xavier", "bias_init": "zeros", "layers": layers}


for _n, _cfg in VGG_CFGS.items():
    register_family(f"vgg{_n}", base="vgg", base_kwargs={"cfg": list(_cfg)})
for _n in REP_VGG_BORROWS:
    register_family(f"rep_vgg{_n}", base="vgg", base_kwargs={"cfg": list(VGG_CFGS[11])},
                    plan=rep_vgg_plan(_n))
