"""``python -m repnas.experiments``: run an experiment end to end, or rebuild its tables.

    python -m repnas.experiments run experiments/c3_rotmnist.yaml [--smoke] [--models a,b]
        [--seeds 0,1] [--out results/DIR] [--device cuda] [--data-dir DIR] [--time-limit 540]
    python -m repnas.experiments status experiments/c3_rotmnist.yaml   # done / pending runs
    python -m repnas.experiments tables experiments/c3_rotmnist.yaml   # tables + figure only
    python -m repnas.experiments tables        # every queued experiment's tables + docs/results.md
    python -m repnas.experiments gpu [--time-limit 480] [--smoke] [--device cuda]   # a lent GPU's command

Several configs run one after the other, in the order given, sharing one ``--time-limit`` (what a
lent GPU's 10-minute command wants: ``run A.yaml B.yaml --time-limit 480`` finishes what it can of
A, then spends what is left on B).

``gpu`` runs the self-check of the speed paths, the CUDA checks, the benchmarks and the experiment
queue (``experiments/gpu_queue.yaml``) within ``--time-limit`` and packs what it wrote into one
``results.tgz`` (see ``_gpu.py``).

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
        p.add_argument("configs", nargs="*" if name == "tables" else "+", metavar="config",
                       help="experiment YAML(s), e.g. experiments/c1c2_vgg_depth.yaml" + (
                           " (none: every experiment of experiments/gpu_queue.yaml, then docs/results.md)"
                           if name == "tables" else ""))
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
    _add_gpu_parser(sub)
    return parser


def _add_gpu_parser(sub) -> None:
    text = ("on a lent GPU: a self-check of the speed paths, CUDA checks, benchmarks, then the experiment queue, "
            "packed; starts nothing past "
            "--time-limit; skips what results/ holds; writes one results.tgz")
    p = sub.add_parser("gpu", help=text, description=text)
    p.add_argument("--time-limit", type=float, help="seconds for the whole command (default 480: one 10-minute "
                   "device command with the install and the copy back; 150 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="every step with tiny settings on digits (CPU, ~2-3 min); "
                   "output in the git-ignored runs/gpu-smoke/")
    p.add_argument("--device", default="auto", help="auto (default: CUDA), cuda, cuda:1; cpu only with --smoke")
    p.add_argument("--data-dir", help="folder holding cifar10.tar.gz and mnist.tar.gz (default: the experiments' "
                   "candidates: ../shared/datasets, shared/datasets, .data)")
    p.add_argument("--queue", default="experiments/gpu_queue.yaml", help="the queue file (priority order)")
    p.add_argument("--results", help="results folder (default results/, or runs/gpu-smoke/results with --smoke)")
    p.add_argument("--archive", help="where results.tgz goes (default $OUT/results.tgz when $OUT is set, else "
                   "results.tgz; with --smoke runs/gpu-smoke/results.tgz)")
    p.add_argument("--only", help="comma list of task-name prefixes to run (e.g. selfcheck,check/,bench/packed_trials"
                   "; without selfcheck the speed paths run unchecked, at their defaults)")
    p.add_argument("--plan", action="store_true", help="run nothing, need no GPU: print what the next sessions "
                   "would run, in order, with each estimate and its basis, and the GPU minutes left per table")
    p.add_argument("--gpu", help="with --plan: the kind of GPU to plan for (a folder of results/gpu/ or part of a "
                   "GPU's name; default: the kind of the latest session)")
    p.add_argument("--sessions", type=int, default=2, help="with --plan: how many sessions to list task by task "
                   "(default 2; the forecast itself runs until the queue is done)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_main, args)


def _main(args: argparse.Namespace) -> int:
    from repnas.errors import UserError

    if args.command == "gpu":
        return _gpu(args)
    if args.command == "tables" and not args.configs:
        return _all_tables(args)
    if len(args.configs) > 1 and args.out:
        raise UserError("--out takes one experiment config; give several without --out")
    if args.time_limit is not None and not args.time_limit > 0:  # NaN too: a limit that never ends nothing
        raise UserError(f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
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
    from repnas.experiments._outputs import write_outputs

    write_outputs(exp, out, args.plotlyjs)
    if args.command == "run" and outcome.failed:
        names = ", ".join(f"{name} seed {seed}" for name, seed, _ in outcome.failed)
        print(f"repnas: error: {len(outcome.failed)} run(s) failed: {names}", file=sys.stderr)
        return 1
    return 0


def _gpu(args: argparse.Namespace) -> int:
    import os

    from repnas.errors import UserError
    from repnas.experiments._gpu import run_gpu_session, session_for

    if args.plan:
        return _gpu_plan(args)
    if args.gpu:
        raise UserError("--gpu only goes with --plan (a session runs on the GPU it finds)")
    session = session_for(args.device, args.smoke, Path(args.queue), Path(args.results) if args.results else None,
                          args.data_dir)
    if not session.device.startswith("cuda") and not args.smoke:
        raise UserError(f"the gpu command needs CUDA (device {session.device}); --smoke runs its CPU variant")
    default_archive = Path("runs/gpu-smoke/results.tgz") if args.smoke else \
        Path(os.environ["OUT"]) / "results.tgz" if os.environ.get("OUT") else Path("results.tgz")
    # smoke: 150 s, 120 s of steps as before the self-check (issue 27.2) plus its ~30 s on a CPU
    limit = args.time_limit if args.time_limit is not None else (150.0 if args.smoke else 480.0)
    if limit <= 0:
        raise UserError(f"--time-limit must be > 0, got {limit:g}")
    prefixes = _csv(args.only) if args.only else None
    only = (lambda name: any(name.startswith(p) for p in prefixes)) if prefixes else None
    page = session.results.parent / "results.md" if args.smoke else Path("docs/results.md")
    record = run_gpu_session(session, limit, Path(args.archive) if args.archive else default_archive,
                             reserve=15.0 if args.smoke else 25.0, only=only, write_page=page)
    failed = [t for p in record["phases"].values() for t in p.get("failed", []) + p.get("killed", [])]
    print(f"gpu session: {record['wall_seconds']:.0f} s; " + "; ".join(
        f"{name}: {len(p.get('done', []))} done, {len(p.get('left', []))} left" for name, p in record["phases"].items())
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _gpu_plan(args: argparse.Namespace) -> int:
    import tempfile

    from repnas.errors import UserError
    from repnas.experiments._forecast import forecast, forecast_session, format_forecast

    if args.smoke:
        raise UserError("--plan forecasts real sessions; --smoke runs its CPU variant instead")
    limit = args.time_limit if args.time_limit is not None else 480.0
    if args.sessions < 0:
        raise UserError(f"--sessions must be >= 0, got {args.sessions}")
    with tempfile.TemporaryDirectory(prefix="repnas-plan-") as work:
        session = forecast_session(Path(args.results) if args.results else Path("results"), Path(args.queue),
                                   args.gpu, work=Path(work))
        print(format_forecast(forecast(session, time_limit=limit), detail=args.sessions), end="")
    return 0


def _all_tables(args: argparse.Namespace) -> int:
    from repnas.experiments._gpu_queue import load_queue
    from repnas.experiments._results_page import rebuild_all

    queue = load_queue(Path("experiments/gpu_queue.yaml"))
    rebuild_all(queue, Path(args.out) if args.out else Path("results"), page=Path("docs/results.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
