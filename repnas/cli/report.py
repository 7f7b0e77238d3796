"""``repnas report RUN [RUN2 ...]``: one offline HTML page of Pareto fronts, costs and convergence."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write an offline HTML report (fronts, hypervolume, knobs) of one or more runs",
        description="Write one self-contained HTML report of one or more search runs. A RUN is a run "
        "directory, a Ray Tune experiment directory or an Optuna storage (.db/.log or URL); several "
        "RUNs are overlaid. See docs/analysis.md.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directory, Ray Tune experiment directory or Optuna storage")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--baselines", metavar="FILE", default=None,
                        help="CSV or YAML of plain models (name, params, flops, val_accuracy, test_accuracy), or "
                        "the run directory of a search over a plain space at budget levels; drawn as a curve")
    parser.add_argument("--title", default=None, help="page title (default: the run names)")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="also write each figure as PNG and SVG into DIR (needs kaleido and a Chromium)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the paths written")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repnas.analysis import load_inputs, write_images, write_report

    # load once for both outputs (a study read through Optuna or Ray is the slow part)
    runs, baselines = load_inputs(args.runs, args.baselines)
    if args.images:  # first, so that a missing kaleido fails before anything is written
        images = write_images(runs, args.images, baselines=baselines)
        if not args.quiet:
            print(f"wrote {len(images)} images to {args.images}")
    out = write_report(runs, out=args.out, baselines=baselines, title=args.title)
    if not args.quiet:
        print(f"wrote {out}")
    return 0
