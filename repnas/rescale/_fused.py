"""The fused repeated weight (issue 18.1): one custom ``autograd.Function`` per layer that computes
the tiled, mapped weight in one forward and returns every gradient from one closed-form backward.

Why: at CIFAR sizes a GPU step waits for the host to launch kernels, and the reference
implementation (``RepeatWeight.reference``) launches ~21 per tiled swish layer and step (neg, mul,
sigmoid, two more muls forward; each broadcast mul's backward is a mul and a sum per input, plus
``slice_backward`` of the scalars and ``select_backward`` of the source). Here a whole-tile swish
layer launches 8 (``benchmarks/step_profile.py``):

* forward: ``c = stack(alpha, -beta)`` (2 tiny ops), ``X = c (x) w`` (one broadcast mul, shape
  (2, tiles, o, i, k, k)) and ``glu(X)`` = ``alpha w * sigmoid(-beta w)``, written straight into the
  tile-major view of the conv's weight, in the dtype and memory format the conv consumes;
* backward: ``dX = glu_backward(g, X)``, then two matrix products: ``dw = c^T dX`` (the sum over
  tiles) and ``dc = dX w`` (the sum over each tile), and ``dbeta = -dc[1]``.

The same stage runs for the remainders: the ``paper`` rule maps the already mapped tensor again
(rows ``r0*o..`` from rows ``:e0``, then columns ``r1*i..`` from columns ``:e1``), so its forward is
three stages in order and its backward the three in reverse, each adding its input gradient into the
region it read; the ``source`` rule maps the raw source over a grid of ceil(O/o) x ceil(I/i) tiles
whose scalar pair is gathered per tile, and crops. ``linear`` (``alpha w``) is the same with one
coefficient and no glu. Values equal the reference to rounding (tests: fp64 to 1e-12 and
``gradcheck`` on every layout).

Second derivatives (issue 27.1): the closed-form backward is not itself differentiable (in-place
adds, saved intermediates), so a backward run with ``create_graph=True`` recomputes the weight by
:func:`plain_weight` (the same ops, out of place) and differentiates that: exact
(``gradgradcheck`` on every layout), and a first-order step launches what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["FusedLayout", "fused_weight"]


@dataclass(frozen=True)
class FusedLayout:
    """What a layer's weight generation does, fixed when the layer is built."""

    source: tuple[int, int]  # (o, i)
    target: tuple[int, int]  # (O, I)
    map: str  # swish | linear
    rule: str  # paper | source
    # derived values, computed once when the layout is made (host work per step is what this module
    # exists to cut; and not as ``cached_property``, whose first call under ``torch.compile`` takes
    # a lock that dynamo cannot trace)
    tiles: tuple[int, int, int, int] = field(init=False, compare=False, repr=False)
    #: tiles of the first stage: whole tiles, or (source rule with remainders) every tile that the
    #: weight touches, the last row/column cropped
    grid: tuple[int, int] = field(init=False, compare=False, repr=False)
    cropped: bool = field(init=False, compare=False, repr=False)
    stages: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        (o, i), (big_o, big_i) = self.source, self.target
        r0, r1, e0, e1 = big_o // o, big_i // i, big_o % o, big_i % i
        cropped = self.rule == "source" and bool(e0 or e1)
        object.__setattr__(self, "tiles", (r0, r1, e0, e1))
        object.__setattr__(self, "grid", (r0 + (1 if e0 else 0), r1 + (1 if e1 else 0)) if cropped else (r0, r1))
        object.__setattr__(self, "cropped", cropped)
        object.__setattr__(self, "stages", _regions(self))

    def tile_pairs(self) -> list[int]:
        """The scalar pair of each first-stage tile (row-major): whole tiles 0..r0*r1-1; under the
        source rule the extra row takes the output remainder's pair and the extra column (corner
        included) the input remainder's."""
        r0, r1, e0, _ = self.tiles
        big_r0, big_r1 = self.grid
        pairs = []
        for a in range(big_r0):
            for b in range(big_r1):
                if b >= r1:
                    pairs.append(r0 * r1 + (1 if e0 else 0))
                elif a >= r0:
                    pairs.append(r0 * r1)
                else:
                    pairs.append(a * r1 + b)
        return pairs


def _tile_view(t: Tensor, r0: int, r1: int) -> Tensor:
    """(r0*o, r1*i, k, k) -> the tile-major view (r0, r1, o, i, k, k), whatever ``t``'s strides."""
    return t.unflatten(0, (r0, -1)).unflatten(2, (r1, -1)).permute(0, 2, 1, 3, 4, 5)


def _regions(layout: FusedLayout):
    """The stages after the first (paper rule only): (source region, target region, pair, the dim it
    appends to) as slices of the weight, in forward order."""
    (o, i) = layout.source
    r0, r1, e0, e1 = layout.tiles
    stages = []
    if layout.rule == "paper":
        pair = r0 * r1
        if e0:
            stages.append(((slice(0, e0), slice(0, r1 * i)), (slice(r0 * o, None), slice(0, r1 * i)), pair, 0))
            pair += 1
        if e1:
            stages.append(((slice(None), slice(0, e1)), (slice(None), slice(r1 * i, None)), pair, 1))
    return tuple(stages)


def _glu_into(x: Tensor, dst: Tensor) -> None:
    """``dst = glu(x, 0)`` written in place. Eagerly by ``out=`` (into a strided view of the weight:
    no copy kernel); under ``torch.compile`` as a copy of the result, because dynamo refuses ``out=``
    into a non-contiguous tensor and breaks the graph there (inductor fuses the copy anyway)."""
    if torch.compiler.is_compiling():
        dst.copy_(torch._C._nn.glu(x, 0))
    else:
        torch._C._nn.glu(x, 0, out=dst)


def _mul_into(a: Tensor, b: Tensor, dst: Tensor) -> None:
    """``dst = a * b`` written in place (as :func:`_glu_into`)."""
    if torch.compiler.is_compiling():
        dst.copy_(a * b)
    else:
        torch.mul(a, b, out=dst)


def plain_weight(source: Tensor, alpha: Tensor, beta: Tensor | None, layout: FusedLayout,
                 index: Tensor | None = None) -> Tensor:
    """The fused function's forward in plain, twice-differentiable autograd ops, in the source's
    dtype, contiguous: the same values (the same elementwise ops on the same numbers), for the
    backward when a second derivative is asked for (``create_graph=True``)."""
    swish = layout.map == "swish"
    coef = torch.stack((alpha, beta.neg())) if swish else alpha.view(1, -1)
    o, i, *kernel = source.shape
    big_o, big_i = layout.target
    r0, r1 = layout.grid
    tile_coef = coef.index_select(1, index) if layout.cropped else coef[:, : r0 * r1]
    j = coef.shape[0]
    x = tile_coef.reshape(j, r0, 1, r1, 1, 1, 1) * source[:, None]  # (j, r0, o, r1, i, k, k)
    weight = (torch._C._nn.glu(x, 0) if swish else x)[0].reshape(r0 * o, r1 * i, *kernel)
    for src, _, pair, dim in layout.stages:
        x = coef[:, pair].view(j, 1, 1, 1, 1) * weight[src]
        weight = torch.cat([weight, (torch._C._nn.glu(x, 0) if swish else x)[0]], dim=dim)
    return weight[:big_o, :big_i] if layout.cropped else weight


class _FusedRepeat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor, alpha: Tensor, beta: Tensor | None, index: Tensor | None,
                layout: FusedLayout, dtype: torch.dtype, memory_format: torch.memory_format) -> Tensor:
        swish = layout.map == "swish"
        coef = torch.stack((alpha, beta.neg())) if swish else alpha.view(1, -1)  # (J, pairs)
        o, i, *kernel = source.shape
        big_o, big_i = layout.target
        r0, r1 = layout.grid
        out = torch.empty((big_o, big_i, *kernel), dtype=dtype, device=source.device, memory_format=memory_format)
        stages = layout.stages
        exact = dtype == source.dtype and not stages and not layout.cropped
        shape = (r0 * o, r1 * i) if layout.cropped else (big_o, big_i)
        buf = out if exact else torch.empty((*shape, *kernel), dtype=source.dtype, device=source.device)
        tile_coef = coef.index_select(1, index) if layout.cropped else coef[:, : r0 * r1]
        j = coef.shape[0]
        saved = []
        # stage 1: tiles of the source
        dst = _tile_view(buf[: r0 * o, : r1 * i], r0, r1).unsqueeze(0)
        cview = tile_coef.reshape(j, r0, r1, 1, 1, 1, 1)
        if swish:
            x = cview * source
            _glu_into(x, dst)
            saved.append(x)
        else:
            _mul_into(cview, source, dst)
        # stages 2, 3 (paper rule): maps of the mapped tensor
        for src, tgt, pair, _ in stages:
            c = coef[:, pair].view(j, 1, 1, 1, 1)
            if swish:
                x = c * buf[src]
                _glu_into(x, buf[tgt].unsqueeze(0))
                saved.append(x)
            else:
                _mul_into(c, buf[src], buf[tgt].unsqueeze(0))
        if buf is not out:
            out.copy_(buf[:big_o, :big_i])
        ctx.layout, ctx.dtype = layout, dtype
        ctx.save_for_backward(source, alpha, beta, index, coef, tile_coef, buf if stages else None, *saved)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable itself
            return _differentiable_backward(ctx, grad)
        layout: FusedLayout = ctx.layout
        source, _, beta, index, coef, tile_coef, buf, *saved = ctx.saved_tensors
        swish = layout.map == "swish"
        o, i, *kernel = source.shape
        big_o, big_i = layout.target
        r0, r1 = layout.grid
        stages = layout.stages
        if grad.dtype != source.dtype:
            grad = grad.to(source.dtype)
        if layout.cropped:
            g = grad.new_zeros((r0 * o, r1 * i, *kernel))
            g[:big_o, :big_i].copy_(grad)
        elif stages:
            g = grad.clone(memory_format=torch.contiguous_format)  # stages add into it
        else:
            g = grad
        j = coef.shape[0]
        d_coef = torch.zeros_like(coef) if (stages or layout.cropped) else None
        xs = list(saved)
        for (src, tgt, pair, _), x in zip(reversed(stages), reversed(xs[1:]) if swish else [None] * len(stages),
                                       strict=True):
            gt = g[tgt].unsqueeze(0)
            dx = torch.ops.aten.glu_backward(gt, x, 0) if swish else gt
            c = coef[:, pair].view(j, 1, 1, 1, 1)
            # the stage's input is the region of the (fp32, internal) buffer it read
            d_coef[:, pair] += (dx * buf[src]).sum(dim=(1, 2, 3, 4))
            g[src].add_((dx * c).sum(0))
        # stage 1
        gt = _tile_view(g[: r0 * o, : r1 * i], r0, r1).unsqueeze(0)
        if swish:
            dx = torch.ops.aten.glu_backward(gt, xs[0], 0).view(j * r0 * r1, -1)
            d_source = (tile_coef.reshape(1, -1) @ dx).view(source.shape)
            d_tile = (dx @ source.reshape(-1)).view(j, r0 * r1)
        else:
            d_source = (gt * tile_coef.reshape(1, r0, r1, 1, 1, 1, 1)).sum(dim=(0, 1, 2))
            d_tile = (gt * source).sum(dim=(3, 4, 5, 6)).view(j, r0 * r1)
        if index is not None:
            d_coef.index_add_(1, index, d_tile)
        elif d_coef is not None:
            d_coef[:, : r0 * r1] += d_tile
        else:
            d_coef = d_tile
        d_alpha = d_coef[0]
        d_beta = d_coef[1].neg() if beta is not None else None
        return d_source, d_alpha, d_beta, None, None, None, None


def _differentiable_backward(ctx, grad: Tensor) -> tuple:
    """The gradients as a function autograd can differentiate again (a gradient penalty, a
    Hessian-vector product): the weight recomputed from the saved inputs by :func:`plain_weight` and
    back-propagated with ``create_graph``. Exact, and only when asked: a first-order backward keeps
    the closed form above."""
    source, alpha, beta, index, *_ = ctx.saved_tensors
    inputs = [(k, t) for k, t in enumerate((source, alpha, beta)) if t is not None and ctx.needs_input_grad[k]]
    with torch.enable_grad():
        weight = plain_weight(source, alpha, beta, ctx.layout, index).to(ctx.dtype)
        grads = torch.autograd.grad(weight, [t for _, t in inputs], grad, create_graph=True, allow_unused=True)
    result: list = [None] * 7
    for (k, _), g in zip(inputs, grads, strict=True):
        result[k] = g
    return tuple(result)


def fused_weight(source: Tensor, alpha: Tensor, beta: Tensor | None, layout: FusedLayout,
                 dtype: torch.dtype | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 index: Tensor | None = None) -> Tensor:
    """The layer's weight (O, I, k, k) from its source (o, i, k, k) and its scalars, in ``dtype``
    (default: the source's) and ``memory_format``. ``index`` (the source rule's remainders only):
    the scalar pair of each first-stage tile, ``FusedLayout.tile_pairs`` on the source's device."""
    if layout.cropped and index is None:
        index = torch.tensor(layout.tile_pairs(), device=source.device)
    if source.dtype != alpha.dtype:  # a bank's mixture made under autocast (bf16): generate in the scalars' dtype
        source = source.to(alpha.dtype)
    return _FusedRepeat.apply(source, alpha, beta, index, layout, dtype or source.dtype, memory_format)
