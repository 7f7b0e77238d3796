"""Rotation-equivariant G-CNNs C_N for rot-MNIST (PAPER.md), built with e2cnn.

e2cnn is optional (``pip install repnas[equivariant]``): it is imported inside the builder only.
The net is the authors' ``SteerableCNN``: :mod:`._rotmnist`'s CNN layout with ``R2Conv`` layers
between regular-representation fields of ``Rot2dOnR2(N)``: six convs (7x7 then 5x5, no bias, the
authors' padding 1/2/2/2/2/0 and their basis: ``sigma``, ``rings`` and ``frequencies_cutoff``
below) + ``InnerBatchNorm`` + ELU, 2x2 max-pool after convs 2 and 4, then a global average pool
over space *before* pooling over the group (max over the N rotations), Linear 64 - BN - ELU -
Linear. Field counts are 16/24/32/32/48/64 times 2/sqrt(N), rounded, so channel widths are
C4 64/96/128/128/192/256, C8 88/136/184/184/272/360, C16 128/192/256/256/384/512; parameters
304,154 / 305,098 / 301,746.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from repnas.errors import UserError
from repnas.spaces._registry import register_family, register_model
from repnas.spaces.models._rotmnist import HEAD_WIDTH, KERNEL_SIZES, PADDINGS, POOL_AFTER

BASE_FIELDS = (16, 24, 32, 32, 48, 64)
ROTATIONS = (4, 8, 16)


def gcnn_fields(rotations: int, base_fields: Sequence[int] = BASE_FIELDS) -> list[int]:
    """Regular fields per layer for C_N: ``round(f * 2 / sqrt(N))`` (constant-ish parameters)."""
    return [max(1, round(f * 2 / math.sqrt(rotations))) for f in base_fields]


def _basis(layer: int) -> dict:
    """The authors' steerable-filter basis of conv ``layer`` (1-based): 4 rings for the 7x7 conv,
    3 for the 5x5 ones. (With these the parameter counts equal e2cnn's default basis.)"""
    if layer == 1:
        return {"sigma": [0.6, 0.6, 0.6, 0.4], "rings": [0, 1, 2, 3],
                "frequencies_cutoff": _cutoff_7x7}
    return {"sigma": [0.6, 0.6, 0.4], "rings": [0, 1, 2], "frequencies_cutoff": _cutoff_5x5}


def _cutoff_7x7(r: float) -> float:
    return 0 if r == 0 else (3 if r == 2 else 2)


def _cutoff_5x5(r: float) -> float:
    return 0 if r == 0 else 2


def _import_e2cnn(model_name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from e2cnn import gspaces
            from e2cnn import nn as enn
    except ImportError:
        raise UserError(f"{model_name} needs e2cnn: pip install repnas[equivariant]") from None
    return gspaces, enn


class GCNN(nn.Module):
    """C_N-equivariant CNN (regular fields), invariant after group pooling."""

    def __init__(self, rotations: int, fields: Sequence[int], num_classes: int = 10,
                 in_channels: int = 1):
        super().__init__()
        gspaces, enn = _import_e2cnn(f"gcnn_c{rotations}")
        fields = [int(f) for f in fields]
        if len(fields) != len(KERNEL_SIZES) or min(fields) < 1:
            raise ValueError(f"gcnn needs {len(KERNEL_SIZES)} positive field counts, got {fields}")
        gspace = gspaces.Rot2dOnR2(N=rotations)
        self.in_type = enn.FieldType(gspace, in_channels * [gspace.trivial_repr])
        field_type = self.in_type
        layers = []
        with warnings.catch_warnings():  # e2cnn's basis code triggers torch deprecation warnings
            warnings.simplefilter("ignore")
            for layer, (count, k, pad) in enumerate(zip(fields, KERNEL_SIZES, PADDINGS, strict=True), start=1):
                out_type = enn.FieldType(gspace, count * [gspace.regular_repr])
                layers += [enn.R2Conv(field_type, out_type, k, padding=pad, bias=False, **_basis(layer)),
                           enn.InnerBatchNorm(out_type), enn.ELU(out_type, inplace=True)]
                if layer in POOL_AFTER:
                    layers.append(enn.PointwiseMaxPool(out_type, 2))
                field_type = out_type
        self.features = enn.SequentialModule(*layers)
        self.pool = enn.PointwiseAdaptiveAvgPool(field_type, 1)
        self.group_pool = enn.GroupPooling(field_type)
        self.head = nn.Sequential(nn.Linear(fields[-1], HEAD_WIDTH), nn.BatchNorm1d(HEAD_WIDTH),
                                  nn.ELU(inplace=True), nn.Linear(HEAD_WIDTH, num_classes))
        self._geometric_tensor = enn.GeometricTensor

    def train(self, mode: bool = True) -> GCNN:
        """Compatibility shim: e2cnn's ``R2Conv.train(False)`` caches its expanded filter with
        autograd on, leaving a non-leaf buffer that ``copy.deepcopy`` (hence ``materialize``)
        refuses under torch 2.x; expanding it under ``no_grad`` makes the cache a plain tensor."""
        with torch.no_grad():
            return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        x = self.group_pool(self.pool(self.features(self._geometric_tensor(x, self.in_type)))).tensor
        return self.head(x.flatten(1))


@register_model(dataset="rotmnist")
def gcnn(rotations: int = 4, fields: Sequence[int] | None = None, num_classes: int = 10,
         in_channels: int = 1) -> GCNN:
    """Parametric C_N G-CNN; ``fields=None`` is PAPER.md's 16/24/32/32/48/64 x 2/sqrt(N)."""
    rotations = int(rotations)
    if rotations < 1:
        raise ValueError(f"gcnn needs rotations >= 1, got {rotations}")
    return GCNN(rotations, fields if fields is not None else gcnn_fields(rotations),
                num_classes=num_classes, in_channels=in_channels)


for _n in ROTATIONS:
    register_family(f"gcnn_c{_n}", base="gcnn", base_kwargs={"rotations": _n})
