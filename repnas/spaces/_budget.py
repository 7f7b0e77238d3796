"""The budget solver: source widths that put a candidate just under a parameter budget.

A sampled point fixes the *shape* of the repetition (depths, width factors, sharing, rank); the
solver picks the source widths ``W_s`` (stage s is then ``W_s * width_rep_s`` channels wide) so that
the trainable parameter count is as close to the budget as possible without exceeding it. That is
what makes candidates comparable: at a fixed budget the search compares *how* parameters are
repeated, not how many there are.

How the count is measured: in closed form (:func:`plan_params`, the base model's conv layout built
once on ``torch.device("meta")`` plus the plan's effect), because building and rescaling a model
for each of the solver's dozen counts is slow. The answer is then checked against
``repnas.rescale.count_params`` of the really built (meta) model, and solved again with real counts
if they differ, so the count is exactly what the trainer will report. The count is monotone in
every ``W_s``, so the solver bisects a common scale of the reference widths, then greedily widens
single stages while the budget allows (a finer step than the common scale; it lands within a few
percent under the budget).

A ``shape: fixed`` space gives the physical widths instead; :func:`solve_fixed_shape` then only
sizes the sources of the convs that own weights, by one scale of the physical widths.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from repnas.errors import UserError
from repnas.spaces._lenders import apply_lenders, drop_misfits

if TYPE_CHECKING:
    from repnas.spaces._datasets_info import DatasetInfo
    from repnas.spaces._space import Architecture, SearchSpace


class InfeasibleError(UserError):
    """The smallest widths of a candidate already exceed the budget; ``min_params`` says by how much."""

    def __init__(self, message: str, min_params: int):
        super().__init__(message)
        self.min_params = min_params


@dataclass(frozen=True)
class Solution:
    """The solver's answer for one point: widths, the model config and its exact parameter count.

    ``source_widths`` are the owned sources' widths per stage; with ``shape: fixed`` they equal
    ``physical_widths`` when the plain convs fit the budget.
    """

    source_widths: tuple[int, ...]
    physical_widths: tuple[int, ...]
    params: int
    budget: int
    model_config: dict[str, Any]
    #: lines ``--dry-run`` prints under the candidate (a model space: what repeats, what stays plain)
    notes: tuple[str, ...] = ()

    @property
    def fill(self) -> float:
        """params / budget (<= 1)."""
        return self.params / self.budget


# --------------------------------------------------------------------- conv layout of a base model
@dataclass(frozen=True)
class _Conv:
    name: str
    out: int
    in_: int
    kernel: tuple[int, ...]
    role: str  # stem | first | inner | shortcut
    stage: int  # -1 for the stem


@lru_cache(maxsize=256)
def _conv_layout(family: str, base: str, kwargs_json: str, in_channels: int, depths: tuple[int, ...]):
    """(convs with role and stage, parameter count) of a base model, built on the meta device."""
    from repnas.spaces._registry import build_model

    with torch.device("meta"):
        model = build_model({"base": base, "kwargs": json.loads(kwargs_json)}, 10, in_channels)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    base_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def conv(name: str, m: nn.Conv2d, role: str, stage: int) -> _Conv:
        return _Conv(name, m.out_channels, m.in_channels // m.groups, tuple(m.kernel_size), role, stage)

    layout: list[_Conv] = []
    if family == "vgg":
        it = iter(convs)
        for s, depth in enumerate(depths):
            for j in range(depth):
                name, m = next(it)
                layout.append(conv(name, m, "first" if j == 0 else "inner", s))
        return tuple(layout), base_params

    # resnet / wrn: a stem, then per block conv1 ("first" of the stage's block 0 or "inner") and conv2,
    # plus 1x1 projection shortcuts, assigned to the block whose conv1 shares the longest name prefix.
    (stem_name, stem), rest = convs[0], convs[1:]
    layout.append(conv(stem_name, stem, "stem", -1))
    main = [(n, m) for n, m in rest if tuple(m.kernel_size) != (1, 1)]
    shortcuts = [(n, m) for n, m in rest if tuple(m.kernel_size) == (1, 1)]
    if len(main) != 2 * sum(depths):
        raise ValueError(f"{base}: expected {2 * sum(depths)} 3x3 convs in blocks, found {len(main)}")
    block_of: list[tuple[str, int]] = []  # (conv1 name, stage)
    k = 0
    for s, depth in enumerate(depths):
        for b in range(depth):
            (n1, m1), (n2, m2) = main[k], main[k + 1]
            k += 2
            layout.append(conv(n1, m1, "first" if b == 0 else "inner", s))
            layout.append(conv(n2, m2, "inner", s))
            block_of.append((n1, s))
    for name, m in shortcuts:
        parts = name.split(".")

        def shared(other: str, parts: list[str] = parts) -> int:
            count = 0
            for a, b in zip(parts, other.split("."), strict=False):
                if a != b:
                    break
                count += 1
            return count

        _, stage = max(block_of, key=lambda blk: shared(blk[0]))
        layout.append(conv(name, m, "shortcut", stage))
    return tuple(layout), base_params


def plan_for(space: SearchSpace, arch: Architecture, widths: tuple[int, ...], config: dict,
             in_channels: int) -> dict:
    """The RepetitionPlan dict of ``arch`` with source widths ``widths`` on ``config``'s base model."""
    layout, _ = _conv_layout(space.family, config["base"], json.dumps(config["kwargs"], sort_keys=True),
                             in_channels, arch.depths)
    physical = space.physical_widths(arch, widths)
    layers: dict[str, dict[str, Any]] = {}
    banks: dict[str, dict[str, int]] = {}

    stem = next((c for c in layout if c.role == "stem"), None)
    stem_src = None
    if stem is not None:
        stem_src = widths[0] if stem.out == physical[0] else stem.out
        if stem_src != stem.out:
            layers[stem.name] = {"own": [stem_src, stem.in_]}

    def src_in(c: _Conv) -> int:
        """Source input width of a conv: the source width of whatever feeds it (if it tiles to it)."""
        if c.role == "inner":
            return widths[c.stage]
        if c.stage > 0:
            feeder_physical, feeder_source = physical[c.stage - 1], widths[c.stage - 1]
        elif stem is not None:
            feeder_physical, feeder_source = stem.out, stem_src
        else:  # the image
            return c.in_
        return feeder_source if c.in_ == feeder_physical else c.in_

    own: dict[str, tuple[int, int]] = {}
    for c in layout:
        if c.role != "stem":
            own[c.name] = (widths[c.stage], src_in(c))

    def fits(c: _Conv, shape: tuple[int, int]) -> bool:
        return shape[0] <= c.out and shape[1] <= c.in_

    image_facing = {c.name for c in layout
                    if c.role == "stem" or (stem is None and c.stage == 0 and c.role == "first")}
    network_bank: list[_Conv] = []
    for s, share in enumerate(arch.shares):
        stage_convs = [c for c in layout if c.stage == s and c.role in ("first", "inner")]
        if share == "borrow":
            candidates = [c for c in stage_convs if c.name not in image_facing]
            if candidates:
                anchor = candidates[0]
                for c in candidates[1:]:
                    if fits(c, own[anchor.name]) and c.kernel == anchor.kernel:
                        layers[c.name] = {"borrow": anchor.name}
        elif share == "bank":
            members = [c for c in stage_convs if c.name not in image_facing
                       and fits(c, (widths[s], widths[s]))]
            if arch.bank_scope == "network":
                network_bank += members
            elif len(members) >= 2:
                banks[f"stage{s}"] = {"out": widths[s], "in": widths[s], "rank": arch.rank}
                for c in members:
                    layers[c.name] = {"bank": f"stage{s}"}
    if network_bank:
        kernel = network_bank[0].kernel
        members = [c for c in network_bank if c.kernel == kernel]
        size = min(widths[c.stage] for c in members)
        if len(members) >= 2:
            banks["network"] = {"out": size, "in": size, "rank": arch.rank}
            for c in members:
                layers[c.name] = {"bank": "network"}
    replaced = _lend(layout, layers, arch) if arch.lenders else {}
    keep_full = arch.full_source == "own"
    for c in layout:
        if c.name not in layers and c.role != "stem" and (keep_full or own[c.name] != (c.out, c.in_)):
            layers[c.name] = {"own": list(own[c.name])}
    if arch.lenders:
        drop_misfits([c.name for c in layout], {c.name: (c.out, c.in_, c.kernel) for c in layout},
                     layers, banks, own, replaced, keep_full)
        used = {rule["bank"] for rule in layers.values() if "bank" in rule}
        for name in [b for b in banks if b not in used]:
            del banks[name]
    order = {c.name: k for k, c in enumerate(layout)}
    plan: dict[str, Any] = arch.plan_header()
    if banks:
        plan["banks"] = banks
    plan["layers"] = dict(sorted(layers.items(), key=lambda kv: order[kv[0]]))
    # the space's plan_options (e.g. a family's) under what the point itself decides
    return {**space.plan_options, **plan}


def _lend(layout: tuple[_Conv, ...], layers: dict[str, dict], arch: Architecture) -> dict[str, dict | None]:
    """Apply the ``lender.<s>.<j>`` knobs over the share rules (slot j = j-th main conv of stage s)."""
    main: dict[tuple[int, int], str] = {}
    per_stage: dict[int, int] = {}
    for c in layout:
        if c.role in ("first", "inner"):
            j = per_stage.get(c.stage, 0)
            main[(c.stage, j)] = c.name
            per_stage[c.stage] = j + 1
    return apply_lenders(main, layers, arch.lenders)


# --------------------------------------------------------------------- counting and solving
def plan_params(model_config: dict, family: str, depths: tuple[int, ...], in_channels: int) -> int:
    """Trainable parameters of a base + plan ModelConfig in closed form (fast path of the solver).

    Building and rescaling a model costs ~0.1 s on the meta device for a ResNet (tile indices go
    through torch's slow meta dispatch), and the solver needs a dozen counts per point. So the plan's
    effect is added up here: a repeated conv loses its weight and gains its own source, bank
    coefficients and ``scalars_per_tile`` per tile (``repnas.rescale.tile_layout``); banks count once.
    ``solve_point`` checks the final answer against ``count_params`` of the really built model.
    """
    layout, params = _conv_layout(family, model_config["base"],
                                  json.dumps(model_config["kwargs"], sort_keys=True), in_channels, depths)
    shapes = {c.name: (c.out, c.in_, c.kernel) for c in layout}
    return params + plan_delta(shapes, model_config.get("plan") or {})


def plan_delta(shapes: dict[str, tuple[int, int, tuple[int, ...]]], plan: dict) -> int:
    """How many trainable parameters ``plan`` adds to a model whose convs have ``shapes`` (name ->
    (out, in per group, kernel)): each repeated conv loses its weight and gains its own source, bank
    coefficients and ``scalars_per_tile`` per tile (``repnas.rescale.tile_layout``); banks count once.
    Shared by the families' solver (:func:`plan_params`) and model spaces (``_model_space``)."""
    from repnas.rescale import SCALAR_MAPS, tile_layout

    layers, banks = plan.get("layers") or {}, plan.get("banks") or {}
    params = 0

    def source(name: str) -> tuple[int, int]:
        rule = layers.get(name)
        while rule is not None and "borrow" in rule:
            name, rule = rule["borrow"], layers.get(rule["borrow"])
        if rule is None:  # a plain lender keeps its full weight
            return shapes[name][0], shapes[name][1]
        if "own" in rule:
            return tuple(rule["own"])  # type: ignore[return-value]
        bank = banks[rule["bank"]]
        return bank["out"], bank["in"]

    used_banks = set()
    for name, rule in layers.items():
        out, in_, kernel = shapes[name]
        k2 = kernel[0] * kernel[1]
        params -= out * in_ * k2
        if "own" in rule:
            params += rule["own"][0] * rule["own"][1] * k2
        elif "bank" in rule:
            params += banks[rule["bank"]].get("rank", 1)
            if rule["bank"] not in used_banks:
                used_banks.add(rule["bank"])
                bank = banks[rule["bank"]]
                params += bank.get("rank", 1) * bank["out"] * bank["in"] * k2
        src = source(name)
        if src != (out, in_):
            r0, r1, e0, e1 = tile_layout(src, (out, in_))
            per_tile = SCALAR_MAPS[rule.get("map") or plan.get("map", "swish")].scalars_per_tile
            params += per_tile * (r0 * r1 + (e0 > 0) + (e1 > 0))
    return params


def count_config_params(model_config: dict, num_classes: int, in_channels: int) -> int:
    """Trainable parameters of a ModelConfig, built on the meta device (no memory, no init)."""
    from repnas.rescale import count_params
    from repnas.spaces._registry import build_model

    with torch.device("meta"):
        model = build_model(model_config, num_classes, in_channels)
    return count_params(model)


def _head_delta(config: dict, num_classes: int) -> int:
    """Layouts are built with 10 classes; the classifier's size changes with the class count."""
    if num_classes == 10:
        return 0
    return (num_classes - 10) * (_last_width(config) + 1)


def _last_width(config: dict) -> int:
    kwargs = config["kwargs"]
    if "cfg" in kwargs:
        return [v for v in kwargs["cfg"] if v != "M"][-1]
    return kwargs["widths"][-1]


def _estimate_params(config: dict, family: str, depths: tuple[int, ...], info) -> int:
    """:func:`plan_params` for the dataset's channels and classes (the solver's fast count)."""
    return plan_params(config, family, depths, info.in_channels) + _head_delta(config, info.num_classes)


def solve_point(space: SearchSpace, point: dict[str, Any], budget: int, dataset: str | DatasetInfo,
                exact: bool = False) -> Solution:
    """Source widths for ``point`` with params <= ``budget`` and as close to it as the widths allow."""
    from repnas.spaces._datasets_info import dataset_info

    if space.shape == "fixed":
        return solve_fixed_shape(space, point, budget, dataset, exact)
    info = dataset_info(dataset)
    arch = space.architecture(point)
    refs = space.widths
    count, cache = _param_counter(space, arch, info, exact)

    def at_scale(scale: float) -> tuple[int, ...]:
        return tuple(max(space.min_width, round(scale * r)) for r in refs)

    smallest = at_scale(0.0)
    if count(smallest) > budget:
        raise InfeasibleError(f"{_describe(point)} needs at least {count(smallest):,} params "
                              f"(budget {budget:,})", count(smallest))
    # Bisect the common scale: lo fits, hi does not.
    lo, hi = 0.0, 1.0
    while count(at_scale(hi)) <= budget:
        lo, hi = hi, hi * 2
        if hi > 2**16:
            raise UserError(f"budget {budget:,} is out of reach of space {space.name!r} (widths diverge)")
    for _ in range(40):
        mid = (lo + hi) / 2
        if count(at_scale(mid)) <= budget:
            lo = mid
        else:
            hi = mid
        if at_scale(hi)[0] - at_scale(lo)[0] <= 0 and max(
                h - low for h, low in zip(at_scale(hi), at_scale(lo), strict=True)) <= 1:
            break
    best = at_scale(lo)
    # Widen single stages (the widest first: they move the count most) while the budget allows.
    improved = True
    while improved:
        improved = False
        for s in sorted(range(len(refs)), key=lambda k: -refs[k]):
            trial = tuple(w + 1 if k == s else w for k, w in enumerate(best))
            if count(trial) <= budget:
                best, improved = trial, True
    params, config = cache[best]
    if not exact:
        real = count_config_params(config, info.num_classes, info.in_channels)
        if real != params:  # the closed form missed something: solve again with real counts
            return solve_point(space, point, budget, dataset, exact=True)
    physical = tuple(w * r for w, r in zip(best, arch.width_reps, strict=True))
    return Solution(source_widths=best, physical_widths=physical, params=params, budget=budget,
                    model_config=config)


#: Scales the fixed-shape solver probes first: 2**(-k/4) down to about 1/1000 of the physical widths.
_FIXED_SCALES = tuple(2 ** (-k / 4) for k in range(41))


def _fixed_widths(space: SearchSpace, physical: tuple[int, ...], scale: float) -> tuple[int, ...]:
    """Source widths at ``scale`` of the physical ones: at least ``min_width``, at most physical."""
    return tuple(min(p, max(space.min_width, round(scale * p))) for p in physical)


def solve_fixed_shape(space: SearchSpace, point: dict[str, Any], budget: int, dataset: str | DatasetInfo,
                      exact: bool = False) -> Solution:
    """``shape: fixed``: the physical widths are given; pick how large the owned sources are.

    Every owning stage's source is ``round(t * physical)`` (at least ``min_width``, at most the
    physical width) for one scale ``t <= 1``: the largest ``t`` whose count fits the budget. If the
    plain-width sources fit, the convs stay plain (a point like RepVGG-6 at its own count is
    exactly RepVGG-6). The count is not monotone at tiny sources (a 2-channel source tiled over
    512 channels needs 2 scalars per tile, tens of thousands), so the solver first probes a fixed
    geometric ladder of scales for the largest one that fits, then bisects between it and the next
    rung up: a fixed number of closed-form counts, whatever the space's ranges.
    """
    from repnas.spaces._datasets_info import dataset_info

    info = dataset_info(dataset)
    arch = space.architecture(point)
    physical = space.physical_widths(arch, space.widths)
    count, cache = _param_counter(space, arch, info, exact)

    def at_scale(scale: float) -> tuple[int, ...]:
        return _fixed_widths(space, physical, scale)

    lo = next((t for t in _FIXED_SCALES if count(at_scale(t)) <= budget), None)
    if lo is None:
        smallest = min(count(at_scale(t)) for t in _FIXED_SCALES)
        raise InfeasibleError(f"{_describe(point)} needs at least {smallest:,} params "
                              f"(budget {budget:,})", smallest)
    if lo < 1.0:
        hi = lo * 2 ** 0.25  # the rung above: it does not fit
        for _ in range(40):
            low_w, high_w = at_scale(lo), at_scale(hi)
            if sum(h - w for h, w in zip(high_w, low_w, strict=True)) <= 1:
                break
            mid = (lo + hi) / 2
            if count(at_scale(mid)) <= budget:
                lo = mid
            else:
                hi = mid
    best = at_scale(lo)
    params, config = cache[best]
    if not exact:
        real = count_config_params(config, info.num_classes, info.in_channels)
        if real != params:  # the closed form missed something: solve again with real counts
            return solve_fixed_shape(space, point, budget, dataset, exact=True)
    return Solution(source_widths=best, physical_widths=physical, params=params, budget=budget,
                    model_config=config)


def _describe(point: dict[str, Any]) -> str:
    if not point:
        return "the candidate"
    return "candidate " + ", ".join(f"{k}={v}" for k, v in sorted(point.items()))


def smallest_candidate(space: SearchSpace, dataset: str | DatasetInfo | None = None, samples: int = 1024) -> int:
    """The fewest parameters any candidate of ``space`` can have (all at the smallest widths).

    The count grows with depth (each layer adds at least its bias and BatchNorm), so depths are
    held at their smallest values and the other knobs are enumerated: exact when they have at most
    ``samples`` combinations, else the minimum over ``samples`` seeded random ones (an upper bound).
    Width factors are not monotone: a factor that makes a stage as wide as the stem removes its
    projection shortcut. A ``shape: fixed`` point's fewest is over the solver's ladder of scales
    (tiny sources need many tile scalars), so those spaces try at most 64 points.
    """
    import itertools
    import random

    from repnas.spaces._datasets_info import dataset_info

    if hasattr(space, "smallest_params"):  # a model space (``_model_space``) knows its own
        return space.smallest_params(dataset)
    info = dataset_info(dataset or space.dataset)
    monotone = {n: min(k.choices) if k.choices is not None else k.low for n, k in space.knobs.items()
                if n.partition(".")[0] == "depth"}
    names = [n for n in space.knobs if n not in monotone]
    grids = [space.knobs[n].grid() or [space.knobs[n].low] for n in names]
    if space.shape == "fixed":  # each point needs a scan over scales (see solve_fixed_shape)
        samples = min(samples, 64)
    if math.prod(len(g) for g in grids) <= samples:
        points = [dict(zip(names, values, strict=True)) for values in itertools.product(*grids)]
    else:
        rng = random.Random(0)
        points = [{n: rng.choice(g) for n, g in zip(names, grids, strict=True)} for _ in range(samples)]
    smallest = tuple(space.min_width for _ in space.widths)
    counts = []
    for point in points:
        arch = space.architecture({**point, **monotone})
        if space.shape == "fixed":
            counts.append(_fixed_shape_minimum(space, arch, info))
            continue
        config = space.model_config(arch, smallest, info.in_channels)
        counts.append(_estimate_params(config, space.family, arch.depths, info))
    return min(counts)


def _fixed_shape_minimum(space: SearchSpace, arch: Architecture, info) -> int:
    """The fewest parameters of a fixed-shape architecture over the solver's ladder of scales."""
    physical = space.physical_widths(arch, space.widths)
    counts = []
    for scale in _FIXED_SCALES:
        config = space.model_config(arch, _fixed_widths(space, physical, scale), info.in_channels)
        counts.append(_estimate_params(config, space.family, arch.depths, info))
    return min(counts)


def _param_counter(space, arch, info, exact: bool):
    """``count(widths)``: the params of the space's model at ``widths`` (exact build or closed-form
    estimate), memoised in the returned ``cache`` {widths: (params, model config)} both solvers share."""
    cache: dict[tuple[int, ...], tuple[int, dict]] = {}

    def count(widths: tuple[int, ...]) -> int:
        if widths not in cache:
            config = space.model_config(arch, widths, info.in_channels)
            if exact:
                cache[widths] = (count_config_params(config, info.num_classes, info.in_channels), config)
            else:
                cache[widths] = (_estimate_params(config, space.family, arch.depths, info), config)
        return cache[widths][0]

    return count, cache
