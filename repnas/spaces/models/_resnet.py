"""CIFAR ResNets (He et al. 2016): a 16-channel stem, stages of basic blocks, one Linear.

The same :class:`CifarResNet` builds ``resnet20/32/56`` (convs without bias) and WideResNet-16
(``_wrn.py``: block convs with bias in RepWRN, without in the plain ``wrn16_K``). Shortcuts are
"option B": a 1x1 conv + BN wherever the shape changes, identity elsewhere. Conv names follow
torchvision: ``conv1`` (stem), ``layer{s}.{b}.conv1``, ``layer{s}.{b}.conv2``, ``layer{s}.{b}.shortcut.0``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from repnas.spaces._registry import register_family, register_model

STEM_WIDTH = 16


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _check_stages(blocks: Sequence[int], widths: Sequence[int]) -> tuple[list[int], list[int]]:
    blocks, widths = [int(b) for b in blocks], [int(w) for w in widths]
    if not blocks or len(blocks) != len(widths):
        raise ValueError(f"need one block count per stage width, got blocks={blocks} widths={widths}")
    if min(blocks) < 1 or min(widths) < 1:
        raise ValueError(f"block counts and widths must be positive, got {blocks} and {widths}")
    return blocks, widths


def block_conv_shapes(blocks: Sequence[int], widths: Sequence[int],
                      stem_width: int = STEM_WIDTH) -> Iterator[tuple[str, int, int]]:
    """``(name, out_channels, in_channels)`` of every block conv and shortcut conv, in order."""
    blocks, widths = _check_stages(blocks, widths)
    channels = stem_width
    for s, (count, width) in enumerate(zip(blocks, widths, strict=True), start=1):
        for b in range(count):
            prefix = f"layer{s}.{b}"
            yield f"{prefix}.conv1", width, channels
            yield f"{prefix}.conv2", width, width
            if (s > 1 and b == 0) or channels != width:
                yield f"{prefix}.shortcut.0", width, channels
            channels = width


class CifarResNet(nn.Module):
    """Stem conv3x3 (no bias) + BN + ReLU, stages of :class:`BasicBlock`, global pool, Linear.

    The first stage keeps the resolution, every later one halves it in its first block.
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3, bias: bool = False, stem_width: int = STEM_WIDTH):
        super().__init__()
        blocks, widths = _check_stages(blocks, widths)
        self.conv1 = nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        channels = stem_width
        for s, (count, width) in enumerate(zip(blocks, widths, strict=True), start=1):
            stage = []
            for b in range(count):
                stride = 2 if (s > 1 and b == 0) else 1
                stage.append(BasicBlock(channels, width, stride, bias=bias))
                channels = width
            self.add_module(f"layer{s}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(self.pool(x).flatten(1))


_RESNET20 = ((3, 3, 3), (16, 32, 64))


@register_model
def cifar_resnet(blocks: Sequence[int] = _RESNET20[0], widths: Sequence[int] = _RESNET20[1],
                 num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """Parametric CIFAR ResNet: blocks per stage and stage widths (default: ResNet-20)."""
    return CifarResNet(blocks, widths, num_classes=num_classes, in_channels=in_channels, bias=False)


for _depth in (20, 32, 56):
    _n = (_depth - 2) // 6
    register_family(f"resnet{_depth}", base="cifar_resnet",
                    base_kwargs={"blocks": [_n, _n, _n], "widths": [16, 32, 64]})
