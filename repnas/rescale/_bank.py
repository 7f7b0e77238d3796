"""Template banks: the source tensors that repeated layers tile.

Every repeated conv reads its source from a bank. A layer that owns a small source (intra) owns a
rank-1 bank; a layer that borrows (inter) holds a reference to its lender's bank; a group of layers
that shares a rank-R bank mixes the R templates with R coefficients of its own (soft parameter
sharing, Savarese & Maire 2019). One mechanism, three plans.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TemplateBank(nn.Module):
    """R learnable templates of shape (o, i, k, k), shared by reference between layers."""

    def __init__(self, out_channels: int, in_channels: int, kernel_size: tuple[int, int], rank: int = 1):
        super().__init__()
        if rank < 1:
            raise ValueError(f"bank rank must be >= 1, got {rank}")
        self.templates = nn.Parameter(torch.empty(rank, out_channels, in_channels, *kernel_size))
        self.reset_parameters(fan_in=in_channels * kernel_size[0] * kernel_size[1])

    @property
    def rank(self) -> int:
        return self.templates.shape[0]

    @property
    def source_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.templates.shape[1:])  # type: ignore[return-value]

    @torch.no_grad()
    def reset_parameters(self, fan_in: int) -> None:
        """nn.Conv2d's default init (kaiming-uniform, a=sqrt(5)) for a conv of the given fan-in.

        The fan-in is that of the *physical* layer the template is tiled into, so the generated weight
        starts at the scale an ordinary conv of that shape would have.
        """
        bound = 1.0 / math.sqrt(fan_in)
        self.templates.uniform_(-bound, bound)

    def mix(self, coefficients: Tensor | None) -> Tensor:
        """The source a layer tiles: template 0 (rank 1, no coefficients) or a learned mixture."""
        if coefficients is None:
            # a view, not ``templates[0]``: its backward is free, select's allocates and copies
            return self.templates.view(self.templates.shape[1:]) if self.rank == 1 else self.templates[0]
        return torch.einsum("r,roikl->oikl", coefficients, self.templates)

    def extra_repr(self) -> str:
        r, o, i, *k = self.templates.shape
        return f"rank={r}, source=({o}, {i}, {k[0]}, {k[1]})"
