"""An experiment as a YAML file: which models, which data, which seeds, one shared recipe.

An experiment trains every (model, seed) pair with the *same* :class:`~repnas.train.RunConfig`
recipe, so the only thing that differs between rows of its table is the model. The file::

    name: c1c2_vgg_depth
    claim: "C1/C2: ..."                 # free text, copied into the tables
    kind: train                         # train (default) | compare (search front vs hand-made)
    models: [vgg4, rep_vgg4, {name: my_vgg, model: {base: vgg, kwargs: {...}, plan: {...}}}]
    dataset: {name: cifar10, data_dir: [../shared/datasets, shared/datasets, .data]}
    seeds: [0, 1]
    device: auto
    recipe: {epochs: 30, batch_size: 256, ...}      # RunConfig recipe keys
    compare: [{a: rep_vgg6, b: vgg11, claim: C1}]   # paired accuracy differences (optional)
    relative_gain: {cnn: cnn_rotmnist, groups: {C4: {rep: rep_cnn_c4, gcnn: gcnn_c4}}}  # C3 (optional)
    smoke: {models: [...], seeds: [0], dataset: {...}, recipe: {...}}  # overrides for --smoke

``data_dir`` may be a list of candidate folders: the first that exists is used (the same file then
works on a laptop with ``../shared/datasets`` and on a machine that has ``shared/datasets``).
``smoke`` replaces ``models``/``seeds``/``device`` and is merged key by key into ``dataset`` and
``recipe``, so a smoke run is the real code path on tiny data.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repnas.errors import UserError

__all__ = ["Experiment", "ModelEntry", "load_experiment"]

_TOP_KEYS = {"name", "claim", "kind", "models", "dataset", "seeds", "device", "recipe", "compare",
             "relative_gain", "smoke", "search_runs", "handmade", "accuracy", "synthetic", "description"}
_SMOKE_KEYS = _TOP_KEYS - {"name", "claim", "smoke", "kind", "description"}
_KINDS = ("train", "compare")


@dataclass(frozen=True)
class ModelEntry:
    """One row of an experiment: a display ``name``, the ModelConfig that builds it and its group."""

    name: str
    model: dict[str, Any]
    group: str

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)


@dataclass
class Experiment:
    """A parsed experiment file (after ``smoke`` overrides when loaded with ``smoke=True``)."""

    name: str
    claim: str = ""
    kind: str = "train"
    models: list[ModelEntry] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"
    recipe: dict[str, Any] = field(default_factory=dict)
    compare: list[dict[str, str]] = field(default_factory=list)
    relative_gain: dict[str, Any] | None = None
    search_runs: list[str] = field(default_factory=list)
    handmade: list[str] = field(default_factory=list)
    accuracy: str = "test_accuracy"
    synthetic: bool = False
    smoke: bool = False
    source: Path | None = None

    def model(self, name: str) -> ModelEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        raise UserError(f"experiment {self.name!r} has no model {name!r}; it has: "
                        f"{', '.join(e.name for e in self.models)}")

    def run_config(self, entry: ModelEntry, seed: int, device: str | None = None) -> dict[str, Any]:
        """The RunConfig dict of one (model, seed) run: the shared dataset + recipe, this model."""
        dataset = dict(self.dataset)
        dataset["data_dir"] = resolve_data_dir(dataset.get("data_dir"))
        return {"model": copy.deepcopy(entry.model), "dataset": dataset, "recipe": dict(self.recipe),
                "seed": int(seed), "device": device or self.device}


def group_of(name: str) -> str:
    """Default group of a registered family name: how the figure colours it."""
    if name.startswith("gcnn"):
        return "G-CNN (equivariant)"
    if name.startswith("rep_"):
        return "repeated"
    return "plain"


def resolve_data_dir(value: Any) -> str | None:
    """``None``, one folder, or a list of candidates (the first existing one; else the first)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        for candidate in value:
            if Path(candidate).expanduser().is_dir():
                return candidate
        return value[0]
    raise UserError(f"dataset.data_dir: expected a folder or a list of folders, got {value!r}")


def _entries(models: Any) -> list[ModelEntry]:
    if not isinstance(models, list):
        raise UserError(f"models: expected a list, got {type(models).__name__}")
    out: list[ModelEntry] = []
    for item in models:
        if isinstance(item, str):
            out.append(ModelEntry(item, {"family": item, "kwargs": {}}, group_of(item)))
        elif isinstance(item, dict) and "name" in item:
            unknown = sorted(set(item) - {"name", "model", "group"})
            if unknown:
                raise UserError(f"models: unknown key {unknown[0]!r} in entry {item['name']!r}")
            model = item.get("model") or {"family": item["name"]}
            if isinstance(model, str):
                model = {"family": model}
            out.append(ModelEntry(str(item["name"]), dict(model), str(item.get("group") or group_of(item["name"]))))
        else:
            raise UserError(f"models: each entry is a family name or {{name, model, group}}, got {item!r}")
    names = [e.name for e in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"models: {duplicates[0]!r} is listed twice")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(over, dict):
        raise UserError(f"{where}: expected a mapping, got {type(over).__name__}")
    return {**base, **over}


def load_experiment(path: str | Path, smoke: bool = False) -> Experiment:
    """Read and check an experiment file; ``smoke=True`` applies its ``smoke`` section."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such experiment file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: an experiment file is a mapping")
    try:
        return _parse(data, smoke, path)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _parse(data: dict[str, Any], smoke: bool, path: Path) -> Experiment:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    data = copy.deepcopy(data)
    if smoke:
        over = data.get("smoke")
        if not isinstance(over, dict):
            raise UserError("--smoke needs a 'smoke' section")
        bad = sorted(set(over) - _SMOKE_KEYS)
        if bad:
            raise UserError(f"smoke: unknown key {bad[0]!r}")
        for key, value in over.items():
            data[key] = _merge(data.get(key) or {}, value, f"smoke.{key}") if key in ("dataset", "recipe") \
                else value
    kind = data.get("kind", "train")
    if kind not in _KINDS:
        raise UserError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    name = data.get("name") or path.stem
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"seeds: expected a list of integers, got {seeds!r}")
    exp = Experiment(
        name=str(name),
        claim=str(data.get("claim", "")),
        kind=kind,
        models=_entries(data.get("models", [])),
        dataset=_merge({}, data.get("dataset") or {}, "dataset"),
        seeds=list(seeds),
        device=str(data.get("device", "auto")),
        recipe=_merge({}, data.get("recipe") or {}, "recipe"),
        compare=list(data.get("compare") or []),
        relative_gain=data.get("relative_gain"),
        search_runs=[str(p) for p in data.get("search_runs") or []],
        handmade=[str(p) for p in data.get("handmade") or []],
        accuracy=str(data.get("accuracy", "test_accuracy")),
        synthetic=bool(data.get("synthetic", False)),
        smoke=smoke,
        source=path,
    )
    _check(exp)
    return exp


def _check(exp: Experiment) -> None:
    if exp.kind == "train":
        if not exp.models:
            raise UserError("models: a train experiment needs at least one model")
        if not exp.seeds:
            raise UserError("seeds: at least one seed")
        from repnas.train import RunConfig

        RunConfig.from_dict(exp.run_config(exp.models[0], exp.seeds[0]))  # recipe/dataset typos fail here
    for pair in exp.compare:
        if not isinstance(pair, dict) or not {"a", "b"} <= set(pair):
            # pairs may name models missing from a smoke subset: the tables skip those
            raise UserError(f"compare: each entry is {{a: MODEL, b: MODEL, claim: TEXT}}, got {pair!r}")
    if exp.relative_gain is not None:
        gain = exp.relative_gain
        if not isinstance(gain, dict) or "cnn" not in gain or not isinstance(gain.get("groups"), dict):
            raise UserError("relative_gain: expected {cnn: MODEL, groups: {LABEL: {rep: MODEL, gcnn: MODEL}}}")
        for label, pair in gain["groups"].items():
            if not isinstance(pair, dict) or set(pair) != {"rep", "gcnn"}:
                raise UserError(f"relative_gain.groups.{label}: expected {{rep: MODEL, gcnn: MODEL}}")
    if exp.accuracy not in ("test_accuracy", "val_accuracy"):
        raise UserError(f"accuracy must be test_accuracy or val_accuracy, got {exp.accuracy!r}")
