"""A small user model for tests: a class in a file, searched by ``tests/data/tiny_net.py:TinyNet``.

Its shortcut conv is defined before the convs it follows but runs after them (execution order is
not attribute order), it has a depthwise conv, and a conv the forward pass never calls.
"""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        w = width
        self.shortcut = nn.Conv2d(w, 2 * w, 1, bias=False)  # defined first, runs after block.1
        self.stem = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.block = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )
        self.tail = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.unused = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.block[:6](x)
        y = self.block[6:](y) + self.shortcut(x)
        y = torch.relu(self.tail(y)) + y
        return self.fc(torch.flatten(self.pool(y), 1))


def not_a_model(num_classes: int = 10):
    return {"layers": num_classes}


class NoConvs(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.flat(x)[:, :64])
