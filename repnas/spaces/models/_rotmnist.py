"""The rotated-MNIST CNN of PAPER.md and RepCNN-C_N, as the authors' code defines them.

Six convs (7x7, then 5x5) + BN + ELU, 2x2 max-pool after convs 2 and 4, global average pool, then
Linear 64 - BN - ELU - Linear. Padding is the authors': conv1 pads 1, convs 2-5 pad 2, conv6 pads 0,
pools floor; on a 29x29 input the maps are 25, 25, 12, 12, 6, 2 pixels wide. The net therefore needs
inputs of at least 24x24 (8x8 digits must be resized: ``dataset.image_size: 29``). Layout as in
``_vgg.py``: convs are ``features.0, .3, .7, .10, .14, .17``.

* ``cnn_rotmnist``: convs without bias, widths ``int(c / sqrt(2))`` for c = 32/48/64/64/96/128,
  i.e. 22/33/45/45/67/90 (340,309 parameters).
* ``rep_cnn_c{N}``: the same net at widths ``int(c / sqrt(2) * f)`` with f = 2 sqrt(2), 4, 4 sqrt(2)
  for N = 4, 8, 16 (C8: 90/135/181/181/271/362, *not* the G-CNN's 88/136/...), convs *with* bias
  (the authors' repeated conv always has one), every conv owning the baseline's shape. Counts:
  352,987 / 360,963 / 372,179.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from repnas.spaces._registry import register_family, register_model

#: the authors' base widths, scaled by 1/sqrt(2) for the plain CNN.
_BASE_WIDTHS = (32, 48, 64, 64, 96, 128)
#: RepCNN-C_N's width factor over the CNN (the authors' ``rep_fact``).
REP_FACTORS: dict[int, float] = {4: 2 * math.sqrt(2), 8: 4.0, 16: 4 * math.sqrt(2)}


def _widths(factor: float = 1.0) -> tuple[int, ...]:
    k = 1 / math.sqrt(2)
    return tuple(int(c * k * factor) for c in _BASE_WIDTHS)  # the authors' float order: (c * k) * f


#: the plain CNN baseline's widths (about 340k parameters).
CNN_WIDTHS = _widths()
#: RepCNN-C_N's channel widths (the authors' ``int(c * k * rep_fact)``).
REP_CNN_WIDTHS: dict[int, tuple[int, ...]] = {n: _widths(f) for n, f in REP_FACTORS.items()}
KERNEL_SIZES = (7, 5, 5, 5, 5, 5)
PADDINGS = (1, 2, 2, 2, 2, 0)
POOL_AFTER = (2, 4)
HEAD_WIDTH = 64


def rot_cnn_conv_names(n_convs: int = len(KERNEL_SIZES)) -> list[str]:
    """Module names of ``RotCNN``'s convs, in order."""
    names, index = [], 0
    for layer in range(1, n_convs + 1):
        names.append(f"features.{index}")
        index += 3 + (layer in POOL_AFTER)
    return names


class RotCNN(nn.Module):
    """PAPER.md's rot-MNIST CNN at any six widths (the authors' ``NormalCNN`` / ``RepCNN`` layout)."""

    def __init__(self, widths: Sequence[int], num_classes: int = 10, in_channels: int = 1, bias: bool = False):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != len(KERNEL_SIZES) or min(widths) < 1:
            raise ValueError(f"rot_cnn needs {len(KERNEL_SIZES)} positive widths, got {widths}")
        layers: list[nn.Module] = []
        channels = in_channels
        for layer, (width, k, pad) in enumerate(zip(widths, KERNEL_SIZES, PADDINGS, strict=True), start=1):
            layers += [nn.Conv2d(channels, width, k, padding=pad, bias=bias),
                       nn.BatchNorm2d(width), nn.ELU(inplace=True)]
            if layer in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(channels, HEAD_WIDTH), nn.BatchNorm1d(HEAD_WIDTH),
                                  nn.ELU(inplace=True), nn.Linear(HEAD_WIDTH, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model(dataset="rotmnist")
def rot_cnn(widths: Sequence[int] = CNN_WIDTHS, num_classes: int = 10, in_channels: int = 1,
            bias: bool = False) -> RotCNN:
    """Parametric rot-MNIST CNN: six conv widths (default: the baseline's 22/33/45/45/67/90)."""
    return RotCNN(widths, num_classes=num_classes, in_channels=in_channels, bias=bias)


def rep_cnn_plan(rotations: int):
    """RepCNN-C_N's plan: each conv owns the baseline's shape, tiled to the RepCNN-C_N widths, with
    the authors' remainder rule and initialisation (plan version 2 defaults).

    Returned as a function of the input channel count: the first conv's source keeps the full
    input side (its ``i`` is the image's channel count, so r1 = 1 there).
    """
    widths = REP_CNN_WIDTHS[rotations]

    def plan(in_channels: int) -> dict:
        layers = {}
        sources = [in_channels, *CNN_WIDTHS]
        targets = [in_channels, *widths]
        for j, name in enumerate(rot_cnn_conv_names()):
            own = [CNN_WIDTHS[j], sources[j]]
            if own != [targets[j + 1], targets[j]]:
                layers[name] = {"own": own}
        return {"version": 2, "map": "swish", "scalar_init": "xavier", "remainder": "paper",
                "source_init": "small_xavier", "bias_init": "zeros", "layers": layers}

    return plan


register_family("cnn_rotmnist", base="rot_cnn", base_kwargs={"widths": list(CNN_WIDTHS)})
for _n, _widths in REP_CNN_WIDTHS.items():
    register_family(f"rep_cnn_c{_n}", base="rot_cnn", base_kwargs={"widths": list(_widths), "bias": True},
                    plan=rep_cnn_plan(_n))
