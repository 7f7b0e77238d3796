"""Element maps applied to each repeated tile: ``f(w) = g(w; alpha, beta)``.

The paper's map is ``swish``: ``alpha * w * sigmoid(-beta * w)`` (beta = 0 gives a plain scale by
alpha / 2). ``linear`` (``alpha * w``) and ``none`` (pure tiling, no scalars) are the ablations.
Each map declares how many scalars a tile needs, so accounting never has to special-case it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ScalarMap:
    """One tile map: how many learnable scalars per tile, how to apply them, and their identity values."""

    name: str
    scalars_per_tile: int
    apply: Callable[[Tensor, Tensor, Tensor], Tensor]
    identity: tuple[float, ...]  # scalar values for which the map returns w unchanged


def _swish(w: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    return alpha * w * torch.sigmoid(-beta * w)


def _linear(w: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    return alpha * w


def _none(w: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    return w


SCALAR_MAPS: dict[str, ScalarMap] = {
    "swish": ScalarMap("swish", 2, _swish, (2.0, 0.0)),
    "linear": ScalarMap("linear", 1, _linear, (1.0,)),
    "none": ScalarMap("none", 0, _none, ()),
}


def get_scalar_map(name: str) -> ScalarMap:
    try:
        return SCALAR_MAPS[name]
    except KeyError:
        raise ValueError(f"unknown tile map {name!r}; choose one of {sorted(SCALAR_MAPS)}") from None
