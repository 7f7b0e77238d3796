"""A search space over how *any* model repeats its weights: ``model:`` instead of ``family:``.

The fixed-shape spaces (``vgg11-shape``, ``wrn16-shape``) search how VGG11 or WRN-16-k fill a budget
without changing their physical shape. A :class:`ModelSpace` does the same for a user's network::

    name: resnet18
    model: torchvision.models:resnet18   # module:callable | timm:NAME | path/to/net.py:Net (_source.py)
    model_kwargs: {}                     # passed to the callable
    stem: conv1                          # optional: the module adapted to the input channels
    head: fc                             # optional: the module adapted to the class count
    budget: 1M
    dataset: cifar10
    epochs: 10
    knobs:                               # these are the defaults (``DEFAULT_KNOBS``)
      lender: auto                       # auto | per_conv | grouped | none  (_graph.py)
      share: {choices: [own, bank]}      # per equal-shape group of >= 2 convs
      rank: {choices: [1, 2, 4]}         # bank rank R
      map: {choices: [swish, linear]}
      grouped: tile                      # grouped/depthwise convs: tile (in whole groups) | plain

``shape: fixed`` always: the model is built as given (adapted to the dataset's classes and channels)
and the budget solver only decides how large the owned sources are, by one scale ``t <= 1`` of
every conv's weight, exactly as :func:`~repnas.spaces._budget.solve_fixed_shape` does for the
families (a geometric ladder of scales, then bisection; the closed-form count checked against the
really built model). A single conv may also be pinned or searched by name:
``lender.layer3.1.conv2: {choices: [none, layer3.0.conv2]}`` (only convs that fit are accepted).

The knobs come from the model's graph (``_graph.py``): lender choices are exactly the earlier convs
that fit. The trial's model is ``{base: external, kwargs: {source, model_kwargs, stem, head}, plan}``
(``_source.py``), so trials, ``repnas train``, ``describe``, ``export`` and the duplicate check build
it like any other ModelConfig.
"""

from __future__ import annotations

import difflib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from repnas.errors import UserError
from repnas.spaces._budget import (
    _FIXED_SCALES,
    InfeasibleError,
    Solution,
    count_config_params,
    plan_delta,
)
from repnas.spaces._budget_spec import parse_budget
from repnas.spaces._graph import NO_LENDER, SELF_LENDER, ConvNode, Graph, derive_knobs, plain_reasons, trace
from repnas.spaces._source import EXTERNAL, absolute_spec, build_source, parse_source
from repnas.spaces._space import Knob, SearchSpace, _plan_options, register_space_kind

if TYPE_CHECKING:
    from repnas.spaces._datasets_info import DatasetInfo

#: the knobs of a model space that names none (``repnas search --model SPEC``)
DEFAULT_KNOBS: dict[str, Any] = {
    "lender": "auto",
    "share": {"choices": ["own", "bank"]},
    "rank": {"choices": [1, 2, 4]},
    "map": {"choices": ["swish", "linear"]},
}
#: plain (not per-conv) knobs and their defaults; values are checked by RepetitionPlan
_SCALAR_KNOBS: dict[str, Any] = {"rank": 1, "map": "swish", "scalar_init": "xavier", "remainder": "paper",
                                 "source_init": "small_xavier", "bias_init": "zeros"}
_SETTINGS = {"lender": "auto", "grouped": "tile"}  # structural: fixed values, never searched
_KEYS = {"name", "description", "model", "model_kwargs", "stem", "head", "budget", "dataset", "epochs",
         "recipe", "knobs", "min_width", "shape", "plan_options"}
#: how many points :meth:`ModelSpace.smallest_params` tries (each over the ladder of scales)
_SMALLEST_SAMPLES = 32


@dataclass(frozen=True)
class Layout:
    """A built model's graph, trainable parameter count and conv shapes (what the solver needs)."""

    graph: Graph
    params: int
    shapes: dict[str, tuple[int, int, tuple[int, ...]]]
    plain: dict[str, str]  # conv -> why it stays plain


@lru_cache(maxsize=64)
def _layout(source: str, kwargs_json: str, num_classes: int, in_channels: int, image_size: int,
            grouped: str) -> Layout:
    """The model of ``source`` built on the meta device for one dataset shape, traced once."""
    kwargs = json.loads(kwargs_json)
    with torch.device("meta"):
        model = build_source(source, num_classes, in_channels, kwargs["model_kwargs"], kwargs["stem"],
                             kwargs["head"])
    graph = trace(model, (in_channels, image_size, image_size), source)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shapes = {c.name: (c.out, c.in_, c.kernel) for c in graph.convs}
    return Layout(graph, params, shapes, plain_reasons(graph, grouped))


@lru_cache(maxsize=16)
def _plain_flops(source: str, kwargs_json: str, num_classes: int, in_channels: int, image_size: int) -> int:
    from repnas.rescale import count_flops

    kwargs = json.loads(kwargs_json)
    model = build_source(source, num_classes, in_channels, kwargs["model_kwargs"], kwargs["stem"], kwargs["head"])
    return count_flops(model, (in_channels, image_size, image_size))


@dataclass
class ModelSpace(SearchSpace):
    """A fixed-shape space over a user's model (see the module docstring)."""

    model: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    stem: str | None = None
    head: str | None = None
    knob_spec: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=lambda: dict(_SETTINGS))

    # ----------------------------------------------------------------- the model
    def base_kwargs(self) -> dict[str, Any]:
        """The ``external`` base's kwargs: what rebuilds the model without this space."""
        return {"source": self.model, "model_kwargs": dict(self.model_kwargs), "stem": self.stem,
                "head": self.head}

    def layout(self, dataset: str | DatasetInfo | None = None) -> Layout:
        from repnas.spaces._datasets_info import dataset_info

        info = dataset_info(dataset or self.dataset)
        return _layout(self.model, json.dumps(self.base_kwargs(), sort_keys=True), info.num_classes,
                       info.in_channels, info.image_size, self.settings["grouped"])

    def plain_params(self, dataset: str | DatasetInfo | None = None) -> int:
        """Trainable parameters of the plain model on ``dataset``: the reference point of a search."""
        return self.layout(dataset).params

    def plain_flops(self, dataset: str | DatasetInfo | None = None) -> int:
        """Forward FLOPs per image of the plain model (every candidate has the same)."""
        from repnas.spaces._datasets_info import dataset_info

        info = dataset_info(dataset or self.dataset)
        return _plain_flops(self.model, json.dumps(self.base_kwargs(), sort_keys=True), info.num_classes,
                            info.in_channels, info.image_size)

    def reference_line(self, dataset: str | DatasetInfo | None = None) -> str:
        """What ``--dry-run`` prints first: the plain model every candidate repeats."""
        layout = self.layout(dataset)
        return (f"plain {self.model}: {layout.params:,} params, FLOPs {self.plain_flops(dataset):,} per image, "
                f"{len(layout.graph.convs)} convs ({len(layout.plain)} always plain); every candidate keeps "
                f"its physical shape and FLOPs; {self.unrepeatable_params(dataset):,} params (BatchNorm, "
                f"biases, head) cannot be repeated")

    # ----------------------------------------------------------------- points
    def architecture(self, point: dict[str, Any]) -> dict[str, Any]:
        """A point plus the fixed values and defaults: every knob of the space resolved."""
        values = self.point_values(point)
        for key, default in _SCALAR_KNOBS.items():
            values.setdefault(key, self.plan_options.get(key, default))
        rank = values["rank"]
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise UserError(f"space {self.name!r}: rank must be an int >= 1, got {rank!r}")
        return values

    def model_config(self, arch: dict[str, Any], widths: tuple[int, ...] = (), in_channels: int = 3,
                     scale: float | None = None, dataset: str | DatasetInfo | None = None) -> dict[str, Any]:
        """The ModelConfig of ``arch`` with every owned source at ``scale`` of its conv (the smallest
        rung of the solver's ladder when no scale is given; ``widths`` are ignored: the shape is fixed)."""
        layout = self.layout(dataset)
        plan = self._plan(arch, layout, _FIXED_SCALES[-1] if scale is None else scale)
        return {"base": EXTERNAL, "kwargs": self.base_kwargs(), "plan": plan}

    def _source_shape(self, c: ConvNode, scale: float) -> tuple[int, int]:
        if c.grouped:  # whole groups on the output side, each group's inputs whole
            kept = min(c.groups, max(1, round(scale * c.groups)))
            return kept * c.out_per_group, c.in_
        out = min(c.out, max(self.min_width, round(scale * c.out)))
        in_ = c.in_ if c.image_facing else min(c.in_, max(self.min_width, round(scale * c.in_)))
        return out, in_

    def _plan(self, arch: dict[str, Any], layout: Layout, scale: float,
              released: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The plan at ``scale``; ``released`` borrowers and banks (``g<k>``) own their source instead."""
        graph, plain = layout.graph, layout.plain
        convs = [c for c in graph.convs if c.name not in plain]
        names = {c.name for c in convs}
        layers: dict[str, dict[str, Any]] = {}
        banks: dict[str, dict[str, int]] = {}
        for k, members in enumerate(graph.groups):
            members = [m for m in members if m in names]
            if arch.get(f"share.g{k}", "own") == "bank" and len(members) >= 2 and f"g{k}" not in released:
                first = graph.by_name[members[0]]
                out, in_ = self._source_shape(first, scale)
                banks[f"g{k}"] = {"out": out, "in": in_, "rank": arch["rank"]}
                for m in members:
                    layers[m] = {"bank": f"g{k}"}
        for borrower, lender in self._borrows(arch, graph):
            if borrower in names and lender in names and borrower not in released:
                layers[borrower] = {"borrow": lender}
        for name in list(banks):  # a bank its borrows left with one member is that member's own source
            members = [m for m, rule in layers.items() if rule.get("bank") == name]
            if len(members) < 2:
                del banks[name]
                for m in members:
                    del layers[m]
        for c in convs:
            if c.name not in layers:
                own = self._source_shape(c, scale)
                if own != (c.out, c.in_):
                    layers[c.name] = {"own": list(own)}
        order = {c.name: c.order for c in graph.convs}
        plan: dict[str, Any] = {"version": 2, **{k: arch[k] for k in ("map", "scalar_init", "remainder",
                                                                   "source_init", "bias_init")}}
        if banks:
            plan["banks"] = banks
        plan["layers"] = dict(sorted(layers.items(), key=lambda kv: order[kv[0]]))
        return {**{k: v for k, v in self.plan_options.items() if k not in _SCALAR_KNOBS}, **plan}

    def _borrows(self, arch: dict[str, Any], graph: Graph) -> list[tuple[str, str]]:
        """(borrower, lender) pairs of the point's lender knobs, in execution order of borrowers."""
        by_name = graph.by_name
        pairs: dict[str, str] = {}
        for key, value in arch.items():
            if not key.startswith("lender.") or value == NO_LENDER:
                continue
            target = key[len("lender."):]
            if target.startswith("g") and target[1:].isdigit() and target not in by_name:
                members = graph.groups[int(target[1:])] if int(target[1:]) < len(graph.groups) else ()
                if value == SELF_LENDER:
                    pairs.update({m: members[0] for m in members[1:]})
                elif value in by_name:
                    pairs.update({m: value for m in members if by_name[value].fits_in(by_name[m])})
            elif target in by_name and value in by_name and by_name[value].fits_in(by_name[target]) \
                    and by_name[value].order < by_name[target].order:
                pairs[target] = value
        return sorted(pairs.items(), key=lambda kv: by_name[kv[0]].order)

    # ----------------------------------------------------------------- solving
    def _count(self, arch: dict[str, Any], layout: Layout, scale: float,
               released: frozenset[str] = frozenset()) -> tuple[int, dict]:
        config = {"base": EXTERNAL, "kwargs": self.base_kwargs(),
                  "plan": self._plan(arch, layout, scale, released)}
        return layout.params + plan_delta(layout.shapes, config["plan"]), config

    def _release(self, arch: dict[str, Any], layout: Layout, budget: int) -> frozenset[str]:
        """The borrows and banks the budget does not need, released so the candidate can fill it.

        With the shape fixed, a source is never larger than its conv: a point whose large convs
        tile small ones may stay far under the budget even with every owner plain. Candidates are
        compared at (almost) the whole budget, so, as plain convs are kept when the budget fits
        them, the solver gives such a point back its sharing, largest conv first (then banks,
        largest first), until sources at full size would exceed the budget; the scale then fills it.
        """
        graph = layout.graph
        by_name = graph.by_name

        def size(name: str) -> int:
            o, i, k = layout.shapes[name]
            return o * i * k[0] * k[1]

        borrows = sorted((b for b, _ in self._borrows(arch, graph)),
                         key=lambda n: (-size(n), -by_name[n].order))
        banks = sorted((f"g{k}" for k in range(len(graph.groups)) if arch.get(f"share.g{k}") == "bank"),
                       key=lambda g: -size(graph.groups[int(g[1:])][0]))
        released: frozenset[str] = frozenset()
        for item in [*borrows, *banks]:
            if self._count(arch, layout, 1.0, released)[0] >= budget:
                break
            released = released | {item}
        return released

    def solve(self, point: dict[str, Any], budget: int | str | None = None,
              dataset: str | DatasetInfo | None = None, exact: bool = False) -> Solution:
        """Source sizes for ``point`` with params <= ``budget``, as close to it as one scale allows."""
        from repnas.spaces._budget_spec import parse_count
        from repnas.spaces._datasets_info import dataset_info

        budget = parse_count(budget if budget is not None else self.budget)
        dataset = dataset or self.dataset
        info = dataset_info(dataset)
        arch = self.architecture(point)
        layout = self.layout(dataset)
        released = self._release(arch, layout, budget)
        cache: dict[float, tuple[int, dict]] = {}

        def count(scale: float) -> int:
            if scale not in cache:
                if exact:
                    config = self._count(arch, layout, scale, released)[1]
                    cache[scale] = (count_config_params(config, info.num_classes, info.in_channels), config)
                else:
                    cache[scale] = self._count(arch, layout, scale, released)
            return cache[scale][0]

        lo = next((t for t in _FIXED_SCALES if count(t) <= budget), None)
        if lo is None:
            smallest = min(count(t) for t in _FIXED_SCALES)
            raise InfeasibleError(f"{_describe(point)} needs at least {smallest:,} params "
                                  f"(budget {budget:,})", smallest)
        if lo < 1.0:
            hi = lo * 2 ** 0.25
            for _ in range(30):
                mid = (lo + hi) / 2
                if count(mid) <= budget:
                    lo = mid
                else:
                    hi = mid
                if hi - lo < 1e-4:
                    break
        params, config = cache[lo]
        if not exact:
            real = count_config_params(config, info.num_classes, info.in_channels)
            if real != params:  # the closed form missed something: solve again with real counts
                return self.solve(point, budget, dataset, exact=True)
        by_name = layout.graph.by_name
        sources = tuple(self._source_out(config["plan"], c, by_name) for c in layout.graph.convs)
        return Solution(source_widths=sources, physical_widths=tuple(c.out for c in layout.graph.convs),
                        params=params, budget=budget, model_config=config,
                        notes=self._notes(config["plan"], layout, lo, released))

    @staticmethod
    def _source_out(plan: dict, c: ConvNode, by_name: dict[str, ConvNode]) -> int:
        """Output channels of the source conv ``c`` tiles (its own width where it is plain)."""
        layers, banks = plan["layers"], plan.get("banks") or {}
        name, rule = c.name, layers.get(c.name)
        while rule is not None and "borrow" in rule:
            name, rule = rule["borrow"], layers.get(rule["borrow"])
        if rule is None:  # plain, or a plain lender's full weight
            return by_name[name].out
        if "own" in rule:
            return int(rule["own"][0])
        return int(banks[rule["bank"]]["out"])

    def _notes(self, plan: dict, layout: Layout, scale: float, released: frozenset[str]) -> tuple[str, ...]:
        rules = plan["layers"].values()
        kinds = {kind: sum(kind in r for r in rules) for kind in ("own", "borrow", "bank")}
        plain = len(layout.graph.convs) - sum(kinds.values())
        notes = [f"scale {scale:.3f} of every owned weight: {kinds['own']} convs own a smaller source, "
                 f"{kinds['borrow']} borrow an earlier conv's, {kinds['bank']} mix a bank, {plain} plain; "
                 f"physical shape of the plain model ({layout.params:,} params plain)"]
        if released:
            notes.append(f"released {len(released)} borrow(s)/bank(s) the budget did not need: "
                         + ", ".join(sorted(released, key=str)[:6]) + (", ..." if len(released) > 6 else ""))
        notes += [f"plain: {name}: {why}" for name, why in layout.plain.items()]
        return tuple(notes)

    def smallest_params(self, dataset: str | DatasetInfo | None = None) -> int:
        """The fewest parameters any candidate can have: the minimum over the ladder of scales of
        the first point, every knob at its last choice, and seeded random points."""
        dataset = dataset or self.dataset
        layout = self.layout(dataset)
        names = list(self.knobs)
        points = [{n: self.knobs[n].choices[0] if self.knobs[n].choices else self.knobs[n].low for n in names},
                  {n: self.knobs[n].choices[-1] if self.knobs[n].choices else self.knobs[n].high for n in names}]
        rng = random.Random(0)
        points += [self.sample(rng) for _ in range(_SMALLEST_SAMPLES)]
        return min(self._count(self.architecture(p), layout, t)[0] for p in points for t in _FIXED_SCALES)

    def unrepeatable_params(self, dataset: str | DatasetInfo | None = None) -> int:
        """Parameters no repetition can remove: everything but the weights of the convs that repeat."""
        layout = self.layout(dataset)
        weights = sum(o * i * k[0] * k[1] for name, (o, i, k) in layout.shapes.items() if name not in layout.plain)
        return layout.params - weights

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description, "model": self.model}
        if self.model_kwargs:
            out["model_kwargs"] = dict(self.model_kwargs)
        for key in ("stem", "head"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({"budget": self.budget, "dataset": self.dataset, "epochs": self.epochs,
                    "min_width": self.min_width, "shape": "fixed", "knobs": dict(self.knob_spec)})
        if self.plan_options:
            out["plan_options"] = dict(self.plan_options)
        if self.recipe:
            out["recipe"] = dict(self.recipe)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "space") -> ModelSpace:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
        if "family" in data or "widths" in data:
            raise UserError(f"{where}: a space names either a model (model:) or a family (family:, widths:)")
        unknown = set(data) - _KEYS
        if unknown:
            raise UserError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        if data.get("shape", "fixed") != "fixed":
            raise UserError(f"{where}: a model space keeps the model's shape (shape: fixed)")
        source = parse_source(data.get("model"))
        model_kwargs = data.get("model_kwargs") or {}
        if not isinstance(model_kwargs, dict):
            raise UserError(f"{where}: model_kwargs must be a mapping of the callable's arguments")
        for key in ("stem", "head"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise UserError(f"{where}: {key} must be a module name like 'conv1', got {data[key]!r}")
        epochs = data.get("epochs", 5)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise UserError(f"{where}: epochs must be an int >= 1, got {epochs!r}")
        min_width = data.get("min_width", 2)
        if not isinstance(min_width, int) or isinstance(min_width, bool) or min_width < 1:
            raise UserError(f"{where}: min_width must be an int >= 1, got {min_width!r}")
        recipe = data.get("recipe") or {}
        if not isinstance(recipe, dict):
            raise UserError(f"{where}: recipe must be a mapping of trainer settings, got {recipe!r}")
        raw = data.get("knobs")
        raw = dict(DEFAULT_KNOBS) if raw is None else raw
        if not isinstance(raw, dict):
            raise UserError(f"{where}: knobs must be a mapping")
        space = cls(name=str(data.get("name") or source.label), family="model", widths=(),
                    budget=parse_budget(data.get("budget", 1_000_000), f"{where}: budget").to_value(),
                    dataset=str(data.get("dataset", "cifar10")), epochs=epochs, recipe=dict(recipe),
                    description=str(data.get("description", "")), min_width=min_width, shape="fixed",
                    plan_options=_plan_options(data.get("plan_options"), where),
                    model=absolute_spec(source.spec), model_kwargs=dict(model_kwargs),
                    stem=data.get("stem"), head=data.get("head"), knob_spec=dict(raw))
        space._make_knobs(raw, where)
        space.architecture({n: _first(k) for n, k in space.knobs.items()})
        return space

    def _make_knobs(self, raw: dict[str, Any], where: str) -> None:
        """Expand the knob spec over the model's graph (see the module docstring)."""
        for key, default in _SETTINGS.items():
            value = raw.get(key, default)
            if isinstance(value, dict) and key == "lender" and len(value) == 1 and list(value.values()) == [True]:
                value = next(iter(value))  # {per_conv: true} as in the family spaces
            allowed = ("auto", "per_conv", "grouped", "none") if key == "lender" else ("tile", "plain")
            if value not in allowed:
                raise UserError(f"{where}: knob {key!r} takes one of {', '.join(allowed)}, got {value!r}")
            self.settings[key] = value
        layout = self.layout()
        graph = layout.graph
        derived = derive_knobs(graph, self.settings["lender"])
        for name in list(derived):
            target = name.partition(".")[2]
            if target in layout.plain:  # a conv that stays plain has no lender
                del derived[name]
            else:
                derived[name] = [v for v in derived[name] if v not in layout.plain]
        groups = [n for n in derived if n.startswith("share.")]
        allowed_names = {"lender", "grouped", "share", *_SCALAR_KNOBS}
        for name, spec in raw.items():
            base = str(name).partition(".")[0]
            if base not in allowed_names:
                close = difflib.get_close_matches(base, allowed_names, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UserError(f"{where}: unknown knob {name!r}{hint}; known: {', '.join(sorted(allowed_names))}")
            if name in _SETTINGS:
                continue
            if name == "share":  # one knob per bankable group
                for g in groups:
                    self._set(g, spec, where, allowed=["own", "bank"])
            elif "." in str(name):
                if name not in derived:
                    raise UserError(f"{where}: knob {name!r}: the model has no such conv or group with an "
                                    f"earlier conv that fits (knobs: {', '.join(list(derived)[:6])}, ...)")
                self._set(name, spec, where, allowed=derived[name])
            else:
                self._set(name, spec, where)
        for name, choices in derived.items():
            if name.startswith("lender.") and name not in self.knobs and name not in self.fixed \
                    and self.settings["lender"] != "none":
                self.knobs[name] = Knob(name, choices=tuple(choices))

    def _set(self, name: str, spec: Any, where: str, allowed: list | None = None) -> None:
        if isinstance(spec, dict):
            knob = Knob.from_spec(name, spec, where)
            values = list(knob.choices) if knob.choices is not None else [knob.low, knob.high]
        else:
            knob, values = None, [spec]
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise UserError(f"{where}: knob {name!r}: {bad[0]!r} is not one of {', '.join(map(str, allowed))}")
        if knob is None:
            self.fixed[name] = spec
        else:
            self.knobs[name] = knob


def _first(knob: Knob) -> Any:
    return knob.choices[0] if knob.choices is not None else knob.low


def _describe(point: dict[str, Any]) -> str:
    if not point:
        return "the candidate"
    return f"candidate ({len(point)} knobs)"


register_space_kind("model", ModelSpace)
