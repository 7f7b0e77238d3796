"""The repeated weight: a ``torch.nn.utils.parametrize`` parametrization of a conv's ``weight``.

Given a source ``S`` of shape (o, i, k, k) and a target weight shape (O, I, k, k) (PAPER.md):

* ``r0 = O // o`` and ``r1 = I // i`` tiles; tile (a, b) is ``f(S; alpha_ab, beta_ab)`` placed at
  ``out[a*o + p, b*i + q] = f(S[p, q])`` (contiguous blocks).
* Remainders (``e0 = O % o`` extra output filters, ``e1 = I % i`` extra input channels), each with
  one extra scalar pair, by one of two rules (docs/method.md):

  - ``paper`` (the authors' code, and PAPER.md read literally): the extras are taken from the
    *already mapped* tensor and mapped again. Extra row ``r0*o + p`` is ``f_e0(T[p])`` where ``T`` is
    the mapped whole-tile tensor, so its column block ``b`` is ``f_e0(f_(0,b)(S[p]))``; extra column
    ``r1*i + q`` is ``f_e1`` of column ``q`` of everything above, so its row block ``a`` is
    ``f_e1(f_(a,0)(S[:, q]))`` and the corner is ``f_e1(f_e0(f_(0,0)(S[p, q])))`` (three maps).
  - ``source`` (repnas before plan version 2): every element is one map of the raw source,
    ``f(S[x % o, y % i])``, with the scalars of the tile (x, y) falls in; the corner takes the
    input-side pair.
* ``(o, i) == (O, I)``: no tiling and no scalars (plain weight, possibly shared or mixed).

Without remainders both rules are the same function and the forward pass broadcasts the source
against the per-tile scalars. With remainders, ``source`` builds the periodic tiling with one
``repeat`` and gathers the scalars into an (O, I) map; ``paper`` maps the whole tiles as above and
appends the mapped remainder rows, then columns. Either way the cost is a handful of elementwise
kernels over the physical weight, however many tiles there are.

Why ``parametrize``: the conv stays an ``nn.Conv2d`` (stride, padding, groups, bias and every tool
that inspects convs keep working), ``parametrize.cached()`` computes a shared weight once per forward,
and ``remove_parametrizations`` turns it back into a plain layer (see ``materialize``). The
parametrization takes no "original" tensor (``right_inverse`` returns an empty tuple): the source
lives in a :class:`TemplateBank` that several layers may reference.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from repnas.rescale._bank import TemplateBank
from repnas.rescale._fused import FusedLayout, fused_weight
from repnas.rescale._maps import get_scalar_map

_FUSED_ENV = {"1": True, "0": False}.get(os.environ.get("REPNAS_FUSED", ""))


def exporting() -> bool:
    """True while the model is being exported (``torch.onnx.export``, ``torch.export``, a jit trace),
    where repeated weights take the reference ops. Asked per layer per forward, so only the two
    flags that cover every export: the TorchScript ONNX exporter traces with the jit tracer and the
    dynamo one captures with ``torch.export`` (strict, non-strict or draft), so
    ``torch.onnx.is_in_onnx_export()`` adds nothing but ~2.4 us per call (two imports; 0.5 us for
    these two) and a 0.14 s import of ``torch.onnx`` at the first forward (measured on a CPU)."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def tile_layout(source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(r0, r1, e0, e1): whole tiles and remainders along output and input channels."""
    (o, i), (big_o, big_i) = source, target
    return big_o // o, big_i // i, big_o % o, big_i % i


def _tile_index(source: tuple[int, int], target: tuple[int, int]) -> tuple[Tensor, int]:
    """An (O, I) map from each weight position to the index of its scalar pair, and the pair count.

    Pairs 0 .. r0*r1-1 are the whole tiles (row-major in (a, b)); then one pair for the output
    remainder (if any), then one for the input remainder (if any).
    """
    (o, i), (big_o, big_i) = source, target
    r0, r1, e0, e1 = tile_layout(source, target)
    rows = torch.arange(big_o) // o  # tile row a, == r0 inside the output remainder
    cols = torch.arange(big_i) // i  # tile column b, == r1 inside the input remainder
    index = rows[:, None] * r1 + cols[None, :]
    n_pairs = r0 * r1
    if e0:
        index[r0 * o :, :] = n_pairs
        n_pairs += 1
    if e1:
        index[:, r1 * i :] = n_pairs
        n_pairs += 1
    return index, n_pairs


class RepeatWeight(nn.Module):
    """Generates a conv weight of ``target_shape`` by tiling a bank's (mixed) source.

    Args:
        bank: the template bank holding the source(s); may be shared with other layers.
        target_shape: the conv's weight shape (O, I, k, k) (I is in_channels // groups).
        scalar_map: ``swish`` | ``linear`` | ``none`` (see ``_maps``).
        coefficients: this layer's mixing coefficients over the bank's templates, or None to take
            template 0 as is (own source or plain borrow). May be a Parameter shared with a lender.
        scalar_init: ``xavier`` (the authors': whole-tile scalars xavier-uniform on a (1, r0*r1)
            tensor, remainder scalars U(0, 1)) or ``identity`` (the map starts as the identity, so
            the layer starts as pure tiling).
        source_name: where the source comes from, for tables (``own``, ``borrow:NAME``, ``bank:NAME``).
        remainder: ``paper`` (maps on maps, the authors') or ``source`` (see the module docstring).
    """

    def __init__(
        self,
        bank: TemplateBank,
        target_shape: tuple[int, int, int, int],
        scalar_map: str = "swish",
        coefficients: nn.Parameter | None = None,
        scalar_init: str = "xavier",
        source_name: str = "own",
        remainder: str = "paper",
    ):
        super().__init__()
        o, i, *kernel = bank.source_shape
        big_o, big_i, *target_kernel = target_shape
        if kernel != target_kernel:
            raise ValueError(f"kernel {tuple(kernel)} of the source differs from the layer's {tuple(target_kernel)}")
        if o > big_o or i > big_i:
            raise ValueError(f"source ({o}, {i}) is larger than the layer's weight ({big_o}, {big_i})")
        if remainder not in ("paper", "source"):
            raise ValueError(f"unknown remainder rule {remainder!r}; choose 'paper' or 'source'")
        self.remainder = remainder
        self.bank = bank
        self.coefficients = coefficients
        self.target_shape = tuple(target_shape)
        self.source_name = source_name
        self.map = get_scalar_map(scalar_map)
        self.tiled = (o, i) != (big_o, big_i)
        n_scalars = self.map.scalars_per_tile if self.tiled else 0
        index, n_pairs = _tile_index((o, i), (big_o, big_i))
        self.register_buffer("tile_index", index, persistent=False)
        self.n_pairs = n_pairs
        # alpha and beta are separate 1-D parameters, so "no weight decay on ndim < 2" excludes them.
        self.alpha = nn.Parameter(torch.empty(n_pairs)) if n_scalars >= 1 else None
        self.beta = nn.Parameter(torch.empty(n_pairs)) if n_scalars >= 2 else None
        self.reset_scalars(scalar_init)
        self._fused = (
            FusedLayout((o, i), (big_o, big_i), self.map.name, remainder)
            if self.tiled and self.map.name in ("swish", "linear") else None
        )
        # the fused function's tile -> pair index (source rule with remainders): a buffer, so it is
        # made once and moves with the model, and a step neither copies it to the device, nor
        # breaks a CUDA graph capture, nor traces its construction under torch.compile
        pairs = torch.tensor(self._fused.tile_pairs()) if self._fused is not None and self._fused.cropped else None
        self.register_buffer("fused_pairs", pairs, persistent=False)

    @property
    def layout(self) -> tuple[int, int, int, int]:
        """(r0, r1, e0, e1) of this layer's tiling."""
        return tile_layout(self.bank.source_shape[:2], self.target_shape[:2])

    @torch.no_grad()
    def reset_scalars(self, scalar_init: str = "xavier") -> None:
        r0, r1, _, _ = self.layout
        whole = r0 * r1
        for k, p in enumerate((self.alpha, self.beta)):
            if p is None:
                continue
            if scalar_init == "identity":
                p.fill_(self.map.identity[k])
            elif scalar_init == "xavier":
                bound = math.sqrt(6.0 / (1 + whole))  # xavier-uniform on a (1, r0*r1) tensor
                p[:whole].uniform_(-bound, bound)
                p[whole:].uniform_(0.0, 1.0)
            else:
                raise ValueError(f"unknown scalar_init {scalar_init!r}; choose 'xavier' or 'identity'")

    def source(self) -> Tensor:
        return self.bank.mix(self.coefficients)

    #: generate tiled weights with the fused function (``_fused``): None (default) = on CUDA only,
    #: True / False = everywhere / nowhere (tests, benchmarks; ``REPNAS_FUSED=1`` / ``0`` in the
    #: environment does the same). Why not on the CPU by default: the fused function rounds
    #: differently (glu's sigmoid, sums as matrix products), so a CPU run would not repeat the
    #: committed CPU runs bit for bit (the README search's front changed); on a GPU, where the
    #: kernels it saves are the cost, runs are not bitwise reproducible across kernels anyway.
    use_fused: bool | None = None
    #: the model-wide group this layer's weight is generated in (``_group``), if any
    _group = None
    _group_slot = 0

    def forward(self) -> Tensor:
        """The conv's weight: where a fused layout exists and is used, from the model's weight group
        (inside the model's forward) or :meth:`emit`; else :meth:`reference`."""
        # under a torch.func transform (vmap of stacked seeds, benchmarks/batched_seeds.py) the
        # reference ops: the fused function and the groups are autograd Functions without vmap rules;
        # and in an export (ONNX, torch.export, jit trace): the graph then holds plain ops that any
        # runtime has, not a Python function (repnas export materializes first anyway)
        if self._fused is not None and not torch._C._are_functorch_transforms_active() and not exporting():
            use = self.use_fused if self.use_fused is not None else _FUSED_ENV
            if use if use is not None else self.bank.templates.is_cuda:
                group = self._group
                if group is not None and group.serves():
                    return group.weight(self, *self._conv_format(self.bank.templates))
                return self.emit()
        return self.reference()

    @staticmethod
    def _conv_format(source: Tensor) -> tuple[torch.dtype, torch.memory_format]:
        """What the conv consumes: bf16 (the autocast dtype) channels_last under CUDA autocast (the
        trainer's setting), else the source's dtype, contiguous."""
        if source.is_cuda and torch.is_autocast_enabled("cuda"):
            return torch.get_autocast_dtype("cuda"), torch.channels_last
        return source.dtype, torch.contiguous_format

    def emit(self, memory_format: torch.memory_format | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """The weight from the fused function, in ``dtype`` and ``memory_format``. By default: what
        the conv consumes, i.e. bf16 (the autocast dtype) channels_last under CUDA autocast (the
        trainer's setting), so no cast or layout copy follows; else the source's dtype, contiguous."""
        source = self.source()
        if self._fused is None:
            raise ValueError(f"{self.extra_repr()}: no fused layout (untiled, or map 'none')")
        if memory_format is None or dtype is None:
            conv_dtype, conv_format = self._conv_format(source)
            memory_format = conv_format if memory_format is None else memory_format
            dtype = conv_dtype if dtype is None else dtype
        return fused_weight(source, self.alpha, self.beta, self._fused, dtype, memory_format, self.fused_pairs)

    def reference(self) -> Tensor:
        """The weight from plain autograd ops: the definition the fused function must equal."""
        source = self.source()
        if not self.tiled:
            return source
        big_o, big_i = self.target_shape[:2]
        o, i = source.shape[:2]
        r0, r1, e0, e1 = self.layout
        if not (e0 or e1):
            return self._whole_tiles(source, r0, r1)
        if self.remainder == "paper" and self.alpha is not None:
            weight = self._whole_tiles(source, r0, r1)
            pair = r0 * r1
            if e0:
                weight = torch.cat([weight, self._map_pair(weight[:e0], pair)], dim=0)
                pair += 1
            if e1:
                weight = torch.cat([weight, self._map_pair(weight[:, :e1], pair)], dim=1)
            return weight
        periodic = source.repeat(-(-big_o // o), -(-big_i // i), 1, 1)[:big_o, :big_i]
        if self.alpha is None:
            return periodic
        alpha = self.alpha[self.tile_index][:, :, None, None]
        beta = self.beta[self.tile_index][:, :, None, None] if self.beta is not None else None
        return self.map.apply(periodic, alpha, beta)

    def _whole_tiles(self, source: Tensor, r0: int, r1: int) -> Tensor:
        """The (r0*o, r1*i) tensor of mapped whole tiles. The source is broadcast against per-tile
        scalars shaped (r0, 1, r1, 1, 1, 1), so the map writes the weight in one pass per op, with no
        repeated copy of the source and no gather of scalars."""
        o, i, *kernel = source.shape
        tiles = source[None, :, None]  # (1, o, 1, i, k, k)
        if self.alpha is None:
            tiles = tiles.expand(r0, o, r1, i, *kernel)
        else:
            alpha = self.alpha.view(-1)[: r0 * r1].view(r0, 1, r1, 1, 1, 1)
            beta = self.beta.view(-1)[: r0 * r1].view(r0, 1, r1, 1, 1, 1) if self.beta is not None else None
            tiles = self.map.apply(tiles, alpha, beta)
        return tiles.reshape(r0 * o, r1 * i, *kernel)

    def _map_pair(self, w: Tensor, pair: int) -> Tensor:
        """``w`` through the map with scalar pair ``pair`` (a remainder's)."""
        beta = self.beta[pair] if self.beta is not None else None
        return self.map.apply(w, self.alpha[pair], beta)

    def right_inverse(self, weight: Tensor) -> tuple[()]:
        """The conv keeps no tensor of its own: the source lives in the bank."""
        return ()

    def n_scalars(self) -> int:
        return sum(p.numel() for p in (self.alpha, self.beta) if p is not None)

    def extra_repr(self) -> str:
        r0, r1, e0, e1 = self.layout
        return (
            f"target={self.target_shape}, tiles={r0}x{r1}+({e0},{e1}), map={self.map.name}, source={self.source_name}"
            + (f", remainder={self.remainder}" if e0 or e1 else "")
        )
