"""``repnas train MODEL|CONFIG``: train one model (a family name or a RunConfig YAML) and report.

Everything is checked before anything is written: a bad config, an unknown dataset or missing data
fails with one line and exit code 2 and leaves an existing ``--out`` untouched. An ``--out`` that
already holds a run is only continued with ``--resume``, never overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from repnas.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one model on a dataset",
        description="Train one model: a registered family name (e.g. vgg6) or a run config YAML "
        "(the format `repnas search` exports per trial). Flags override the config.",
    )
    p.add_argument("model", metavar="MODEL|CONFIG", help="family name or path to a RunConfig .yaml")
    p.add_argument("--dataset", help="digits (default), mnist, fashionmnist, cifar10, cifar100, rotmnist, "
                   "imagefolder:PATH")
    p.add_argument("--data-dir", help="torchvision root or a folder holding <name>.tar.gz "
                   "(default $REPNAS_DATA)")
    p.add_argument("--image-size", type=int, metavar="N", help="resize every image to NxN when it is loaded "
                   "(dataset.image_size; images of mixed sizes need it)")
    p.add_argument("--val-fraction", type=float, help="share of train held out for validation (default 0.1)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--steps", type=int, help="step budget (overrides --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ... (checked by RunConfig)")
    p.add_argument("--threads", type=int, help="torch CPU threads (CPU results reproduce with the same count)")
    p.add_argument("--out", type=Path, help="write config.yaml, metrics.json and checkpoint.pt here")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--json", action="store_true", help="end the output with one JSON object of metrics")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repnas.train import RunConfig, absolute_dataset, train

    source = Path(args.model)
    if source.suffix in (".yaml", ".yml") or source.is_file():
        config = RunConfig.from_yaml(source)
    else:
        config = RunConfig(model={"family": args.model})
    overrides = {
        "dataset.name": absolute_dataset(args.dataset) if args.dataset else None,  # --out's config: any cwd
        "dataset.data_dir": args.data_dir,
        "dataset.val_fraction": args.val_fraction,
        "dataset.image_size": args.image_size,
        "recipe.epochs": args.epochs,
        "recipe.steps": args.steps,
        "recipe.batch_size": args.batch_size,
        "recipe.lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "threads": args.threads,
    }
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})

    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out} exists and is not a directory")
        held = [n for n in ("checkpoint.pt", "metrics.json") if (args.out / n).exists()]
        if held and not args.resume:
            raise UserError(
                f"{args.out} already holds a run ({held[0]}); pass --resume or choose another --out"
            )

    result = train(config, out_dir=args.out, progress=not args.quiet, resume=args.resume)
    metrics = dict(result)
    if args.json:
        # NaN (an empty val split) is not JSON: write null
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        print(json.dumps(clean))
    else:
        print(
            f"{config.model.get('family') or config.model.get('base')} on {metrics['dataset']}: "
            f"val {metrics['val_accuracy']:.4f}  test {metrics['test_accuracy']:.4f}  "
            f"params {metrics['params']:,}  flops {metrics['flops']:,}  "
            f"{metrics['train_seconds']:.1f} s ({metrics['images_per_second']:.0f} img/s)"
        )
        if args.out is not None:
            print(f"wrote {args.out}/config.yaml, metrics.json, checkpoint.pt")
    return 0
