"""``RepetitionPlan``: plain data saying, per conv layer, where its weight comes from.

A plan is what the search samples, what run configs store and what ``rescale`` applies. It is a
versioned dict/YAML document (see docs/design.md and docs/method.md)::

    version: 2
    map: swish                # default tile map: swish | linear | none
    scalar_init: xavier       # xavier | identity
    remainder: paper          # paper (the authors' maps on maps) | source (one map of the raw source)
    source_init: small_xavier # small_xavier (the authors') | physical (a crop of the conv's own init)
    bias_init: zeros          # zeros (the authors') | default (PyTorch's init of the conv's bias)
    banks: {b0: {out: 64, in: 32, rank: 2}}
    layers:
      features.3:  {own: [64, 32], source_init: physical}
      features.10: {borrow: features.7, remainder: source}
      features.14: {bank: b0, map: linear, bias_init: default}

Versions: a plan that omits an option gets the authors' choice (above); a document without
``version`` is the current version, so a new user's hand-written plan is the authors' method. A
version-1 document says ``version: 1`` (every plan repnas ever wrote carries its version: spaces,
families and ``to_dict`` always wrote it) and means what it always meant: ``remainder: source``,
``source_init: physical``, ``bias_init: default``. In memory every plan
is version 2 with its options explicit, so ``to_dict`` writes them all and a round trip through a
file never changes what a plan means.

Only syntax is checked here; whether a plan fits a model (names exist, shapes fit, no cycles) is
checked by ``rescale``, which knows the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repnas.rescale._maps import SCALAR_MAPS

PLAN_VERSION = 2
_SCALAR_INITS = ("xavier", "identity")
#: version-2 options and their allowed values; the first value is the authors' (the v2 default).
PLAN_OPTIONS: dict[str, tuple[str, ...]] = {
    "remainder": ("paper", "source"),
    "source_init": ("small_xavier", "physical"),
    "bias_init": ("zeros", "default"),
}
#: what a version-1 document means: repnas's choices before version 2.
V1_OPTIONS = {"remainder": "source", "source_init": "physical", "bias_init": "default"}
_LAYER_OPTIONS = ("remainder", "source_init", "bias_init")  # per-layer overrides of the plan's


def _check_option(where: str, key: str, value: Any) -> str:
    if value not in PLAN_OPTIONS[key]:
        raise ValueError(f"{where}: unknown {key} {value!r}; choose one of {list(PLAN_OPTIONS[key])}")
    return value


@dataclass(frozen=True)
class LayerRule:
    """Where one layer's weight comes from: exactly one of ``own``, ``borrow``, ``bank``."""

    own: tuple[int, int] | None = None
    borrow: str | None = None
    bank: str | None = None
    map: str | None = None  # overrides the plan's default map
    remainder: str | None = None  # overrides the plan's remainder rule
    source_init: str | None = None  # overrides the plan's source_init (an ``own`` source only)
    bias_init: str | None = None  # overrides the plan's bias_init

    @property
    def kind(self) -> str:
        return "own" if self.own is not None else "borrow" if self.borrow is not None else "bank"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: list(self.own) if self.own is not None else getattr(self, self.kind)}
        for key in ("map", *_LAYER_OPTIONS):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, layer: str, data: Any) -> LayerRule:
        if not isinstance(data, dict):
            raise ValueError(f"plan layer {layer!r}: expected a mapping like {{own: [o, i]}}, got {data!r}")
        unknown = set(data) - {"own", "borrow", "bank", "map", *_LAYER_OPTIONS}
        if unknown:
            raise ValueError(f"plan layer {layer!r}: unknown keys {sorted(unknown)}")
        kinds = [k for k in ("own", "borrow", "bank") if k in data]
        if len(kinds) != 1:
            raise ValueError(f"plan layer {layer!r}: give exactly one of own/borrow/bank, got {kinds or 'none'}")
        own = data.get("own")
        if own is not None:
            if not (isinstance(own, (list, tuple)) and len(own) == 2 and all(_is_pos_int(v) for v in own)):
                raise ValueError(f"plan layer {layer!r}: own must be [out, in] positive integers, got {own!r}")
            own = (int(own[0]), int(own[1]))
        for key in ("borrow", "bank"):
            if key in data and not isinstance(data[key], str):
                raise ValueError(f"plan layer {layer!r}: {key} must be a name, got {data[key]!r}")
        scalar_map = data.get("map")
        if scalar_map is not None and scalar_map not in SCALAR_MAPS:
            raise ValueError(f"plan layer {layer!r}: unknown map {scalar_map!r}; choose one of {sorted(SCALAR_MAPS)}")
        options = {key: _check_option(f"plan layer {layer!r}", key, data[key]) for key in _LAYER_OPTIONS if key in data}
        if "source_init" in options and own is None:
            raise ValueError(f"plan layer {layer!r}: source_init applies to an own source only "
                             "(a borrowed source is its lender's; a bank's is the plan's)")
        return cls(own=own, borrow=data.get("borrow"), bank=data.get("bank"), map=scalar_map, **options)


@dataclass(frozen=True)
class BankSpec:
    """A template bank shared by a group of layers: R templates of (out, in) channels."""

    out: int
    in_: int
    rank: int = 1

    def to_dict(self) -> dict[str, int]:
        return {"out": self.out, "in": self.in_, "rank": self.rank}

    @classmethod
    def from_dict(cls, name: str, data: Any) -> BankSpec:
        if not isinstance(data, dict) or set(data) - {"out", "in", "rank"} or not {"out", "in"} <= set(data):
            raise ValueError(f"plan bank {name!r}: expected {{out: o, in: i, rank: R}}, got {data!r}")
        if not all(_is_pos_int(data.get(k, 1)) for k in ("out", "in", "rank")):
            raise ValueError(f"plan bank {name!r}: out, in and rank must be positive integers, got {data!r}")
        return cls(out=int(data["out"]), in_=int(data["in"]), rank=int(data.get("rank", 1)))


@dataclass
class RepetitionPlan:
    """Per-layer sources of a repeated model; layers not named stay plain."""

    layers: dict[str, LayerRule] = field(default_factory=dict)
    banks: dict[str, BankSpec] = field(default_factory=dict)
    map: str = "swish"
    scalar_init: str = "xavier"
    remainder: str = "paper"
    source_init: str = "small_xavier"
    bias_init: str = "zeros"

    @property
    def version(self) -> int:
        """Always :data:`PLAN_VERSION`: a version-1 document is converted when it is read."""
        return PLAN_VERSION

    def option(self, key: str, layer: str | None = None) -> str:
        """The value of option ``key`` (``remainder``, ``source_init``, ``bias_init``) for ``layer``:
        the layer's override where it has one, else the plan's."""
        rule = self.layers.get(layer) if layer is not None else None
        value = getattr(rule, key) if rule is not None else None
        return value if value is not None else getattr(self, key)

    def __post_init__(self) -> None:
        if self.map not in SCALAR_MAPS:
            raise ValueError(f"plan: unknown map {self.map!r}; choose one of {sorted(SCALAR_MAPS)}")
        if self.scalar_init not in _SCALAR_INITS:
            raise ValueError(f"plan: unknown scalar_init {self.scalar_init!r}; choose one of {list(_SCALAR_INITS)}")
        for key in PLAN_OPTIONS:
            _check_option("plan", key, getattr(self, key))
        for name, rule in self.layers.items():
            if rule.bank is not None and rule.bank not in self.banks:
                raise ValueError(f"plan layer {name!r}: bank {rule.bank!r} is not defined in banks")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "map": self.map, "scalar_init": self.scalar_init}
        out.update({key: getattr(self, key) for key in PLAN_OPTIONS})
        if self.banks:
            out["banks"] = {name: spec.to_dict() for name, spec in self.banks.items()}
        out["layers"] = {name: rule.to_dict() for name, rule in self.layers.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> RepetitionPlan:
        if not isinstance(data, dict):
            raise ValueError(f"plan: expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {"version", "map", "scalar_init", "banks", "layers", *PLAN_OPTIONS}
        if unknown:
            raise ValueError(f"plan: unknown keys {sorted(unknown)}")
        layers, banks = data.get("layers") or {}, data.get("banks") or {}
        if not isinstance(layers, dict) or not isinstance(banks, dict):
            raise ValueError("plan: layers and banks must be mappings")
        v2_keys = sorted(set(data) & set(PLAN_OPTIONS)
                         | {k for v in layers.values() if isinstance(v, dict) for k in set(v) & set(_LAYER_OPTIONS)})
        version = data.get("version", PLAN_VERSION)
        if version not in (1, PLAN_VERSION) or isinstance(version, bool):
            raise ValueError(f"plan: version {version!r} is not supported (this repnas reads versions 1 and 2)")
        if version == 1 and v2_keys:
            raise ValueError(f"plan: {', '.join(v2_keys)} need version 2 (this document says version 1)")
        defaults = V1_OPTIONS if version == 1 else {key: values[0] for key, values in PLAN_OPTIONS.items()}
        return cls(
            layers={str(k): LayerRule.from_dict(str(k), v) for k, v in layers.items()},
            banks={str(k): BankSpec.from_dict(str(k), v) for k, v in banks.items()},
            map=data.get("map", "swish"),
            scalar_init=data.get("scalar_init", "xavier"),
            **{key: data.get(key, default) for key, default in defaults.items()},
        )

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> RepetitionPlan:
        """Parse YAML text, or read it from a path."""
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or ("\n" not in text and Path(text).is_file()):
            text = Path(text).read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"plan: malformed YAML ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data)


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
