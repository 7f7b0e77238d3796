"""``--model SPEC`` on the command line: the space definition a search or describe builds on the fly."""

from __future__ import annotations

from typing import Any

import yaml

from repnas.errors import UserError
from repnas.spaces._model_space import DEFAULT_KNOBS
from repnas.spaces._source import parse_source


def parse_kwargs(text: str | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    """A YAML/JSON mapping given on the command line (``'{width_mult: 0.5}'``)."""
    if text is None:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{flag}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{flag}: expected a mapping like '{{width_mult: 0.5}}', got {text!r}")
    return value


def model_space_dict(spec: str, model_kwargs: str | None = None, stem: str | None = None,
                     head: str | None = None, dataset: str | None = None,
                     budget: str | None = None) -> dict[str, Any]:
    """The space of ``repnas search --model SPEC``: the model's derived default knobs
    (:data:`~repnas.spaces._model_space.DEFAULT_KNOBS`), named after its callable."""
    source = parse_source(spec)
    out: dict[str, Any] = {"name": source.label, "model": spec, "dataset": dataset or "cifar10",
                           "budget": budget or "1M", "knobs": dict(DEFAULT_KNOBS)}
    kwargs = parse_kwargs(model_kwargs)
    if kwargs:
        out["model_kwargs"] = kwargs
    if stem:
        out["stem"] = stem
    if head:
        out["head"] = head
    return out
