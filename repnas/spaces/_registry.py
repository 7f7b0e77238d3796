"""The model registry: every family is a base builder plus an optional repetition plan.

Like timm, a base model is a plain function registered by a decorator; ``create_model(name)``
and ``list_models(pattern)`` are the user-facing story. Unlike timm, a named family such as
``rep_vgg6`` is not a new function but *data*: a :class:`ModelSpec` (base builder, its kwargs, a
``RepetitionPlan``). That is the form the search generates new members in, so the built-in
families and searched ones go through one code path (:func:`build_model`).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from repnas._sorting import natural_key
from repnas.errors import UserError

if TYPE_CHECKING:
    from repnas.rescale import RepetitionPlan

#: A plan as registered: a plain dict, or a function of the input channel count returning one
#: (only a plan that names the first conv's source shape needs the channel count).
PlanSource = Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None


@dataclass(frozen=True)
class ModelSpec:
    """A model as data: ``base`` builder name, its keyword arguments, and a plan (or ``None``)."""

    base: str
    base_kwargs: dict[str, Any] = field(default_factory=dict)
    plan: RepetitionPlan | None = None

    def to_model_config(self) -> dict[str, Any]:
        """The ``{base, kwargs, plan}`` ModelConfig (design.md) that rebuilds this model."""
        return {
            "base": self.base,
            "kwargs": dict(self.base_kwargs),
            "plan": None if self.plan is None else self.plan.to_dict(),
        }


@dataclass(frozen=True)
class _Entry:
    """One registered name: either a base builder or a family (base + kwargs + plan)."""

    builder: Callable[..., nn.Module] | None = None
    base: str | None = None
    base_kwargs: Mapping[str, Any] = field(default_factory=dict)
    plan: PlanSource = None
    dataset: str | None = None
    listed: bool = True  # False: buildable by name but not a model of its own (``external``)


_REGISTRY: dict[str, _Entry] = {}


def _add(name: str, entry: _Entry) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = entry


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   dataset: str | None = None, listed: bool = True):
    """Register a base builder ``fn(num_classes, in_channels, **kwargs) -> nn.Module``.

    Use bare (``@register_model``, registered under the function's name) or with arguments
    (``@register_model(name="vgg", dataset="cifar10")``); ``dataset`` is the one ``repnas
    describe`` assumes when none is given; ``listed=False`` keeps it out of :func:`list_models` (a
    base that builds nothing without its kwargs, as ``external``). Returns ``fn`` unchanged.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(builder).parameters
        if "num_classes" not in params or "in_channels" not in params:
            raise TypeError(f"builder {builder.__name__} must accept num_classes and in_channels")
        _add(name or builder.__name__, _Entry(builder=builder, dataset=dataset, listed=listed))
        return builder

    return decorator(fn) if fn is not None else decorator


def register_family(name: str, base: str, base_kwargs: Mapping[str, Any] | None = None,
                    plan: PlanSource = None, dataset: str | None = None) -> None:
    """Register ``name`` as the registered base ``base`` built with ``base_kwargs`` + ``plan``.

    ``plan`` is a RepetitionPlan dict (or a function of the input channel count returning one);
    it is turned into a ``RepetitionPlan`` only when asked for, so registering costs nothing.
    """
    _add(name, _Entry(base=base, base_kwargs=dict(base_kwargs or {}), plan=plan, dataset=dataset))


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, in natural order."""
    return sorted((n for n, e in _REGISTRY.items() if e.listed and fnmatch.fnmatchcase(n, pattern)),
                  key=natural_key)


def _entry(name: str) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `repnas describe --list`"
        raise UserError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def _base_builder(name: str) -> Callable[..., nn.Module]:
    entry = _entry(name)
    if entry.builder is None:
        raise ValueError(f"{name!r} is a family, not a base builder")
    return entry.builder


def default_dataset(name: str) -> str:
    """The dataset a model is meant for (``cifar10`` unless registered otherwise)."""
    entry = _entry(name)
    if entry.dataset is None and entry.base is not None:
        return default_dataset(entry.base)
    return entry.dataset or "cifar10"


def _default_in_channels(base: str) -> int:
    default = inspect.signature(_base_builder(base)).parameters["in_channels"].default
    return 3 if default is inspect.Parameter.empty else int(default)


def _to_plan(plan: Any) -> RepetitionPlan:
    from repnas.rescale import RepetitionPlan

    if isinstance(plan, RepetitionPlan):
        return plan
    if not isinstance(plan, Mapping):
        raise UserError(f"a plan must be a mapping, got {type(plan).__name__}")
    return RepetitionPlan.from_dict(dict(plan))


def model_spec(name: str, in_channels: int | None = None, **kwargs: Any) -> ModelSpec:
    """``name`` as base + kwargs + plan; ``kwargs`` override the family's base kwargs.

    ``in_channels`` matters only for plans that name the first conv's source shape
    (``rep_cnn_*``); ``None`` means the base builder's default.
    """
    entry = _entry(name)
    if entry.builder is not None:
        return ModelSpec(base=name, base_kwargs=dict(kwargs), plan=None)
    assert entry.base is not None
    plan = entry.plan
    if callable(plan):
        plan = plan(in_channels if in_channels is not None else _default_in_channels(entry.base))
    return ModelSpec(base=entry.base, base_kwargs={**entry.base_kwargs, **kwargs},
                     plan=None if plan is None else _to_plan(plan))


def build_spec(spec: ModelSpec, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """Build the base model of ``spec`` and rescale it by its plan (if any)."""
    builder = _base_builder(spec.base)
    kwargs = dict(spec.base_kwargs, num_classes=num_classes)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as exc:
        raise UserError(f"bad arguments for model {spec.base!r}: {exc}") from None
    model = builder(**kwargs)
    if spec.plan is not None:
        from repnas.rescale import rescale

        model = rescale(model, spec.plan, inplace=True)
    return model


def create_model(name: str, num_classes: int = 10, in_channels: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model; ``in_channels=None`` is the family's default (3, or 1 for rot-MNIST)."""
    return build_spec(model_spec(name, in_channels=in_channels, **kwargs), num_classes, in_channels)


_CONFIG_KEYS = {"family": {"family", "kwargs"}, "base": {"base", "kwargs", "plan"}}


def build_model(model_config: Mapping[str, Any] | str, num_classes: int = 10,
                in_channels: int | None = None) -> nn.Module:
    """Build a design.md ``ModelConfig``: ``{family, kwargs}`` or ``{base, kwargs, plan}``.

    A bare string is shorthand for ``{family: NAME}``. Malformed configs raise ``UserError``.
    """
    if isinstance(model_config, str):
        model_config = {"family": model_config}
    if not isinstance(model_config, Mapping):
        raise UserError(f"a model config must be a mapping, got {type(model_config).__name__}")
    kinds = [k for k in _CONFIG_KEYS if k in model_config]
    if len(kinds) != 1:
        raise UserError("a model config needs exactly one of 'family' or 'base', "
                        f"got keys {sorted(model_config)}")
    kind = kinds[0]
    unknown = set(model_config) - _CONFIG_KEYS[kind]
    if unknown:
        raise UserError(f"unknown key(s) {sorted(unknown)} in a {kind!r} model config; "
                        f"allowed: {sorted(_CONFIG_KEYS[kind])}")
    kwargs = model_config.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise UserError(f"model config 'kwargs' must be a mapping, got {type(kwargs).__name__}")
    reserved = {"num_classes", "in_channels"} & set(kwargs)
    if reserved:
        raise UserError(f"model config 'kwargs' must not set {sorted(reserved)}: the dataset decides them")
    spec = model_spec(model_config[kind], in_channels=in_channels, **kwargs)
    plan = model_config.get("plan")
    if plan is not None:
        if spec.plan is not None:
            raise UserError(f"{model_config[kind]!r} already has a plan; use its base "
                            f"{spec.base!r} with a plan instead")
        spec = replace(spec, plan=_to_plan(plan))
    return build_spec(spec, num_classes, in_channels)
