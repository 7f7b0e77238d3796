"""``RunConfig``: one training run as a YAML file (model, dataset, recipe, seed, device).

The search exports each trial in this format and ``repnas train CONFIG.yaml`` reads it back, so
``RunConfig.from_yaml(cfg.to_yaml())`` must be the identity. Validation is strict because a config is
often hand-edited: an unknown key or a wrong type is a :class:`~repnas.errors.UserError` naming the
key (``recipe.epochs: expected int, got str``) rather than a silently ignored typo.

```yaml
version: 1
model: {family: vgg6, kwargs: {}}     # or {base: NAME, kwargs: {...}, plan: {...}} (see design.md)
dataset: {name: cifar10, data_dir: null, val_fraction: 0.1, image_size: null}
recipe: {epochs: 10, steps: null, batch_size: 64, lr: 0.1, momentum: 0.9, nesterov: true,
         weight_decay: 0.0005, label_smoothing: 0.1, schedule: onecycle, warmup: 0.2,
         crop_padding: null, flip: null, rotate: null}
seed: 0
device: auto
```
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repnas.errors import UserError

__all__ = ["DatasetConfig", "Recipe", "RunConfig"]

SCHEDULES = ("onecycle", "cosine", "constant")
_MODEL_KEYS = ("family", "base", "kwargs", "plan")


@dataclass
class DatasetConfig:
    """Which data: a name from :func:`~repnas.train.list_datasets`, where it lives, the val share.

    ``image_size`` (square side) resizes the images, for families that pool more than the data allows.
    ``train_subset`` / ``val_subset`` keep a seeded random number of the training / validation
    images (``load_dataset``): a small real task whose accuracy is far from saturated (CIFAR-10 at
    8x8 on 2,000 images), as recorded tables of many trained models need. Left out of the YAML
    while null, so every config written before them reads and hashes as it did.
    """

    name: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    image_size: int | None = None
    train_subset: int | None = None
    val_subset: int | None = None


@dataclass
class Recipe:
    """How to train: SGD(-Nesterov), a step budget (``steps``) or ``epochs``, the LR schedule.

    ``warmup`` is the share of all steps spent ramping the LR up from 0. ``crop_padding``, ``flip``
    and ``rotate`` set the augmentation; ``null`` means the dataset's default (crop 4 + flip on
    natural images, crop 2 on MNIST-like digits, rotations on rotmnist).
    """

    epochs: int = 10
    steps: int | None = None
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "onecycle"
    warmup: float = 0.2
    crop_padding: int | None = None
    flip: bool | None = None
    rotate: bool | None = None


@dataclass
class RunConfig:
    """A complete, reproducible training run (``model`` is a ModelConfig dict, see design.md)."""

    model: dict[str, Any]
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    recipe: Recipe = field(default_factory=Recipe)
    seed: int = 0
    device: str = "auto"
    #: torch CPU threads (null: torch's default). Float sums on the CPU depend on how the work is
    #: split across threads, so a CPU result reproduces bit for bit only with the same count; the
    #: search records the count each trial ran with.
    threads: int | None = None
    version: int = 1

    def __post_init__(self) -> None:
        self.model = _model_config(self.model)
        if isinstance(self.dataset, dict):
            self.dataset = _from_dict(DatasetConfig, self.dataset, "dataset")
        if isinstance(self.recipe, dict):
            self.recipe = _from_dict(Recipe, self.recipe, "recipe")
        self.validate()

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        if not isinstance(data, dict):
            raise UserError(f"a run config must be a mapping, got {type(data).__name__}")
        if "model" not in data:
            raise UserError("run config has no 'model' (e.g. model: {family: vgg6})")
        data = dict(data)
        dataset = _from_dict(DatasetConfig, data.pop("dataset", {}) or {}, "dataset")
        recipe = _from_dict(Recipe, data.pop("recipe", {}) or {}, "recipe")
        top = _from_dict(_Top, data, "")
        return cls(model=top.model, dataset=dataset, recipe=recipe, seed=top.seed, device=top.device,
                   threads=top.threads, version=top.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": copy.deepcopy(self.model),
            "dataset": _dataset_dict(self.dataset),
            "recipe": dataclasses.asdict(self.recipe),
            "seed": self.seed,
            "device": self.device,
            "threads": self.threads,
        }

    @classmethod
    def from_yaml(cls, source: str | Path) -> RunConfig:
        """Read a config from a file path, or from YAML text (a string holding a newline)."""
        if isinstance(source, str) and "\n" in source:
            text, where = source, "<text>"
        else:
            path = Path(source)
            if not path.is_file():
                raise UserError(f"no such config file: {path}")
            try:
                text, where = path.read_text(encoding="utf-8"), str(path)
            except UnicodeDecodeError:
                raise UserError(f"{path}: not a YAML text file (not UTF-8)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).replace("\n", " ")
            raise UserError(f"{where}: not valid YAML: {first}") from None
        try:
            return cls.from_dict(data)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The config as YAML text; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with top-level fields, ``dataset.X`` or ``recipe.X`` keys changed."""
        data = self.to_dict()
        for key, value in changes.items():
            section, _, name = key.rpartition(".")
            target = data.get(section) if section else data
            if section and (not isinstance(target, dict) or name not in target):
                raise UserError(f"unknown key {key!r}")
            target[name] = value
        return RunConfig.from_dict(data)

    # ------------------------------------------------------------------------- validation
    def validate(self) -> None:
        r, d = self.recipe, self.dataset
        checks = [
            (self.version == 1, f"version: only version 1 is known, got {self.version}"),
            (r.epochs >= 1, f"recipe.epochs must be >= 1, got {r.epochs}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1 or null, got {self.threads}"),
            (r.steps is None or r.steps >= 1, f"recipe.steps must be >= 1 or null, got {r.steps}"),
            (r.batch_size >= 1, f"recipe.batch_size must be >= 1, got {r.batch_size}"),
            (r.lr > 0, f"recipe.lr must be > 0, got {r.lr}"),
            (0 <= r.momentum < 1, f"recipe.momentum must be in [0, 1), got {r.momentum}"),
            (not (r.nesterov and r.momentum == 0), "recipe.nesterov needs momentum > 0"),
            (r.weight_decay >= 0, f"recipe.weight_decay must be >= 0, got {r.weight_decay}"),
            (0 <= r.label_smoothing < 1,
             f"recipe.label_smoothing must be in [0, 1), got {r.label_smoothing}"),
            (r.schedule in SCHEDULES,
             f"recipe.schedule must be one of {', '.join(SCHEDULES)}, got {r.schedule!r}"),
            (0 <= r.warmup < 1, f"recipe.warmup (a share of all steps) must be in [0, 1), got {r.warmup}"),
            (r.crop_padding is None or r.crop_padding >= 0,
             f"recipe.crop_padding must be >= 0, got {r.crop_padding}"),
            (0 <= d.val_fraction < 1, f"dataset.val_fraction must be in [0, 1), got {d.val_fraction}"),
            (d.image_size is None or d.image_size >= 1,
             f"dataset.image_size must be >= 1, got {d.image_size}"),
            (d.train_subset is None or d.train_subset >= 1,
             f"dataset.train_subset must be >= 1, got {d.train_subset}"),
            (d.val_subset is None or d.val_subset >= 1,
             f"dataset.val_subset must be >= 1, got {d.val_subset}"),
            (bool(d.name), "dataset.name must not be empty"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None,
             f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


_OPTIONAL_DATASET_KEYS = ("train_subset", "val_subset")


def _dataset_dict(dataset: DatasetConfig) -> dict[str, Any]:
    """The dataset section, without the subset keys while they are null (see :class:`DatasetConfig`)."""
    out = dataclasses.asdict(dataset)
    for key in _OPTIONAL_DATASET_KEYS:
        if out[key] is None:
            del out[key]
    return out


@dataclass
class _Top:
    """The top-level scalar keys, validated with the same machinery as the sections."""

    model: Any = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    version: int = 1


def _model_config(model: Any) -> dict[str, Any]:
    """A family name is shorthand for ``{family: NAME, kwargs: {}}``; check the ModelConfig shape."""
    if isinstance(model, str):
        model = {"family": model}
    if not isinstance(model, dict):
        raise UserError(f"model must be a family name or a mapping, got {type(model).__name__}")
    unknown = sorted(set(model) - set(_MODEL_KEYS))
    if unknown:
        raise UserError(f"unknown key 'model.{unknown[0]}' (known: {', '.join(_MODEL_KEYS)})")
    if ("family" in model) == ("base" in model):
        raise UserError("model needs exactly one of 'family' (a registered name) or 'base' (+ 'plan')")
    name_key = "family" if "family" in model else "base"
    if not isinstance(model[name_key], str) or not model[name_key]:
        raise UserError(f"model.{name_key}: expected a model name, got {model[name_key]!r}")
    if "plan" in model and name_key == "family":
        raise UserError("model.plan goes with model.base, not model.family (a family has its own plan)")
    if not isinstance(model.get("kwargs") or {}, dict):
        raise UserError(f"model.kwargs: expected a mapping, got {type(model['kwargs']).__name__}")
    out = {name_key: model[name_key], "kwargs": dict(model.get("kwargs") or {})}
    if "plan" in model:
        if model["plan"] is not None and not isinstance(model["plan"], dict):
            raise UserError(f"model.plan: expected a mapping, got {type(model['plan']).__name__}")
        out["plan"] = copy.deepcopy(model["plan"])
    return out


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and values of the wrong type."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UserError(f"unknown key '{prefix}{unknown[0]}' (known: {', '.join(names)})")
    return cls(**{k: _check(v, hints[k], f"{prefix}{k}") for k, v in data.items()})


def _check(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise naming ``key``."""
    if annotation is Any:
        return value
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise UserError(f"{key}: expected {_type_name(annotation)}, got null")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (bool, str, dict) and isinstance(value, origin):
            return value
    raise UserError(f"{key}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")


def _type_name(annotation: Any) -> str:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return " or ".join(
        "null" if o is type(None) else getattr(typing.get_origin(o) or o, "__name__", str(o)) for o in options
    )
