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
import contextlib
import time
from pathlib import Path

from repnas.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="search repetition schemes under a parameter budget",
                              description=__doc__.splitlines()[0])
    p.add_argument("--space", help="built-in space (quick, vgg-depth, wrn-width, resnet) or a space YAML")
    p.add_argument("--dataset", help="dataset name (default: the space's)")
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
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial (default 0)")
    p.add_argument("--sampler", choices=("nsga2", "tpe", "gp", "random"),
                   help="Optuna sampler (default nsga2)")
    p.add_argument("--objectives", help="comma list from val_accuracy, params, physical_params, flops, "
                   "train_seconds (default val_accuracy,params,flops)")
    p.add_argument("--early-stop", choices=("none", "sha", "moasha"),
                   help="multi-objective early stopping (default moasha with the Optuna backend: it reached "
                   "95%% of the hypervolume of no stopping with 40%% of the compute, benchmarks/early_stop.py; "
                   "none with Ray)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--data-dir", help="where datasets are read or cached")
    p.add_argument("--ray-address", help="address of an existing Ray cluster (--backend ray)")
    p.add_argument("--ray-storage", help="Tune's storage for trial checkpoints and experiment state: a path "
                   "every node reaches (NFS) or a URI such as s3://bucket/path (default: <out>/ray, one node)")
    p.add_argument("--resources-per-trial", help="Ray resources of one trial, e.g. cpu=2,gpu=0.5,my_node=1 "
                   "(custom resources pin trials to nodes started with them; default cpu=1 and --gpus-per-trial)")
    p.add_argument("--max-failures", type=int, help="restarts of a Ray trial whose node or process died, from its "
                   "last epoch's checkpoint (default 3)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(func=run)


def build_search_config(args: argparse.Namespace):
    """A validated SearchConfig from the arguments (new search), before anything is written."""
    from repnas.search._optuna_driver import default_population
    from repnas.search._rundir import DEFAULT_OBJECTIVES, RunDir, SearchConfig, parse_objectives
    from repnas.spaces import dataset_info, load_space, parse_budget, smallest_candidate

    if args.space is None:
        raise UserError("--space is required for a new search (or --resume an existing one)")
    space = load_space(args.space)
    dataset = args.dataset or space.dataset
    if dataset.lower().startswith("imagefolder:"):  # dataset_info's advice names describe's options
        raise UserError(f"--dataset {dataset}: repnas search needs a dataset whose shape is known before "
                        "loading (the budget solver sizes candidates first); imagefolder works with repnas train")
    dataset_info(dataset)  # unknown dataset -> UserError
    budget = parse_budget(args.budget if args.budget is not None else space.budget, "--budget")
    trials = 12 if args.trials is None else args.trials
    _check_counts(trials, args.epochs, args.workers, args.gpus_per_trial)
    minimum = smallest_candidate(space, dataset)
    if budget.largest < minimum:
        raise UserError(f"budget {budget.describe()} is below the smallest candidate of space {space.name!r} on "
                        f"{dataset} ({minimum:,} params); use --budget {minimum:,} or more")
    out = Path(args.out or Path("runs") / space.name)
    backend = args.backend or "optuna"
    workers = args.workers or (0 if backend == "ray" else 1)  # 0: Ray packs trials by resources
    return SearchConfig(
        space=space.to_dict(), space_name=space.name, dataset=dataset, budget=budget.to_value(), trials=trials,
        epochs=args.epochs or space.epochs, seed=args.seed or 0,
        objectives=parse_objectives(args.objectives or ",".join(DEFAULT_OBJECTIVES)),
        sampler=args.sampler or "nsga2", population_size=default_population(trials),
        backend=backend,
        storage=args.storage or RunDir(out).default_storage(workers), study=args.study or out.name,
        workers=workers, gpus_per_trial=args.gpus_per_trial or 1.0,
        early_stop=args.early_stop or _default_early_stop(backend),
        device=args.device or "auto", data_dir=args.data_dir, ray=ray_options(args, {}),
    ), out


def _default_early_stop(backend: str) -> str:
    """moasha for the Optuna backend (benchmarks/early_stop.py: 95% of no stopping's hypervolume
    with 0.40 +- 0.26 of its train-seconds over 3 seeds); none for Ray, which does not apply the
    rule (yet)."""
    return "none" if backend == "ray" else "moasha"


def resume_search_config(args: argparse.Namespace):
    """The SearchConfig saved in ``--out``, with the arguments a resume may change applied."""
    from repnas.search._rundir import RunDir, SearchConfig, parse_objectives

    if not args.out:
        raise UserError("--resume needs --out RUN_DIR (the run directory to continue)")
    run = RunDir(args.out)
    if not run.search_yaml.is_file():
        from repnas.search._start import staging_dir

        if staging_dir(args.out).exists() and not run.root.exists():
            raise UserError(f"cannot resume: the search in {args.out} was stopped before it had started; "
                            "run the same command without --resume")
        raise UserError(f"cannot resume: {run.search_yaml} not found")
    search = SearchConfig.from_yaml(run.search_yaml)
    if args.space is not None:  # a built-in name or a YAML path: compare what it defines
        from repnas.spaces import load_space

        if load_space(args.space).to_dict() != search.space:
            raise UserError(f"--space {args.space} differs from the run's space {search.space_name!r}; "
                            "a resumed search keeps its config")
    fixed = {"dataset": (args.dataset, search.dataset),
             "study": (args.study, search.study), "storage": (args.storage, search.storage),
             "seed": (args.seed, search.seed), "epochs": (args.epochs, search.epochs),
             "sampler": (args.sampler, search.sampler)}
    for name, (given, saved) in fixed.items():
        if given is not None and str(given) != str(saved):
            raise UserError(f"--{name} {given} differs from the run's {saved}; "
                            "a resumed search keeps its config")
    if args.budget is not None:
        from repnas.spaces import parse_budget

        if parse_budget(args.budget, "--budget") != search.budget_spec:
            raise UserError(f"--budget {args.budget} differs from the run's {search.budget_spec.describe()}; "
                            "a resumed search keeps its config")
    if args.objectives is not None and parse_objectives(args.objectives) != search.objectives:
        raise UserError(f"--objectives {args.objectives} differs from the run's "
                        f"{','.join(search.objective_names)}; a resumed search keeps its config")
    _check_counts(args.trials if args.trials is not None else search.trials, None, args.workers,
                  args.gpus_per_trial)
    if args.ray_storage is not None and args.ray_storage != search.ray.get("storage"):
        raise UserError(f"--ray-storage {args.ray_storage} differs from the run's "
                        f"{search.ray.get('storage') or 'default'}; its Tune experiments live there")
    search.ray = ray_options(args, search.ray)
    for name in ("trials", "workers", "gpus_per_trial", "device", "early_stop", "backend", "data_dir"):
        value = getattr(args, name)
        if value is not None:
            setattr(search, name, value)
    if search.backend == "optuna" and search.workers == 0:  # a Ray search resumed by the Optuna driver
        search.workers = 1
    return search, Path(args.out)


def join_search_config(args: argparse.Namespace):
    """The SearchConfig of the running search ``--study`` on ``--storage`` (``--join``), with this
    machine's ``--workers``/``--device``/``--gpus-per-trial``/``--data-dir``; its run directory."""
    from repnas.search._distributed import join_search_config as from_study
    from repnas.search._rundir import RunDir, SearchConfig

    if args.resume:
        raise UserError("--join and --resume exclude each other (--join again to rejoin a search)")
    if not args.storage or not args.study:
        raise UserError("--join needs --storage (the database server's URL) and --study (the search's name)")
    given = [name for name in ("space", "dataset", "budget", "trials", "epochs", "seed", "sampler",
                               "objectives", "early_stop") if getattr(args, name) is not None]
    if given or args.backend == "ray":
        names = ", ".join("--" + n.replace("_", "-") for n in given) or "--backend ray"
        raise UserError(f"--join takes the search's config from the study; drop {names}")
    _check_counts(1, None, args.workers, args.gpus_per_trial)
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
        "data_dir": args.data_dir})
    return search, out


def ray_options(args: argparse.Namespace, saved: dict) -> dict:
    """``SearchConfig.ray`` from ``--ray-storage``, ``--resources-per-trial``, ``--max-failures``."""
    options = dict(saved)
    if args.ray_storage is not None:
        options["storage"] = args.ray_storage
    if args.resources_per_trial is not None:
        from repnas.search._ray_driver import parse_resources

        options["resources"] = parse_resources(args.resources_per_trial)
    if args.max_failures is not None:
        if args.max_failures < 0:
            raise UserError(f"--max-failures must be >= 0, got {args.max_failures}")
        options["max_failures"] = args.max_failures
    return options


def _check_counts(trials: int, epochs: int | None, workers: int | None, gpus: float | None) -> None:
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if gpus is not None and not 0 < gpus <= 64:
        raise UserError(f"--gpus-per-trial must be > 0 and <= 64, got {gpus}")


def run(args: argparse.Namespace) -> int:
    from repnas.search._rundir import RunDir
    from repnas.search._supervise import supervised_search

    if args.join:
        search, out = join_search_config(args)
    elif args.resume:
        search, out = resume_search_config(args)
    else:
        from repnas.search._start import check_new_run_dir

        search, out = build_search_config(args)
        check_new_run_dir(out)
    started = time.time()
    progress = not args.quiet
    # validated, owned (one process per run directory), started atomically, stopped cleanly; a joiner
    # adds workers to a study that already exists on a server: its driver makes its own folder
    frame = contextlib.nullcontext(False) if args.join else supervised_search(search, out, resume=args.resume)
    with frame as resume:
        if search.backend == "ray":
            from repnas.search._ray_driver import run_ray_search

            run_ray_search(search, out, resume=resume, progress=progress, address=args.ray_address)
        else:
            from repnas.search._optuna_driver import run_optuna_search

            run_optuna_search(search, out, resume=resume, progress=progress, join=args.join)
    import pandas as pd

    from repnas.search._front import no_complete_reason, summary_text

    table = pd.read_parquet(RunDir(out).trials_parquet)
    print("\n" + summary_text(table, search, time.time() - started))
    print(f"run directory: {out}")
    reason = no_complete_reason(table, search)
    if reason:  # a search that trained nothing usable has failed: say why, exit non-zero
        raise UserError(reason)
    return 0
