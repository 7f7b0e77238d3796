"""The rotated-MNIST CNN of PAPER.md and RepCNN-C_N (its weights tiled to a G-CNN's widths).

Six convs (7x7, then 5x5; no bias) + BN + ELU, 2x2 max-pool after convs 2 and 4, global average
pool, then Linear 64 - BN - ELU - Linear. Convs use "same" padding and pools ``ceil_mode`` so the
net runs on any input size (29x29 rot-MNIST, 28x28 MNIST, 8x8 digits); parameter counts do not
depend on either. Layout as in ``_vgg.py``: convs are ``features.0, .3, .7, .10, .14, .17``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from repnas.spaces._registry import register_family, register_model

#: the plain CNN baseline's widths (about 340k parameters).
CNN_WIDTHS = (22, 33, 45, 45, 67, 90)
#: channel widths of the G-CNNs C_N (fields x N), which RepCNN-C_N is rescaled to.
GCNN_WIDTHS: dict[int, tuple[int, ...]] = {
    4: (64, 96, 128, 128, 192, 256),
    8: (88, 136, 184, 184, 272, 360),
    16: (128, 192, 256, 256, 384, 512),
}
KERNEL_SIZES = (7, 5, 5, 5, 5, 5)
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
    """PAPER.md's rot-MNIST CNN at any six widths."""

    def __init__(self, widths: Sequence[int], num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != len(KERNEL_SIZES) or min(widths) < 1:
            raise ValueError(f"rot_cnn needs {len(KERNEL_SIZES)} positive widths, got {widths}")
        layers: list[nn.Module] = []
        channels = in_channels
        for layer, (width, k) in enumerate(zip(widths, KERNEL_SIZES, strict=True), start=1):
            layers += [nn.Conv2d(channels, width, k, padding=k // 2, bias=False),
                       nn.BatchNorm2d(width), nn.ELU(inplace=True)]
            if layer in POOL_AFTER:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(channels, HEAD_WIDTH), nn.BatchNorm1d(HEAD_WIDTH),
                                  nn.ELU(inplace=True), nn.Linear(HEAD_WIDTH, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@register_model(dataset="rotmnist")
def rot_cnn(widths: Sequence[int] = CNN_WIDTHS, num_classes: int = 10, in_channels: int = 1) -> RotCNN:
    """Parametric rot-MNIST CNN: six conv widths (default: the baseline's 22/33/45/45/67/90)."""
    return RotCNN(widths, num_classes=num_classes, in_channels=in_channels)


def rep_cnn_plan(rotations: int):
    """RepCNN-C_N's plan: each conv owns the baseline's shape, tiled to the C_N widths.

    Returned as a function of the input channel count: the first conv's source keeps the full
    input side (its ``i`` is the image's channel count, so r1 = 1 there).
    """
    widths = GCNN_WIDTHS[rotations]

    def plan(in_channels: int) -> dict:
        layers = {}
        sources = [in_channels, *CNN_WIDTHS]
        targets = [in_channels, *widths]
        for j, name in enumerate(rot_cnn_conv_names()):
            own = [CNN_WIDTHS[j], sources[j]]
            if own != [targets[j + 1], targets[j]]:
                layers[name] = {"own": own}
        return {"version": 1, "map": "swish", "scalar_init": "xavier", "layers": layers}

    return plan


register_family("cnn_rotmnist", base="rot_cnn", base_kwargs={"widths": list(CNN_WIDTHS)})
for _n, _widths in GCNN_WIDTHS.items():
    register_family(f"rep_cnn_c{_n}", base="rot_cnn", base_kwargs={"widths": list(_widths)},
                    plan=rep_cnn_plan(_n))
