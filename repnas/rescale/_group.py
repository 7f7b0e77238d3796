"""Whole-model weight generation: every eligible repeated layer of a model in one autograd call.

Why: the fused function (``_fused``) made a layer's weight cost ~8 operators per step, but a model
has many repeated layers (RepWRN-16-4: 15), and at CIFAR sizes a GPU step costs what the host spends
launching operators, not what they compute. Here the weights of all of a model's eligible layers
are one flat tensor computed by gathers, so weight generation costs a fixed ~20 operators per step
however many layers there are (``benchmarks/step_profile.py``):

* forward: the distinct sources and all scalars are concatenated (2 ops), each weight element
  gathers its source element and its scalar pair through index tensors built once per device and
  memory format (2 ops), then the map (``glu`` of ``(alpha s, -beta s)`` for swish, ``alpha s``
  for linear) writes every layer's weight, in the memory order the conv reads (channels_last under
  CUDA autocast), so each layer's weight is a view of the flat result;
* backward: the layers' gradients are concatenated (1 op), the map's backward is elementwise, and
  the sums over tiles (source gradient) and within tiles (scalar gradient) are segment sums over
  pre-sorted indices (``segment_reduce``): no atomics, so the result is deterministic on a GPU too,
  and no pair's thousands of elements queue on one address. A backward with ``create_graph=True``
  (second derivatives) differentiates the forward's plain ops instead, recomputed from the inputs.

Eligible layers are those whose every element is *one* map of a source element: whole tiles (any
remainder rule) and the ``source`` rule's remainders. The ``paper`` rule's remainders (maps of maps)
keep the per-layer fused function. The group only runs inside the forward of the model it was
attached to (a forward pre-hook turns it on, a forward hook that always runs turns it off), so a
layer called on its own, ``materialize`` and every tool that reads ``conv.weight`` outside a forward
get the per-layer weight: the same values (the same elementwise ops on the same numbers; the
gradients are the same sums in another order).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from repnas.rescale._repeat import _tile_index

__all__ = ["WeightGroup", "attach_weight_groups", "detach_weight_groups", "generated_together",
           "prepare_weight_groups"]

_GROUP_ENV = {"1": True, "0": False}.get(os.environ.get("REPNAS_WEIGHT_GROUP", ""))


@dataclass(frozen=True)
class _Spans:
    """The shapes a group's function needs (a constant: hashable, so ``torch.compile`` guards on it
    instead of tracing through the group object)."""

    rows: int  # J: 2 for swish (alpha, -beta), 1 for linear
    starts: tuple[int, ...]  # where each layer's weight starts in the flat result
    shapes: tuple[tuple[int, ...], ...]  # each layer's weight shape
    sizes: tuple[int, ...]  # each layer's weight numel
    source_sizes: tuple[int, ...]
    scalar_sizes: tuple[int, ...]  # alphas, then betas


def _generate(spans: _Spans, index: _Index, sign: Tensor, sources, scalars, dtype: torch.dtype,
              memory_format: torch.memory_format) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """The group's forward in plain autograd ops: (gathered sources, gathered scalars, their product,
    the layers' weights). ``_GroupRepeat`` runs it without autograd and adds a closed-form backward;
    a second derivative runs it with autograd (``_differentiable_backward``)."""
    flat_source = torch.cat([s.reshape(-1) for s in sources])
    # (J, pairs): row 0 alpha, row 1 -beta (swish), so the map is glu over rows
    coef = torch.cat(scalars).view(spans.rows, -1)
    if spans.rows == 2:
        coef = coef * sign
    s = flat_source.index_select(0, index.source)
    c = coef.index_select(1, index.pair)
    x = c * s
    flat = (torch._C._nn.glu(x, 0) if spans.rows == 2 else x)[0]
    if flat.dtype != dtype:
        flat = flat.to(dtype)
    weights = tuple(_layer_view(flat, start, shape, memory_format)
                    for start, shape in zip(spans.starts, spans.shapes, strict=True))
    return s, c, x, weights


_N_INDEX = 7  # tensors of an _Index, passed to the function as inputs (``torch.compile`` sees them)


class _GroupRepeat:
    """All of a group's weights from its sources and scalars (see the module docstring)."""

    @staticmethod
    def apply(group: WeightGroup, dtype: torch.dtype, memory_format: torch.memory_format,
              *tensors: Tensor) -> tuple[Tensor, ...]:
        """``tensors``: the group's sources, then its scalars (alphas, then betas). The group's index
        tensors go to the function as inputs, so ``torch.compile`` sees tensors, not their making."""
        device, dtype_in = tensors[0].device, tensors[0].dtype
        return _GroupFunction.apply(group.spans, dtype, memory_format, *group.index(device, memory_format),
                                    group.sign(device, dtype_in), *tensors)


class _GroupFunction(torch.autograd.Function):
    """:class:`_GroupRepeat`'s function. Inputs: the index tensors (``_Index``'s fields in order),
    the sign, the sources, the scalars."""

    @staticmethod
    def forward(ctx, spans: _Spans, dtype: torch.dtype, memory_format: torch.memory_format,
                *tensors: Tensor) -> tuple[Tensor, ...]:
        index, sign, sources, scalars = _split_inputs(spans, tensors)
        s, c, x, weights = _generate(spans, index, sign, sources, scalars, dtype, memory_format)
        ctx.spans, ctx.dtype, ctx.memory_format = spans, dtype, memory_format
        ctx.save_for_backward(s, c, x if spans.rows == 2 else None, *tensors)
        ctx.set_materialize_grads(False)
        return weights

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable itself
            return _differentiable_backward(ctx, grads)
        spans: _Spans = ctx.spans
        s, c, x, *tensors = ctx.saved_tensors
        index, sign, sources, _ = _split_inputs(spans, tensors)
        order = (0, 2, 3, 1) if ctx.memory_format == torch.channels_last else (0, 1, 2, 3)
        pieces = [g.permute(order).reshape(-1) if g is not None else s.new_zeros(n)
                  for g, n in zip(grads, spans.sizes, strict=True)]
        g = torch.cat(pieces)
        if g.dtype != s.dtype:
            g = g.to(s.dtype)
        g = g.view(1, -1)
        dx = torch.ops.aten.glu_backward(g, x, 0) if spans.rows == 2 else g
        # source: the sum over every element that copies it (elements sorted by source element)
        d_s = (dx * c).sum(0) if spans.rows == 2 else dx[0] * c[0]
        d_source = torch.segment_reduce(d_s.index_select(0, index.by_source), "sum", offsets=index.source_offsets)
        # scalars: the sum over each tile, as sums over runs of one pair (contiguous in memory), then
        # over the runs of each pair (runs sorted by pair); no atomics, so deterministic everywhere
        runs = torch.segment_reduce(dx * s, "sum", offsets=index.run_offsets, axis=1)
        d_coef = torch.segment_reduce(runs.index_select(1, index.runs_by_pair), "sum",
                                      offsets=index.pair_offsets, axis=1)
        if spans.rows == 2:
            d_coef = d_coef * sign
        d_sources = [d.view(t.shape) for d, t in zip(d_source.split(spans.source_sizes), sources, strict=True)]
        d_scalars = list(d_coef.reshape(-1).split(spans.scalar_sizes))
        return (None, None, None, *[None] * (_N_INDEX + 1), *d_sources, *d_scalars)


def _split_inputs(spans: _Spans, tensors) -> tuple[_Index, Tensor, tuple, tuple]:
    n_src = len(spans.source_sizes)
    index = _Index(*tensors[:_N_INDEX])
    rest = tensors[_N_INDEX + 1:]
    return index, tensors[_N_INDEX], rest[:n_src], rest[n_src:]


def _differentiable_backward(ctx, grads) -> tuple:
    """The gradients as a function autograd can differentiate again (a gradient penalty, a
    Hessian-vector product): the weights recomputed from the saved inputs by :func:`_generate` and
    back-propagated with ``create_graph``. Exact, and only when asked: a first-order backward keeps
    the closed form."""
    spans: _Spans = ctx.spans
    _, _, _, *tensors = ctx.saved_tensors
    index, sign, sources, scalars = _split_inputs(spans, tensors)
    first = 3 + _N_INDEX + 1
    inputs = (*sources, *scalars)
    wanted = [k for k in range(len(inputs)) if ctx.needs_input_grad[first + k]]
    used = [(w, g) for w, g in enumerate(grads) if g is not None]
    with torch.enable_grad():
        weights = _generate(spans, index, sign, sources, scalars, ctx.dtype, ctx.memory_format)[3]
        d_inputs = torch.autograd.grad([weights[w] for w, _ in used], [inputs[k] for k in wanted],
                                       [g for _, g in used], create_graph=True, allow_unused=True)
    result: list = [None] * (first + len(inputs))
    for k, d in zip(wanted, d_inputs, strict=True):
        result[first + k] = d if d is not None else torch.zeros_like(inputs[k])
    return tuple(result)


class _Index(NamedTuple):
    """A group's index tensors on one device, for one memory format (built once, so a step neither
    copies them to the device nor breaks a CUDA graph capture)."""

    source: Tensor  # (N,) the source element of each weight element, in memory order
    pair: Tensor  # (N,) its scalar pair
    # segments as offsets, not lengths: a CUDA segment_reduce of lengths runs a cumsum every call
    by_source: Tensor  # (N,) weight elements sorted by source element
    source_offsets: Tensor  # (M + 1,) where each source element's copies start in that order
    # runs of one pair in memory order: one column tile of one output row (and kernel position, in
    # channels_last); made from the shapes, not found by ``unique_consecutive`` (a static shape)
    run_offsets: Tensor  # (rows, R + 1) where each run of one pair starts, in memory order (per row)
    runs_by_pair: Tensor  # (R,) runs sorted by pair
    pair_offsets: Tensor  # (rows, P + 1) where each pair's runs start in that order


def _index_to(index: _Index, device: torch.device) -> _Index:
    return _Index(*(t.to(device) for t in index))


def _layer_view(flat: Tensor, start: int, shape: tuple[int, ...], memory_format: torch.memory_format) -> Tensor:
    """Layer weight (O, I, k, k) as a view of its span of ``flat``, laid out in ``memory_format``."""
    big_o, big_i, k1, k2 = shape
    span = flat[start: start + big_o * big_i * k1 * k2]
    if memory_format == torch.channels_last:
        return span.view(big_o, k1, k2, big_i).permute(0, 3, 1, 2)
    return span.view(shape)


def _eligible(layer) -> bool:
    """One map of one source element per weight element (see the module docstring)."""
    fused = layer._fused
    return fused is not None and not fused.stages


class WeightGroup:
    """The eligible repeated layers of one model that share a scalar map, generated together.

    Not an ``nn.Module``: it owns no parameters (it reads the layers' banks and scalars at every
    forward, so ``load_state_dict``, ``functional_call`` and optimizers see nothing new) and must not
    appear in ``state_dict`` or ``modules()``.
    """

    #: None (default): groups run on CUDA only (where the launches they save are the cost; on a CPU
    #: the gathers cost more arithmetic than the per-layer broadcast, ``docs/results.md``); True /
    #: False: everywhere / nowhere (tests, benchmarks; ``REPNAS_WEIGHT_GROUP=1`` / ``0`` does the same).
    #: A group only serves layers that use the fused function (``RepeatWeight.use_fused``).
    enabled: bool | None = None

    def __init__(self, layers: list):
        self.layers = list(layers)
        self.rows = 2 if self.layers[0].map.name == "swish" else 1
        keys: dict[tuple[int, int], tuple] = {}
        for layer in self.layers:
            keys.setdefault((id(layer.bank), id(layer.coefficients)), (layer.bank, layer.coefficients))
        self.sources = list(keys.values())
        slot = {key: k for k, key in enumerate(keys)}
        self._source_of = [slot[(id(la.bank), id(la.coefficients))] for la in self.layers]
        source_sizes = tuple(math.prod(bank.source_shape) for bank, _ in self.sources)
        self.source_numel = sum(source_sizes)
        shapes = tuple(tuple(la.target_shape) for la in self.layers)
        sizes = tuple(math.prod(shape) for shape in shapes)
        self.pair_counts = [la.n_pairs for la in self.layers]
        self.n_pairs = sum(self.pair_counts)
        self.spans = _Spans(self.rows, tuple(itertools.accumulate([0, *sizes[:-1]])), shapes, sizes, source_sizes,
                            tuple(self.pair_counts) * self.rows)  # alphas, then betas
        for k, layer in enumerate(self.layers):
            layer._group, layer._group_slot = self, k
        self._index: dict = {}
        self._sign: dict = {}
        self._active = False
        self._weights: tuple[Tensor, ...] | None = None

    # -- the hooks on the model ------------------------------------------------------------------
    def _begin(self, module: nn.Module, args) -> None:
        self._active, self._weights = True, None

    def _end(self, module: nn.Module, args, output) -> None:
        self._active, self._weights = False, None

    # -- what a layer asks -----------------------------------------------------------------------
    def serves(self) -> bool:
        """True inside the model's forward, where the group generates its layers' weights."""
        if not self._active:
            return False
        use = WeightGroup.enabled if WeightGroup.enabled is not None else _GROUP_ENV
        return use if use is not None else self.layers[0].bank.templates.is_cuda

    def weight(self, layer, dtype: torch.dtype, memory_format: torch.memory_format) -> Tensor:
        """``layer``'s weight, every layer's computed on the first request of this forward."""
        if self._weights is None:
            sources = [bank.templates if coefficients is None and bank.rank == 1 else bank.mix(coefficients)
                       for bank, coefficients in self.sources]
            scalars = [la.alpha for la in self.layers]
            # a bank's mixture made under autocast is bf16: generate in the scalars' dtype, as the fused path does
            sources = [s if s.dtype == scalars[0].dtype else s.to(scalars[0].dtype) for s in sources]
            if self.rows == 2:
                scalars += [la.beta for la in self.layers]
            self._weights = _GroupRepeat.apply(self, dtype, memory_format, *sources, *scalars)
        return self._weights[layer._group_slot]

    # -- index tensors, made once per device and memory format --------------------------------
    def sign(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(2, 1): +1 for the alphas, -1 for the betas (swish: glu of (alpha s, -beta s))."""
        key = (device, dtype)
        if key not in self._sign:
            self._sign[key] = torch.tensor([[1.0], [-1.0]], device=device, dtype=dtype)
        return self._sign[key]

    def index(self, device: torch.device, memory_format: torch.memory_format) -> _Index:
        """Where every weight element of every layer comes from, in memory order (see :class:`_Index`)."""
        key = (device, memory_format)
        if key not in self._index:
            self._index[key] = _index_to(self._build_index(memory_format), device)
        return self._index[key]

    def _build_index(self, memory_format: torch.memory_format) -> _Index:
        """Every tensor's shape follows from the layers' shapes alone (no ``unique``/``bincount``:
        were this traced by ``torch.compile``, a data-dependent shape would break the graph)."""
        source_starts = list(itertools.accumulate([0, *self.spans.source_sizes[:-1]]))
        pair_starts = list(itertools.accumulate([0, *self.pair_counts[:-1]]))
        channels_last = memory_format == torch.channels_last
        src, pair, run_lengths, run_pairs = [], [], [], []
        for layer, k, p0 in zip(self.layers, self._source_of, pair_starts, strict=True):
            big_o, big_i, k1, k2 = layer.target_shape
            o, i = layer.bank.source_shape[:2]
            rows = torch.arange(big_o).view(-1, 1, 1, 1) % o
            cols = torch.arange(big_i).view(1, -1, 1, 1) % i
            kernel = torch.arange(k1 * k2).view(1, 1, k1, k2)
            s = source_starts[k] + (rows * i + cols) * (k1 * k2) + kernel
            tiles = p0 + _tile_index((o, i), (big_o, big_i))[0]  # on the CPU: the layer's may be on meta
            t = tiles.view(big_o, big_i, 1, 1).expand(big_o, big_i, k1, k2)
            # runs of one pair in memory order: a column tile of one output row (contiguous), or of
            # one output row and kernel position (channels_last); neighbours may share a pair
            col_starts = list(range(0, big_i, i))
            widths = torch.tensor([min(i, big_i - c) for c in col_starts])
            pairs = tiles[:, col_starts]  # (O, column tiles)
            if channels_last:
                s, t = s.permute(0, 2, 3, 1), t.permute(0, 2, 3, 1)
                run_lengths.append(widths.repeat(big_o * k1 * k2))
                run_pairs.append(pairs.repeat_interleave(k1 * k2, dim=0).reshape(-1))
            else:
                run_lengths.append((widths * (k1 * k2)).repeat(big_o))
                run_pairs.append(pairs.reshape(-1))
            src.append(s.reshape(-1))
            pair.append(t.reshape(-1))
        source, pair_of = torch.cat(src), torch.cat(pair)
        run_pair = torch.cat(run_pairs)
        dtype = torch.int32 if source.numel() < 2**31 else torch.int64

        def offsets(lengths: Tensor) -> Tensor:
            return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])

        def counts(values: Tensor, n: int) -> Tensor:
            return torch.zeros(n, dtype=values.dtype).index_add_(0, values, torch.ones_like(values))

        per_row = (self.rows, -1)
        return _Index(
            source=source.to(dtype), pair=pair_of.to(dtype),
            by_source=torch.argsort(source, stable=True).to(dtype),
            source_offsets=offsets(counts(source, self.source_numel)),
            run_offsets=offsets(torch.cat(run_lengths)).expand(per_row).contiguous(),
            runs_by_pair=torch.argsort(run_pair, stable=True).to(dtype),
            pair_offsets=offsets(counts(run_pair, self.n_pairs)).expand(per_row).contiguous(),
        )

    def __getstate__(self) -> dict:
        # index tensors are rebuilt on demand; a pickled or copied model does not carry them
        return {**self.__dict__, "_index": {}, "_sign": {}, "_active": False, "_weights": None}


def attach_weight_groups(model: nn.Module, layers: list) -> list[WeightGroup]:
    """Group ``layers`` (the model's repeated layers' parametrizations) by scalar map and attach each
    group to ``model``'s forward. Layers that are not eligible keep the per-layer path."""
    by_map: dict[str, list] = {}
    for layer in layers:
        if _eligible(layer):
            by_map.setdefault(layer.map.name, []).append(layer)
    groups = [WeightGroup(members) for members in by_map.values()]
    for group in groups:
        model.register_forward_pre_hook(group._begin)
        model.register_forward_hook(group._end, always_call=True)
    return groups


def detach_weight_groups(model: nn.Module) -> None:
    """Remove the groups' hooks from ``model`` and unlink every layer of it from its group (found by
    the hooks themselves, not by stored handles, so this also works on a copy or an unpickled model)."""
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key, hook in list(hooks.items()):
            if isinstance(getattr(hook, "__self__", None), WeightGroup):
                del hooks[key]
                model._forward_hooks_always_called.pop(key, None)
    for module in model.modules():
        if module.__dict__.get("_group") is not None:
            module._group = None


def model_groups(model: nn.Module) -> list[WeightGroup]:
    """The weight groups of ``model``'s repeated layers."""
    groups = {id(m._group): m._group for m in model.modules() if getattr(m, "_group", None) is not None}
    return list(groups.values())


def prepare_weight_groups(model: nn.Module, device: torch.device, memory_format: torch.memory_format) -> None:
    """Build the tensors ``model``'s groups make once per device (index, sign) now, for code about
    to ``torch.compile`` the model: made by a first forward under compile, their making is traced
    into the graph, and once they are cached the graph's guards fail, so the model compiles twice.
    Groups that will not serve on ``device`` (their switch) are left alone."""
    device = torch.device(device)
    use = WeightGroup.enabled if WeightGroup.enabled is not None else _GROUP_ENV
    if not (use if use is not None else device.type == "cuda"):
        return
    for group in model_groups(model):
        group.index(device, memory_format)
        group.sign(device, group.layers[0].alpha.dtype)


@contextmanager
def generated_together(model: nn.Module) -> Iterator[None]:
    """Inside, ``model``'s layers get their weights from their groups, as inside ``model``'s forward
    (for code that reads the weights without calling the model: op counts, benchmarks)."""
    groups = model_groups(model)
    for group in groups:
        group._begin(model, ())
    try:
        yield
    finally:
        for group in groups:
            group._end(model, (), None)
