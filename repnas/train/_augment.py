"""Batched data augmentation as tensor ops on the device (no per-sample Python, no workers).

Every random draw comes from one ``torch.Generator`` living on the batch's device, so a seed fixes
the augmentation exactly (bit-identical on CPU). Crop and flip work on uint8 (cheap, 1 byte per
pixel); rotation needs interpolation, so :func:`augment` converts to float in [0, 1] first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentSpec", "augment", "normalize", "random_crop", "random_flip", "rotate"]


@dataclass(frozen=True)
class AugmentSpec:
    """What to apply: random crop after zero padding, horizontal flip, rotation by U[0, 2pi)."""

    crop_padding: int = 0
    flip: bool = False
    rotate: bool = False


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random same-size window per image (torchvision RandomCrop).

    One gather with per-image row/column index grids: the cost is one copy of the batch whatever the
    number of distinct offsets (airbench groups by offset instead; this is shorter and as fast here).
    """
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices around a slice put their broadcast dims first: (B, H, W, C)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate float images ``(B, C, H, W)`` by ``angles`` (radians) about the centre, zero fill.

    With ``align_corners=False`` the centre is pixel ((H-1)/2, (W-1)/2): exact for odd sizes (29x29).
    """
    cos, sin = angles.cos(), angles.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """uint8 batch -> augmented float batch in [0, 1] (crop and flip on uint8, then rotate)."""
    if spec.crop_padding:
        x = random_crop(x, spec.crop_padding, generator)
    if spec.flip:
        x = random_flip(x, generator)
    x = x.float().div_(255)
    if spec.rotate:
        angles = torch.rand(x.shape[0], device=x.device, generator=generator) * (2 * math.pi)
        x = rotate(x, angles)
    return x


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float batch -> zero-mean unit-variance float (``mean``/``std`` shaped (C,))."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    return (x - mean[:, None, None]) / std[:, None, None]
