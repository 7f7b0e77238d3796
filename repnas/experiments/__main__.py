"""``python -m repnas.experiments``: run an experiment end to end, or rebuild its tables.

    python -m repnas.experiments run experiments/c3_rotmnist.yaml [--smoke] [--models a,b]
        [--seeds 0,1] [--out results/DIR] [--device cuda] [--data-dir DIR] [--time-limit 540]
    python -m repnas.experiments status experiments/c3_rotmnist.yaml   # done / pending runs
    python -m repnas.experiments tables experiments/c3_rotmnist.yaml   # tables + figure only

Several configs run one after the other, in the order given, sharing one ``--time-limit`` (what a
lent GPU's 10-minute command wants: ``run A.yaml B.yaml --time-limit 480`` finishes what it can of
A, then spends what is left on B).

Default output: ``results/<name>/`` (``runs/experiments-smoke/<name>/`` with ``--smoke``, which is
git-ignored). Bad input prints one ``repnas: error: ...`` line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from repnas.cli import OneLineErrorParser, run_command


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds: expected integers like 0,1, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m repnas.experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for name, text in (("run", "train what is missing, then write tables and figure"),
                       ("status", "list finished and pending runs (trains nothing)"),
                       ("tables", "rebuild tables and figure from the finished runs")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("configs", nargs="+", metavar="config",
                       help="experiment YAML(s), e.g. experiments/c1c2_vgg_depth.yaml")
        p.add_argument("--smoke", action="store_true", help="the config's tiny variant (CPU, seconds)")
        p.add_argument("--models", type=_csv, help="comma list: only these models (default: all)")
        p.add_argument("--seeds", type=_seeds, help="comma list: only these seeds (default: the config's)")
        p.add_argument("--out", help="results folder (default results/<name>, or runs/experiments-smoke/<name>)")
        p.add_argument("--dataset", help="override dataset.name (e.g. cifar100); default out gets a suffix")
        p.add_argument("--data-dir", help="override dataset.data_dir")
        p.add_argument("--device", help="auto, cpu, cuda, cuda:1 (default: the config's)")
        p.add_argument("--time-limit", type=float, help="seconds: start no run that would likely end later")
        # results/ is committed, and an inline plotly.js is ~4.7 MB per figure: default to the CDN.
        p.add_argument("--plotlyjs", choices=("inline", "cdn"), default="cdn",
                       help="figure.html loading plotly.js from the CDN (default: a few kB, committed with "
                       "the results) or with plotly.js inside (offline, ~4.7 MB)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_main, args)


def _main(args: argparse.Namespace) -> int:
    from repnas.errors import UserError

    if len(args.configs) > 1 and args.out:
        raise UserError("--out takes one experiment config; give several without --out")
    start, code = time.perf_counter(), 0
    for k, config in enumerate(args.configs):
        left = None if args.time_limit is None else args.time_limit - (time.perf_counter() - start)
        code = max(code, _one(args, config, left, start_one=k == 0))
    return code


def _one(args: argparse.Namespace, config: str, time_limit: float | None, start_one: bool) -> int:
    """One experiment of the command: ``time_limit`` is what the command has left of its own."""
    from repnas.experiments._config import load_experiment
    from repnas.experiments._runner import run_experiment

    exp = load_experiment(config, smoke=args.smoke)
    suffix = ""
    if args.dataset:
        exp.dataset["name"] = args.dataset
        suffix = f"-{args.dataset}"
    if args.data_dir:
        exp.dataset["data_dir"] = args.data_dir
    default = Path("runs/experiments-smoke") if args.smoke else Path("results")
    out = Path(args.out) if args.out else default / f"{exp.name}{suffix}"

    if exp.kind == "compare":
        from repnas.experiments._frontier import run_compare

        written = run_compare(exp, out, args.plotlyjs)
        print(f"{exp.name}: wrote {', '.join(str(p) for p in written.values())}")
        return 0

    if args.command in ("run", "status"):
        outcome = run_experiment(exp, out, models=args.models, seeds=args.seeds, device=args.device,
                                 time_limit=time_limit, dry_run=args.command == "status",
                                 progress=not args.quiet, start_one=start_one)
        if args.command == "status":
            print(f"{exp.name} ({out}): {len(outcome.skipped)} done, {len(outcome.left)} pending")
            for name, seed in outcome.left:
                print(f"  pending: {name} seed {seed}")
            return 0
        print(f"{exp.name}: trained {len(outcome.trained)}, skipped {len(outcome.skipped)} (already done), "
              f"failed {len(outcome.failed)}, left {len(outcome.left)}; {outcome.wall_seconds:.1f} s")
    _write_outputs(exp, out, args.plotlyjs)
    if args.command == "run" and outcome.failed:
        names = ", ".join(f"{name} seed {seed}" for name, seed, _ in outcome.failed)
        print(f"repnas: error: {len(outcome.failed)} run(s) failed: {names}", file=sys.stderr)
        return 1
    return 0


def _write_outputs(exp, out: Path, plotlyjs: str) -> None:
    from repnas.experiments._figures import accuracy_vs_params, write_figure
    from repnas.experiments._tables import load_runs, summarize, write_tables

    written = write_tables(exp, out)
    runs = load_runs(out)
    summary = summarize(runs[runs["model"].isin([e.name for e in exp.models])], [e.name for e in exp.models])
    if len(summary):
        title = f"{exp.name}: {exp.dataset.get('name')}" + (" (smoke)" if exp.smoke else "")
        written["figure"] = write_figure(accuracy_vs_params(summary, title), out / "figure.html", plotlyjs)
    print(f"{exp.name}: wrote {', '.join(str(p) for p in written.values())}")


if __name__ == "__main__":
    sys.exit(main())
