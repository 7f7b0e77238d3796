"""``repnas table build``: a recorded table of trained models, for replaying searches in seconds.

Trains every distinct model of a space (or ``--models N`` of them, seeded) with one recipe, once per
seed, and writes one parquet file: per epoch validation accuracy, validation loss and train seconds;
per model test accuracy, params, physical params, FLOPs, the canonical model key and the run config;
the dataset/recipe fingerprint in its metadata. A killed build continues with the same command
(``<out>.journal`` keeps finished runs). ``repnas search --replay TABLE`` searches over it.

Example: ``repnas table build --space quick --dataset cifar10 --data-dir ../shared/datasets
--image-size 8 --train-subset 2000 --val-subset 1000 --recipe '{batch_size: 128, lr: 0.1, crop_padding: 2}'
--seeds 0 1 --epochs 8 --out T.parquet``.
"""

from __future__ import annotations

import argparse

from repnas.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    from repnas.cli import OneLineErrorParser, plain_text

    p = subparsers.add_parser("table", help="record a table of trained models (repnas search --replay)",
                              description=plain_text(__doc__))
    sub = p.add_subparsers(dest="table_command", required=True, parser_class=OneLineErrorParser)
    b = sub.add_parser("build", help="train the distinct models of a space and write the table",
                       description=plain_text(__doc__))
    b.add_argument("--space", required=True, help="built-in space (quick, ...) or a space YAML")
    b.add_argument("--out", required=True, help="the table file to write (parquet)")
    b.add_argument("--dataset", help="dataset name (default: the space's)")
    b.add_argument("--data-dir", help="where datasets are read (e.g. ../shared/datasets)")
    b.add_argument("--image-size", type=int, help="resize images to this square side (e.g. 8 or 16)")
    b.add_argument("--train-subset", type=int, metavar="N", help="keep a seeded random N training images")
    b.add_argument("--val-subset", type=int, metavar="N", help="keep a seeded random N validation images")
    b.add_argument("--budget", help="one budget or levels (4k,8k,12k); default: the space's")
    b.add_argument("--epochs", type=int, help="epochs per model (default: the space's)")
    b.add_argument("--recipe", metavar="YAML", help="trainer recipe keys over the space's, e.g. "
                   "'{batch_size: 128, lr: 0.1, crop_padding: 2}'")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    b.add_argument("--models", default="all", help="N: a seeded random N of the distinct models; all (default)")
    b.add_argument("--sample-seed", type=int, default=0, help="seed of the --models sample (default 0)")
    b.add_argument("--workers", type=int, default=1, help="training processes (default 1)")
    b.add_argument("--threads", type=int, help="torch threads per CPU worker (default 1)")
    b.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)


def _models(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--models must be a count or all, got {text!r}") from None


def _recipe(text: str | None) -> dict | None:
    if text is None:
        return None
    import yaml

    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"--recipe: malformed YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise UserError(f"--recipe: expected a mapping of recipe keys, got {text!r}")
    return recipe


def run_build(args: argparse.Namespace) -> int:
    from repnas.search import build_table

    build_table(args.space, args.out, dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
                train_subset=args.train_subset, val_subset=args.val_subset, budget=args.budget,
                epochs=args.epochs, recipe=_recipe(args.recipe), seeds=args.seeds, models=_models(args.models),
                sample_seed=args.sample_seed, workers=args.workers, device=args.device, threads=args.threads,
                progress=not args.quiet)
    return 0
