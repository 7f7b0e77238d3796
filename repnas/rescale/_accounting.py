"""Parameter and FLOP accounting of repeated models.

* ``count_params``: trainable *unique* parameters, a tensor shared by several layers counted once
  (``nn.Module.parameters()`` already de-duplicates shared tensors).
* ``count_physical_params``: the parameters of the materialized (plain) model, computed without
  building it: the repetition machinery is swapped for the generated weights' sizes.
* ``count_flops``: forward FLOPs per image from ``torch.utils.flop_counter.FlopCounterMode``
  (2 x multiply-accumulates of convs and linears; generating a repeated weight is elementwise work
  done once per batch, which FlopCounterMode does not count, and which is negligible per image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from repnas.rescale._apply import repeated_layers


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_physical_params(model: nn.Module) -> int:
    machinery: dict[int, int] = {}
    physical_weights = 0
    for _, conv, rep in repeated_layers(model):
        for p in rep.parameters():
            machinery[id(p)] = p.numel()
        physical_weights += math.prod(conv.weight.shape)
    others = sum(p.numel() for p in model.parameters() if id(p) not in machinery)
    return others + physical_weights


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image of shape (C, H, W), counted in eval mode (BN stats untouched).

    Not under ``no_grad``: FlopCounterMode's module tracker expects tensors that require grad to
    carry a grad_fn, which an untiled shared source (a view of a bank) lacks under ``no_grad``.
    """
    was_training = model.training
    model.eval()
    try:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        x = torch.zeros(1, *input_shape, device=device)
        # the repeated weights are generated first, outside the counter, and cached for the forward:
        # a bank's mixing is an einsum (a matmul FlopCounterMode would count) done once per batch,
        # not per image, so a repeated model has its plain shape's FLOPs whatever its banks' rank
        with parametrize.cached():
            for _, conv, _ in repeated_layers(model):
                conv.weight  # noqa: B018  (computes and caches the generated weight)
            with FlopCounterMode(display=False) as counter:
                model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per conv: name, weight shape, where the weight comes from, tiling, params it owns.

    ``params`` counts what the layer adds to the model: its bias, its tile scalars and mixing
    coefficients, and its source when the source is its own (a shared bank is counted at the first
    layer that uses it), so the column sums to the convs' share of ``count_params``.
    """
    repeated = {name: rep for name, _, rep in repeated_layers(model)}
    seen: set[int] = set()
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        rep = repeated.get(name)
        own = [module.bias] if module.bias is not None else []
        if rep is None:
            own.append(module.weight)
            source, tiles = "plain", "-"
        else:
            own += list(rep.parameters())
            r0, r1, e0, e1 = rep.layout
            o, i = rep.bank.source_shape[:2]
            rank = f" r{rep.bank.rank}" if rep.coefficients is not None else ""
            source = f"{rep.source_name} ({o}, {i}){rank}"
            tiles = "-" if not rep.tiled else f"{r0}x{r1}" + (f" +({e0}, {e1})" if e0 or e1 else "")
        params = 0
        for p in own:
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                params += p.numel()
        rows.append(
            {"name": name, "shape": list(module.weight.shape), "source": source, "tiles": tiles, "params": params}
        )
    return rows


def describe(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Everything ``repnas describe`` prints: params, physical params, FLOPs and the layer table."""
    return {
        "params": count_params(model),
        "physical_params": count_physical_params(model),
        "flops": count_flops(model, input_shape),
        "layers": layer_table(model),
    }
