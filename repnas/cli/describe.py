"""``repnas describe MODEL``: parameters, physical parameters, FLOPs and the per-layer table.

MODEL is a registered name (``repnas describe --list`` shows them) or a run-config YAML file
with a ``model`` key (its ``dataset.name`` is used unless ``--dataset`` is given). ``--model SPEC``
describes any model instead (``torchvision.models:resnet18``, ``timm:NAME``, ``path/net.py:Net``),
repeated by ``--plan`` (a plan YAML, or a run config such as an exported ``trial_<n>.yaml``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from repnas.cli import plain_text
from repnas.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "describe", help="parameters, physical parameters, FLOPs and layers of a model",
        description=plain_text(__doc__))
    parser.add_argument("model", nargs="?", help="model name, or a run-config YAML with a `model` key")
    parser.add_argument("--dataset", help="decides classes, channels and input size "
                        "(cifar10, cifar100, mnist, fashionmnist, rotmnist, digits, or imagefolder:PATH, whose "
                        "shape is read from its files; default: the model's own, cifar10 or rotmnist)")
    parser.add_argument("--num-classes", type=int, help="override the dataset's class count")
    parser.add_argument("--in-channels", type=int, help="override the dataset's channel count")
    parser.add_argument("--image-size", type=int, help="override the dataset's input size")
    parser.add_argument("--model", dest="spec", metavar="SPEC", help="any model: module:callable, timm:NAME "
                        "or path/to/file.py:Class (adapted to the dataset's classes and channels)")
    parser.add_argument("--model-kwargs", metavar="YAML", help="keyword arguments of --model's callable")
    parser.add_argument("--stem", help="with --model: the conv adapted to the dataset's channels")
    parser.add_argument("--head", help="with --model: the linear adapted to the class count")
    parser.add_argument("--plan", metavar="FILE", help="with --model: a RepetitionPlan YAML, or a run config "
                        "(model.plan) such as an exported trial_<n>.yaml")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--list", action="store_true",
                        help="list registered models (MODEL, if given, is an fnmatch pattern)")
    parser.set_defaults(func=run)


def _load_model_config(model: str) -> tuple[Any, str | None, str]:
    """(model config, dataset name or None, label) for a name or a run-config YAML path."""
    path = Path(model)
    if not (model.endswith((".yaml", ".yml")) or path.is_file()):
        return {"family": model}, None, model
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{model}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise UserError(f"{model}: expected a run config with a `model` key")
    dataset = data.get("dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("name")
    return data["model"], dataset if isinstance(dataset, str) else None, str(path)


def _spec_model_config(args: argparse.Namespace) -> tuple[dict, str | None, str]:
    """(model config, dataset or None, label) of ``--model SPEC [--plan FILE]``."""
    import yaml

    from repnas.spaces._model_cli import parse_kwargs
    from repnas.spaces._source import EXTERNAL, absolute_spec

    kwargs = {"source": absolute_spec(args.spec), "model_kwargs": parse_kwargs(args.model_kwargs),
              "stem": args.stem, "head": args.head}
    config: dict[str, Any] = {"base": EXTERNAL, "kwargs": kwargs}
    dataset = None
    if args.plan:
        path = Path(args.plan)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise UserError(f"--plan {args.plan}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"--plan {args.plan}: malformed YAML ({str(exc).splitlines()[0]})") from None
        if isinstance(data, dict) and isinstance(data.get("model"), dict):  # a run config
            run_dataset = data.get("dataset")
            dataset = run_dataset.get("name") if isinstance(run_dataset, dict) else run_dataset
            data = data["model"].get("plan")
        if not isinstance(data, dict):
            raise UserError(f"--plan {args.plan}: expected a plan (layers: ...) or a run config with model.plan")
        config["plan"] = data
    return config, dataset if isinstance(dataset, str) else None, args.spec


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no conv layers)"
    columns = list(rows[0])
    cells = [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[j]) for r in cells)) for j, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def run(args: argparse.Namespace) -> int:
    from repnas import spaces
    from repnas.rescale import describe

    if args.list:
        print("\n".join(spaces.list_models(args.model or "*")))
        return 0
    if args.spec is not None:
        if args.model:
            raise UserError("give MODEL or --model SPEC, not both")
        config, config_dataset, label = _spec_model_config(args)
    elif args.plan or args.model_kwargs or args.stem or args.head:
        raise UserError("--plan, --model-kwargs, --stem and --head go with --model SPEC")
    elif not args.model:
        raise UserError("describe needs a MODEL (or --list)")
    else:
        config, config_dataset, label = _load_model_config(args.model)
    dataset = args.dataset or config_dataset
    if dataset is None:
        name = (config.get("family") or config.get("base")) if isinstance(config, dict) else config
        dataset = spaces.default_dataset(name) if isinstance(name, str) else "cifar10"
    overrides = (args.num_classes, args.in_channels, args.image_size)
    if None in overrides:  # a named dataset's shape, or an imagefolder's read from its files
        from repnas.train import dataset_shape

        size = args.image_size if args.image_size is not None and args.image_size >= 1 else None
        info = dataset_shape(dataset, image_size=size)
        overrides = tuple(known if given is None else given for given, known in zip(
            overrides, (info.num_classes, info.in_channels, info.image_size), strict=True))
    num_classes, in_channels, image_size = overrides
    for flag, value in (("--num-classes", num_classes), ("--in-channels", in_channels),
                        ("--image-size", image_size)):
        if value is None or value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    model = spaces.build_model(config, num_classes=num_classes, in_channels=in_channels)
    input_shape = (in_channels, image_size, image_size)
    result = describe(model, input_shape)
    if args.json:
        out = {"model": label, "dataset": dataset, "num_classes": num_classes,
               "input_shape": list(input_shape), **result}
        print(json.dumps(out, default=str))
        return 0
    print(f"{label} on {dataset} ({'x'.join(map(str, input_shape))}, {num_classes} classes)")
    print(f"params           {result['params']:>14,}")
    print(f"physical params  {result['physical_params']:>14,}")
    print(f"FLOPs            {result['flops']:>14,}")
    print()
    print(_table(result["layers"]))
    return 0
