"""Where a user's model comes from: ``module:callable``, ``timm:NAME`` or ``path/to/file.py:Class``.

A model space (``_model_space.py``) names its network by a *source spec* instead of a family:

* ``torchvision.models:resnet18``: any importable ``module:callable`` returning an ``nn.Module``,
  called with the space's ``model_kwargs``;
* ``timm:resnet18``: ``timm.create_model(NAME, pretrained=False, **model_kwargs)`` (timm is an
  optional extra, imported only when such a spec is built);
* ``path/to/net.py:Net``: a class (or function) in a Python file of the user's own repository.
  A relative path is resolved against the current directory when the space is made, and stored
  absolute, so trials running in another folder (Ray's trial directories) find the same file.

The built model is adapted to the dataset, because a torchvision or timm model is made for
ImageNet's 1000 classes and 3 channels: the callable gets ``num_classes`` (and timm ``in_chans``)
where its signature takes them; otherwise the *head* (the last ``nn.Linear``) is replaced by one with
the dataset's class count and the *stem* (the first ``nn.Conv2d``) by one with its input channels.
``stem`` and ``head`` name the modules to adapt where that rule guesses wrong. Nothing else
changes: the physical shape of the network is the user's (``shape: fixed``).

The model enters run configs as the registered base ``external`` (``{base: external, kwargs:
{source, model_kwargs, stem, head}, plan}``), so training, describe, export and the duplicate check
build it through the same :func:`~repnas.spaces.build_model` as every family.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from repnas.errors import UserError
from repnas.spaces._registry import register_model

#: the registered base name of a user's model in a ModelConfig
EXTERNAL = "external"


@dataclass(frozen=True)
class Source:
    """A parsed source spec: ``kind`` is ``callable``, ``timm`` or ``file``."""

    spec: str
    kind: str
    target: str  # module, timm model name or file path
    attr: str = ""

    @property
    def label(self) -> str:
        """A short name for the space and the run directory (``resnet18``, ``Net``)."""
        return self.attr or self.target


def parse_source(spec: Any) -> Source:
    """``module:callable`` | ``timm:NAME`` | ``file.py:Name`` -> :class:`Source`; ``UserError`` otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"model: expected a spec like torchvision.models:resnet18, got {spec!r}")
    spec = spec.strip()
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserError(f"model {spec!r}: expected module:callable (torchvision.models:resnet18), "
                        "timm:NAME or path/to/file.py:Class")
    if target == "timm":
        return Source(spec, "timm", attr)
    if target.endswith(".py") or "/" in target or "\\" in target:
        return Source(spec, "file", target, attr)
    if not attr.isidentifier() or not all(p.isidentifier() for p in target.split(".")):
        raise UserError(f"model {spec!r}: {target!r} is not a module name and {attr!r} not a callable name")
    return Source(spec, "callable", target, attr)


def absolute_spec(spec: str) -> str:
    """A file spec with its path made absolute (other specs unchanged): see the module docstring."""
    source = parse_source(spec)
    if source.kind != "file":
        return source.spec
    return f"{Path(source.target).expanduser().resolve()}:{source.attr}"


def _load_file(path_text: str, spec: str):
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"model {spec!r}: file {path_text} not found")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"repnas_user_model_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"model {spec!r}: {path_text} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: one line naming it
        del sys.modules[name]
        raise UserError(f"model {spec!r}: importing {path_text} failed ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return module


def resolve(source: Source):
    """The callable a source names (timm: ``timm.create_model`` bound to the name)."""
    if source.kind == "timm":
        try:
            import timm
        except ImportError:
            raise UserError(f"model {source.spec!r}: timm is not installed (pip install timm)") from None
        if source.target not in timm.list_models():
            raise UserError(f"model {source.spec!r}: timm has no model {source.target!r}")

        def create(**kwargs: Any) -> nn.Module:
            return timm.create_model(source.target, pretrained=False, **kwargs)

        return create
    if source.kind == "file":
        module = _load_file(source.target, source.spec)
    else:
        try:
            module = importlib.import_module(source.target)
        except ImportError as exc:
            raise UserError(f"model {source.spec!r}: cannot import module {source.target!r} ({exc})") from None
    fn = getattr(module, source.attr, None)
    if fn is None:
        raise UserError(f"model {source.spec!r}: module {source.target!r} has no {source.attr!r}")
    if not callable(fn):
        raise UserError(f"model {source.spec!r}: {source.attr!r} is not callable")
    return fn


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def build_source(spec: str, num_classes: int, in_channels: int, model_kwargs: dict | None = None,
                 stem: str | None = None, head: str | None = None) -> nn.Module:
    """Build the model of ``spec`` for ``num_classes`` classes and ``in_channels`` input channels."""
    source = parse_source(spec)
    fn = resolve(source)
    kwargs = dict(model_kwargs or {})
    if source.kind == "timm":
        kwargs.setdefault("num_classes", num_classes)
        kwargs.setdefault("in_chans", in_channels)
    else:
        if _accepts(fn, "num_classes"):
            kwargs.setdefault("num_classes", num_classes)
        for name in ("in_channels", "in_chans"):
            if _accepts(fn, name):
                kwargs.setdefault(name, in_channels)
    # what the callable was told needs no adapting (a stem it was given is the model's own business)
    told_classes = "num_classes" in kwargs
    told_channels = "in_channels" in kwargs or "in_chans" in kwargs
    try:
        model = fn(**kwargs)
    except Exception as exc:  # the user's code or a bad model_kwargs: one line naming it
        raise UserError(f"model {spec!r}: calling it with {kwargs} failed ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {spec!r}: returned {type(model).__name__}, not a torch.nn.Module")
    adapt(model, spec, num_classes, in_channels, None if told_channels and stem is None else stem or "",
          None if told_classes and head is None else head or "")
    return model


def _named(model: nn.Module, name: str, kind: type, spec: str, what: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise UserError(f"model {spec!r}: {what} {name!r} is not a module of the model") from None
    if not isinstance(module, kind):
        raise UserError(f"model {spec!r}: {what} {name!r} is a {type(module).__name__}, not an {kind.__name__}")
    return module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def first_conv(model: nn.Module) -> str | None:
    """The conv that sees the image: the first one a forward pass calls (attribute order is not
    execution order). The model is probed with each input channel count its convs take, in order,
    on a few image sizes; ``None`` when no probe runs."""
    import torch

    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    channels = list(dict.fromkeys(m.in_channels for m in convs.values()))
    first: list[str] = []

    def hook(name: str):
        def record(module, inputs):
            if not first:
                first.append(name)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in convs.items()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        for c in channels:
            for size in (32, 64, 224):
                first.clear()
                try:
                    with torch.no_grad():
                        model(torch.zeros(1, c, size, size, device=device))
                except Exception:  # a probe of the wrong shape: try the next
                    continue
                return first[0] if first else None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return None


def adapt(model: nn.Module, spec: str, num_classes: int, in_channels: int, stem: str | None = "",
          head: str | None = "") -> None:
    """Give ``model`` a head with ``num_classes`` outputs and a stem taking ``in_channels`` (in place).

    ``stem``/``head``: a module name, ``""`` for the default rule (the last ``nn.Linear``; the first
    conv the forward pass calls), ``None`` to leave that side alone.
    """
    if head is not None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        head = head or (linears[-1] if linears else None)
    if head:
        old = _named(model, head, nn.Linear, spec, "head")
        if old.out_features != num_classes:
            weight = old.weight
            _replace(model, head, nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                                            device=weight.device, dtype=weight.dtype))
    if stem is None:
        return
    stem = stem or first_conv(model)
    if not stem:
        return
    old = _named(model, stem, nn.Conv2d, spec, "stem")
    if old.in_channels == in_channels:
        return
    if old.groups != 1:
        raise UserError(f"model {spec!r}: stem {stem!r} is a grouped conv; give the model "
                        f"{in_channels} input channels yourself (model_kwargs)")
    weight = old.weight
    _replace(model, stem, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                                    padding=old.padding, dilation=old.dilation, bias=old.bias is not None,
                                    padding_mode=old.padding_mode, device=weight.device, dtype=weight.dtype))


@register_model(name=EXTERNAL, listed=False)
def external(num_classes: int = 10, in_channels: int = 3, source: str = "", model_kwargs: dict | None = None,
             stem: str | None = None, head: str | None = None) -> nn.Module:
    """A user's model (``source``: a spec of this module's docstring), adapted to the dataset."""
    if not source:
        raise UserError("model base 'external' needs kwargs.source (e.g. torchvision.models:resnet18)")
    return build_source(source, num_classes, in_channels, model_kwargs, stem, head)
