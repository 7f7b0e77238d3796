"""``repnas export RUN (--pareto | --top K) --out DIR``: chosen trials as ``repnas train`` configs.

Writes ``DIR/trial_<n>.yaml`` (a RunConfig) and, where the trial left a checkpoint,
``DIR/trial_<n>.pt`` (the materialized model's plain ``state_dict``), ``DIR/trial_<n>.ts``
(TorchScript) and ``DIR/trial_<n>.onnx`` (ONNX; needs ``repnas[deploy]``), both checked against the
repeated model, and ``DIR/exported.yaml`` (what was exported, paths relative to it).
"""

from __future__ import annotations

import argparse

from repnas.cli import plain_text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write run configs of the Pareto front or the top K trials",
                              description=plain_text(__doc__))
    p.add_argument("run", help="a search run directory (runs/<name>)")
    choice = p.add_mutually_exclusive_group(required=True)
    choice.add_argument("--pareto", action="store_true", help="the Pareto front of the run's objectives")
    choice.add_argument("--top", type=int, metavar="K", help="the K best by validation accuracy")
    p.add_argument("--out", required=True, help="folder to write the configs to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repnas.export._export import export_trials

    exported = export_trials(args.run, args.out, pareto=args.pareto, top=args.top)
    for entry in exported:
        files = [entry[k] for k in ("state_dict", "torchscript", "onnx") if entry.get(k)]
        weights = f" + {', '.join(files)}" if files else ""
        print(f"trial {entry['trial']:>4}: val {entry['val_accuracy']:.4f}  params {entry['params']:,}  "
              f"-> {args.out}/{entry['config']}{weights}")
    print(f"exported {len(exported)} trial(s) to {args.out}")
    return 0
