"""``RepetitionPlan``: plain data saying, per conv layer, where its weight comes from.

A plan is what the search samples, what run configs store and what ``rescale`` applies. It is a
versioned dict/YAML document (see docs/design.md)::

    version: 1
    map: swish              # default tile map: swish | linear | none
    scalar_init: xavier     # xavier | identity
    banks: {b0: {out: 64, in: 32, rank: 2}}
    layers:
      features.3:  {own: [64, 32]}
      features.10: {borrow: features.7}
      features.14: {bank: b0, map: linear}

Only syntax is checked here; whether a plan fits a model (names exist, shapes fit, no cycles) is
checked by ``rescale``, which knows the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repnas.rescale._maps import SCALAR_MAPS

PLAN_VERSION = 1
_SCALAR_INITS = ("xavier", "identity")


@dataclass(frozen=True)
class LayerRule:
    """Where one layer's weight comes from: exactly one of ``own``, ``borrow``, ``bank``."""

    own: tuple[int, int] | None = None
    borrow: str | None = None
    bank: str | None = None
    map: str | None = None  # overrides the plan's default map

    @property
    def kind(self) -> str:
        return "own" if self.own is not None else "borrow" if self.borrow is not None else "bank"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: list(self.own) if self.own is not None else getattr(self, self.kind)}
        if self.map is not None:
            out["map"] = self.map
        return out

    @classmethod
    def from_dict(cls, layer: str, data: Any) -> LayerRule:
        if not isinstance(data, dict):
            raise ValueError(f"plan layer {layer!r}: expected a mapping like {{own: [o, i]}}, got {data!r}")
        unknown = set(data) - {"own", "borrow", "bank", "map"}
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
        return cls(own=own, borrow=data.get("borrow"), bank=data.get("bank"), map=scalar_map)


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
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if self.map not in SCALAR_MAPS:
            raise ValueError(f"plan: unknown map {self.map!r}; choose one of {sorted(SCALAR_MAPS)}")
        if self.scalar_init not in _SCALAR_INITS:
            raise ValueError(f"plan: unknown scalar_init {self.scalar_init!r}; choose one of {list(_SCALAR_INITS)}")
        for name, rule in self.layers.items():
            if rule.bank is not None and rule.bank not in self.banks:
                raise ValueError(f"plan layer {name!r}: bank {rule.bank!r} is not defined in banks")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "map": self.map, "scalar_init": self.scalar_init}
        if self.banks:
            out["banks"] = {name: spec.to_dict() for name, spec in self.banks.items()}
        out["layers"] = {name: rule.to_dict() for name, rule in self.layers.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> RepetitionPlan:
        if not isinstance(data, dict):
            raise ValueError(f"plan: expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {"version", "map", "scalar_init", "banks", "layers"}
        if unknown:
            raise ValueError(f"plan: unknown keys {sorted(unknown)}")
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ValueError(f"plan: version {version!r} is not supported (this repnas reads version {PLAN_VERSION})")
        layers, banks = data.get("layers") or {}, data.get("banks") or {}
        if not isinstance(layers, dict) or not isinstance(banks, dict):
            raise ValueError("plan: layers and banks must be mappings")
        return cls(
            layers={str(k): LayerRule.from_dict(str(k), v) for k, v in layers.items()},
            banks={str(k): BankSpec.from_dict(str(k), v) for k, v in banks.items()},
            map=data.get("map", "swish"),
            scalar_init=data.get("scalar_init", "xavier"),
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
