"""``repnas search``: multi-objective search over repetition schemes under a parameter budget.

Example: ``repnas search --space quick --dataset digits --trials 12 --out runs/quick``. Prints a
line per finished trial and the Pareto front at the end; everything lands in the run directory
(``search.yaml``, the Optuna storage, ``trials.parquet``, ``trials/<n>/``). ``--resume`` continues a
search that was stopped or killed.

Many machines: start with ``--storage postgresql://USER@HOST/DB --study NAME``, then run
``repnas search --join --storage postgresql://USER@HOST/DB --study NAME`` on each other machine
(docs/scaling.md). ``--join`` on a finished study rebuilds ``trials.parquet`` from the database.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from repnas.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    from repnas.cli import plain_text

    p = subparsers.add_parser("search", help="search repetition schemes under a parameter budget",
                              description=plain_text(__doc__))
    p.add_argument("--space", help="built-in space (quick, vgg-depth, wrn-width, resnet) or a space YAML")
    p.add_argument("--model", metavar="SPEC", help="search any model instead of a space: module:callable "
                   "(torchvision.models:resnet18), timm:NAME or path/to/file.py:Class; its shape is kept and "
                   "the knobs come from its convs (docs/your-model.md)")
    p.add_argument("--model-kwargs", metavar="YAML", help="keyword arguments of --model's callable, "
                   "e.g. '{width_mult: 0.5}'")
    p.add_argument("--stem", help="with --model: the conv adapted to the dataset's channels (default: the first)")
    p.add_argument("--head", help="with --model: the linear adapted to the class count (default: the last)")
    p.add_argument("--dataset", help="digits, mnist, fashionmnist, cifar10, cifar100, rotmnist, or imagefolder:PATH "
                   "(your images: a folder or .tar.gz of [train/,test/]<class>/<image>; classes and image "
                   "shape are read from it) (default: the space's)")
    p.add_argument("--image-size", type=int, metavar="N", help="resize every image to NxN when it is loaded "
                   "(images of mixed or non-square sizes need it; recorded in search.yaml and each trial's config)")
    p.add_argument("--budget", help="parameter budget: one (600k, 1.5M), a range searched log-uniformly "
                   "(50k:2M) or levels (100k,300k,1M) (default: the space's)")
    p.add_argument("--trials", type=int, help="distinct models to try (default 12): failed and infeasible ones "
                   "count, a proposal of a model already trained is reused and does not")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the space's)")
    p.add_argument("--backend", choices=("optuna", "ray"), help="search driver (default optuna)")
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://...) or a journal file "
                   "path (default: the run directory's study.db, or journal.log with --workers > 1)")
    p.add_argument("--study", help="study name (default: the run directory's name)")
    p.add_argument("--out", help="run directory (default runs/<space>)")
    p.add_argument("--workers", type=int, help="worker processes sharing the study (default 1); with "
                   "--backend ray, the most trials at once (default: as many as CPUs/GPUs allow)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share of one trial, e.g. 0.25 packs 4 on a GPU")
    p.add_argument("--resume", action="store_true", help="continue the search in --out")
    p.add_argument("--join", action="store_true", help="add this machine's workers to the search --study "
                   "on the database server --storage (postgresql://...); --out defaults to runs/<study>")
    p.add_argument("--join-timeout", type=float, metavar="S", help="with --join: wait up to S seconds for the "
                   "study and its config to appear (workers of a job array start with the starter; default 600)")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial (default 0)")
    p.add_argument("--sampler", choices=("nsga2", "tpe", "gp", "random"),
                   help="Optuna sampler (default nsga2)")
    p.add_argument("--objectives", help="comma list from val_accuracy, params, physical_params, flops, "
                   "train_seconds (default val_accuracy,params,flops)")
    p.add_argument("--early-stop", choices=("none", "sha", "moasha"),
                   help="multi-objective early stopping (default moasha: it reached 95%% of the hypervolume "
                   "of no stopping with 40%% of the compute, benchmarks/early_stop.py; sha: Optuna backend only)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--data-dir", help="where datasets are read or cached")
    p.add_argument("--ray-address", help="address of an existing Ray cluster (--backend ray)")
    p.add_argument("--ray-storage", help="Tune's storage for trial checkpoints and experiment state: a path "
                   "every node reaches (NFS) or a URI such as s3://bucket/path (default: <out>/ray, one node)")
    p.add_argument("--resources-per-trial", help="Ray resources of one trial, e.g. cpu=2,gpu=0.5,my_node=1 "
                   "(custom resources pin trials to nodes started with them; default cpu=1 and --gpus-per-trial)")
    p.add_argument("--max-failures", type=int, help="with --workers: dead worker processes (killed by a signal, "
                   "e.g. the OOM killer) replaced, their trials retried, in all, before the search stops (exit 3); "
                   "with --backend ray: restarts of a trial whose node or process died, from its last epoch's "
                   "checkpoint (default 3)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--config", metavar="FILE", help="start a new search from a run's search.yaml (or any YAML "
                   "of its keys); flags given as well override it")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds "
                   "(running trials finish)")
    p.add_argument("--replay", metavar="TABLE", help="replay a recorded table (repnas table build) instead of "
                   "training: the real search (sampler, deduplication, early stopping) with each trial's epochs "
                   "read from the table, in virtual time; the space, dataset, budget and epochs are the table's")
    p.add_argument("--replay-speed", type=float, metavar="X", help="with --replay: sleep the recorded train "
                   "seconds / X (default: do not sleep, time is virtual)")
    p.add_argument("--dry-run", nargs="?", type=int, const=5, metavar="N", help="print the solved model "
                   "(widths, params, FLOPs) of N sampled points (default 5) and exit; nothing is trained or written")
    p.set_defaults(func=run)


#: flags that are SearchConfig keys of the same name (what --config may also give)
_CONFIG_FLAGS = ("space", "dataset", "budget", "trials", "epochs", "seed", "objectives", "sampler", "backend",
                 "storage", "study", "workers", "gpus_per_trial", "early_stop", "device", "data_dir", "image_size",
                 "max_failures")


def build_search_config(args: argparse.Namespace):
    """A validated SearchConfig from the arguments (new search), before anything is written: the
    defaults are ``repnas.search.search_config``'s (the Python API's), a ``--config`` file fills in
    what the flags do not give."""
    from repnas.search._api import config_file_arguments, search_config

    given = {name: getattr(args, name, None) for name in _CONFIG_FLAGS}
    if getattr(args, "model", None) is not None:
        from repnas.spaces._model_cli import model_space_dict

        if args.space is not None:
            raise UserError("give --space or --model, not both")
        given["space"] = model_space_dict(args.model, args.model_kwargs, args.stem, args.head, args.dataset,
                                          args.budget)
    elif any(getattr(args, n, None) is not None for n in ("model_kwargs", "stem", "head")):
        raise UserError("--model-kwargs, --stem and --head go with --model")
    options = config_file_arguments(args.config) if getattr(args, "config", None) else {}
    options.update({k: v for k, v in given.items() if v is not None})
    for name in ("replay", "replay_speed"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if args.out is not None:
        options["out"] = args.out
    search, out = search_config(**options)
    search.ray = ray_options(args, search.ray or {})
    return search, out


def resume_search_config(args: argparse.Namespace):
    """The SearchConfig saved in ``--out``, with the arguments a resume may change applied: the
    flags go to :func:`repnas.search._api.resume_config`, the one place that decides what a resume
    may change (the Python API's ``run_search(resume=True)`` goes there too); the Ray options are
    the command line's own."""
    from repnas.runs._storage import absolute_storage
    from repnas.search._api import resume_config

    if not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run directory to continue)")
    if getattr(args, "config", None):
        raise UserError("--config starts a new search; --resume continues the run's own search.yaml")
    if getattr(args, "replay", None) is not None or getattr(args, "replay_speed", None) is not None:
        raise UserError("--replay starts a new search; --resume replays the run's own table")
    changes = {name: getattr(args, name) for name in (
        "space", "dataset", "study", "seed", "epochs", "sampler", "budget", "objectives",
        "trials", "workers", "gpus_per_trial", "device", "early_stop", "backend", "data_dir", "image_size",
        "max_failures")}
    changes["storage"] = absolute_storage(args.storage) if args.storage is not None else None  # relative: to the cwd
    _check_counts(args.trials if args.trials is not None else 1, None, args.workers, args.gpus_per_trial,
                  args.max_failures)
    search = resume_config(args.out, **changes)
    if args.ray_storage is not None and args.ray_storage != search.ray.get("storage"):
        raise UserError(f"--ray-storage {args.ray_storage} differs from the run's "
                        f"{search.ray.get('storage') or 'default'}; its Tune experiments live there")
    search.ray = ray_options(args, search.ray)
    return search, Path(args.out)


def joined_search_config(args: argparse.Namespace):
    """The SearchConfig of the running search ``--study`` on ``--storage`` (``--join``), with this
    machine's ``--workers``/``--device``/``--gpus-per-trial``/``--data-dir``; its run directory."""
    from repnas.runs._rundir import RunDir, SearchConfig
    from repnas.runs._workers import join_search_config as from_study

    if args.resume:
        raise UserError("--join and --resume exclude each other (--join again to rejoin a search)")
    if not args.storage or not args.study:
        raise UserError("--join needs --storage (the database server's URL) and --study (the search's name)")
    given = [name for name in ("space", "dataset", "budget", "trials", "epochs", "seed", "sampler",
                               "objectives", "early_stop", "image_size") if getattr(args, name) is not None]
    if given or args.backend == "ray":
        names = ", ".join("--" + n.replace("_", "-") for n in given) or "--backend ray"
        raise UserError(f"--join takes the search's config from the study; drop {names}")
    _check_counts(1, None, args.workers, args.gpus_per_trial, args.max_failures)
    out = Path(args.out or Path("runs") / args.study)
    run = RunDir(out)
    if run.search_yaml.is_file():  # rejoining: the same search only
        saved = SearchConfig.from_yaml(run.search_yaml)
        if saved.study != args.study:
            raise UserError(f"run directory {out} belongs to study {saved.study!r}, not {args.study!r}")
    elif run.is_used():
        raise UserError(f"run directory {out} already exists; use another --out")
    search = from_study(args.storage, args.study, {
        "workers": args.workers or 1, "device": args.device, "gpus_per_trial": args.gpus_per_trial,
        "data_dir": args.data_dir, "max_failures": args.max_failures}, timeout=_join_timeout(args))
    return search, out


def _join_timeout(args: argparse.Namespace) -> float:
    from repnas.runs._join_wait import DEFAULT_JOIN_TIMEOUT

    timeout = DEFAULT_JOIN_TIMEOUT if args.join_timeout is None else args.join_timeout
    if not timeout >= 0:
        raise UserError(f"--join-timeout must be >= 0 seconds, got {timeout:g}")
    return timeout


def ray_options(args: argparse.Namespace, saved: dict) -> dict:
    """``SearchConfig.ray`` from ``--ray-storage``, ``--resources-per-trial``."""
    options = dict(saved)
    if args.ray_storage is not None:
        options["storage"] = args.ray_storage
    if args.resources_per_trial is not None:
        from repnas.search.ray._driver import parse_resources

        options["resources"] = parse_resources(args.resources_per_trial)
    return options


def _check_counts(trials: int, epochs: int | None, workers: int | None, gpus: float | None,
                  max_failures: int | None = None) -> None:
    from repnas.search._api import check_counts

    check_counts(trials, epochs, workers, gpus, max_failures=max_failures)


def run(args: argparse.Namespace) -> int:
    from repnas.search._api import run_search_config

    if (args.join or args.resume) and getattr(args, "model", None) is not None:
        raise UserError("--model starts a new search; --resume and --join take the run's own space")
    if args.join:
        search, out = joined_search_config(args)
    elif args.resume:
        search, out = resume_search_config(args)
    else:
        from repnas.runs._start import check_new_run_dir

        search, out = build_search_config(args)
        if args.dry_run is not None:
            from repnas.search._dry_run import dry_run_text

            print(dry_run_text(search, args.dry_run))
            return 0
        from repnas.runs._array_start import as_array_worker

        worker = as_array_worker(search, out, _join_timeout(args))  # the study exists: join it
        if worker is not None:
            (search, out), args.join = worker, True
    if args.dry_run is not None:
        raise UserError("--dry-run previews a new search; it does not combine with --resume")
    started = time.time()
    # validated, owned (one process per run directory), started atomically, stopped cleanly:
    # run_search_config runs the driver inside supervised_search
    try:
        if not (args.join or args.resume):
            check_new_run_dir(out)
        result = run_search_config(search, out, resume=args.resume, progress=not args.quiet, timeout=args.timeout,
                                   ray_address=args.ray_address, join=args.join)
    except Exception as exc:  # another worker of the array started the same search first: join it
        from repnas.runs._array_start import as_array_worker, lost_the_start

        if args.join or args.resume or not lost_the_start(search, exc):
            raise
        (search, out), args.join = as_array_worker(search, out, _join_timeout(args), wait=True), True
        result = run_search_config(search, out, progress=not args.quiet, timeout=args.timeout, join=True)
    from repnas.analysis._front import no_complete_reason

    table = result.trials
    print("\n" + result.summary(time.time() - started))
    print(f"run directory: {out}")
    reason = no_complete_reason(table, search)
    if reason and args.timeout is not None and not len(table):
        reason = None  # --timeout ran out before the first trial: what was asked, not a failure
    if reason:  # a search that trained nothing usable has failed: say why, exit non-zero
        if "over the budget" in reason and not (args.resume or args.join):
            from repnas.runs._discard import discard_infeasible_start

            if discard_infeasible_start(search, out):  # so the advised --budget works on this --out
                reason += f"; {out} was removed"
        raise UserError(reason)
    return 0
