"""The Python entry point of a search: :func:`run_search`, with exactly ``repnas search``'s defaults.

``repnas search`` is a thin caller of this module: it turns its flags into :func:`search_config`'s
keyword arguments (``None`` = not given) and calls :func:`run_search_config`. So the defaults live
in one place, here, and a search started from Python writes the same ``search.yaml`` as the same
search started from the command line.

What Python adds over the flags, in Optuna's own terms:

- ``sampler`` may be any ``optuna.samplers.BaseSampler`` instance, used as given (the study's
  ``sampler`` is that object). ``search.yaml`` records it as ``custom:<ClassName>``; a resume
  (``repnas search --resume`` or ``run_search(..., resume=True)``) goes on with the pickled copy in
  ``samplers/worker0.pkl`` unless another instance is passed. Extra workers (``workers > 1``) get a
  copy each, reseeded with Optuna's ``reseed_rng`` (what Optuna does for its own parallel jobs), so
  they do not propose the same points.
- ``callbacks``: ``callback(study, frozen_trial)`` after each trial, as ``Study.optimize(callbacks=)``
  calls them; ``study.stop()`` inside one ends the search after that trial. They run in the calling
  process, so with ``workers > 1`` they see the trials of worker 0 (the calling process).
- ``timeout``: stop asking for new trials after that many seconds (``Study.optimize(timeout=)``);
  running trials finish.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.runs._rundir import (
    DEFAULT_MAX_FAILURES,
    DEFAULT_OBJECTIVES,
    SAMPLERS,
    RunDir,
    SearchConfig,
    objectives_from_names,
)
from repnas.runs._storage import absolute_storage

#: ``callback(study, frozen_trial)``, as ``optuna.Study.optimize(callbacks=...)`` takes them.
Callback = Callable[[Any, Any], None]

#: Defaults of a new search, shared by :func:`run_search` and ``repnas search`` (``None`` in either
#: means "the default"; the space supplies dataset, budget and epochs).
DEFAULTS: dict[str, Any] = {
    "trials": 12,
    "seed": 0,
    "objectives": ",".join(DEFAULT_OBJECTIVES),
    "sampler": "nsga2",
    "backend": "optuna",
    "gpus_per_trial": 1.0,
    "early_stop": None,  # default_early_stop(backend)
    "device": "auto",
}

_CUSTOM = "custom:"


def default_early_stop(backend: str) -> str:
    """moasha, with either backend (benchmarks/early_stop.py: 95% of no stopping's hypervolume
    with 0.40 +- 0.26 of its train-seconds over 3 seeds; under Ray it is a Tune scheduler)."""
    return "moasha"


def _space_of(space: Any):
    """A SearchSpace from a built-in name, a YAML path, a SearchSpace or its dict definition."""
    from repnas.spaces import SearchSpace, load_space

    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return SearchSpace.from_dict(dict(space), "space")
    if isinstance(space, (str, Path)):
        return load_space(space)
    raise UserError(f"space must be a built-in name, a YAML path or a SearchSpace, not {type(space).__name__}")


def _sampler_name(sampler: Any) -> str:
    """The ``search.yaml`` value of a sampler argument: a name, or ``custom:<Class>`` for an instance."""
    import optuna

    if sampler is None:
        return DEFAULTS["sampler"]
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return f"{_CUSTOM}{type(sampler).__name__}"
    if isinstance(sampler, str) and sampler in SAMPLERS:
        return sampler
    raise UserError(f"sampler must be one of {', '.join(SAMPLERS)} or an optuna.samplers.BaseSampler, "
                    f"not {sampler!r}")


def check_counts(trials: int, epochs: int | None, workers: int | None, gpus: float | None,
                 timeout: float | None = None, max_failures: int | None = None) -> None:
    """One-line errors for counts a search cannot run with."""
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if gpus is not None and not 0 < gpus <= 64:
        raise UserError(f"--gpus-per-trial must be > 0 and <= 64, got {gpus}")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout}")
    if max_failures is not None and (isinstance(max_failures, bool) or not isinstance(max_failures, int)
                                     or max_failures < 0):
        raise UserError(f"--max-failures must be >= 0, got {max_failures}")


def search_config(space: Any = None, *, out: str | Path | None = None, dataset: str | None = None,
                  budget: int | str | None = None, trials: int | None = None, epochs: int | None = None,
                  seed: int | None = None, objectives: str | list | None = None, sampler: Any = None,
                  population_size: int | None = None, backend: str | None = None, storage: str | None = None,
                  study: str | None = None, workers: int | None = None, gpus_per_trial: float | None = None,
                  early_stop: str | None = None, device: str | None = None, data_dir: str | None = None,
                  image_size: int | None = None, recipe: dict | None = None,
                  ray: dict | None = None, max_failures: int | None = None, replay: str | Path | None = None,
                  replay_speed: float | None = None) -> tuple[SearchConfig, Path]:
    """A validated ``(SearchConfig, run directory)`` of a new search; ``None`` = the default.

    Checks everything a new search needs (space, dataset, budget against the space's smallest
    candidate, counts) before anything is written. ``dataset`` may be ``imagefolder:PATH`` (a
    folder or ``.tar.gz``): its shape is read from the files (class folders, one image's header)
    and its path recorded absolute; ``image_size`` resizes every image to a square of that side.
    ``replay``: a table (``repnas table build``) whose recorded epochs the trials replay instead of
    training (:mod:`repnas.search._replay`); the space, dataset, budget, epochs and recipe are the table's.
    """
    from repnas.search._samplers import default_population
    from repnas.spaces import parse_budget, smallest_candidate
    from repnas.train import absolute_dataset, dataset_shape

    replaying: dict[str, Any] = {}
    if replay is not None:
        space, dataset, budget, epochs, recipe, image_size, replaying = _replayed(
            replay, replay_speed, space, dataset, budget, epochs, recipe, data_dir, image_size)
        device = device or "cpu"
    elif replay_speed is not None:
        raise UserError("--replay-speed goes with --replay TABLE")
    if space is None:
        raise UserError("--space is required for a new search (space=; or --resume an existing one)")
    space = _space_of(space)
    from repnas.spaces._depth_limit import check_stage_depths

    check_stage_depths(space)  # a 100000-conv stage made the first trial's solve hang
    dataset = absolute_dataset(dataset or space.dataset)
    shape = dataset_shape(dataset, data_dir, image_size)  # an unknown name or unreadable folder -> UserError
    budget = parse_budget(budget if budget is not None else space.budget, "--budget")
    trials = DEFAULTS["trials"] if trials is None else int(trials)
    check_counts(trials, epochs, workers, gpus_per_trial, max_failures=max_failures)
    minimum = smallest_candidate(space, shape)
    if budget.largest < minimum:
        raise UserError(f"budget {budget.describe()} is below the smallest candidate of space {space.name!r} on "
                        f"{dataset} ({minimum:,} params); use --budget {minimum:,} or more")
    out = Path(out if out is not None else Path("runs") / space.name)
    backend = backend or DEFAULTS["backend"]
    if backend not in ("optuna", "ray"):
        raise UserError(f"unknown backend {backend!r}; choose optuna or ray")
    workers = workers or (0 if backend == "ray" else 1)  # 0: Ray packs trials by resources
    if isinstance(objectives, str) or objectives is None:
        objectives = objectives_from_names(objectives or DEFAULTS["objectives"])
    else:
        names = (o["name"] if isinstance(o, Mapping) else str(o) for o in objectives)
        objectives = objectives_from_names(",".join(names))
    config = SearchConfig(
        space=space.to_dict(), space_name=space.name, dataset=dataset, budget=budget.to_value(),
        trials=trials,
        epochs=epochs or space.epochs, seed=DEFAULTS["seed"] if seed is None else int(seed),
        objectives=objectives, sampler=_sampler_name(sampler),
        population_size=population_size or default_population(trials), backend=backend,
        storage=absolute_storage(storage) if storage else RunDir(out).default_storage(workers),
        study=study or out.name, workers=workers,
        gpus_per_trial=gpus_per_trial or DEFAULTS["gpus_per_trial"],
        early_stop=early_stop or default_early_stop(backend), device=device or DEFAULTS["device"], data_dir=data_dir,
        image_size=image_size,
        max_failures=DEFAULT_MAX_FAILURES if max_failures is None else max_failures,
    )
    if recipe:
        config.recipe = dict(recipe)
    if ray:  # Ray options (--ray-storage, --resources-per-trial), e.g. from a run's search.yaml
        config.ray = dict(ray)
        if "max_failures" in config.ray:  # an older search.yaml kept it here (SearchConfig.from_dict)
            failures = config.ray.pop("max_failures")
            config.max_failures = failures if max_failures is None else max_failures
    config.replay = replaying
    return config, out


def _replayed(table: str | Path, speed: float | None, space: Any, dataset: str | None, budget: Any,
              epochs: int | None, recipe: dict | None, data_dir: str | None, image_size: int | None) -> tuple:
    """The space, dataset, budget, epochs, recipe, image size and ``SearchConfig.replay`` of a
    replayed table; an option given as well must agree with the table (a replay cannot train
    anything else)."""
    from repnas.search._replay import replay_options
    from repnas.spaces import SearchSpace, parse_budget

    info, replaying = replay_options(table, speed)
    table_space = SearchSpace.from_dict(dict(info.space), f"table {table}")
    table_recipe = {k: v for k, v in info.recipe.items() if k != "epochs"}
    table_size = info.dataset.get("image_size")
    given = {
        "--space": space is not None and _space_of(space).to_dict() != table_space.to_dict(),
        "--dataset": dataset is not None and dataset != info.dataset["name"],
        "--budget": budget is not None and parse_budget(budget, "--budget") != parse_budget(info.budget),
        "--epochs": epochs is not None and int(epochs) != info.epochs,
        "recipe": bool(recipe) and {**table_recipe, **recipe} != table_recipe,
        "--data-dir": data_dir is not None,
        "--image-size": image_size is not None and image_size != table_size,
    }
    differing = [flag for flag, differs in given.items() if differs]
    if differing:
        raise UserError(f"--replay {table} takes the space, dataset, budget, epochs and recipe from the table "
                        f"({table_space.name}, {info.dataset['name']}, {info.budget}, {info.epochs} epochs); "
                        f"drop {', '.join(differing)}")
    return table_space, info.dataset["name"], info.budget, info.epochs, table_recipe, table_size, replaying


def config_file_arguments(path: str | Path) -> dict[str, Any]:
    """:func:`search_config`'s keyword arguments from a YAML of ``search.yaml``'s keys (a run's own
    ``search.yaml``, or a hand-written subset), for a *new* search.

    A run's storage URL and study name are where that run keeps its study, so they are dropped when
    they are the defaults of the folder holding the file (the new search derives its own from its
    run directory); so is NSGA-II's population when it is the default for the file's trial count.
    """
    import yaml

    from repnas.search._samplers import default_population

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise UserError(f"--config {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of search.yaml keys")
    unknown = sorted(set(data) - set(SearchConfig.__dataclass_fields__))
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}")
    data = dict(data)
    space_name = data.pop("space_name", None)
    if isinstance(data.get("space"), dict) and space_name and "name" not in data["space"]:
        data["space"] = {"name": space_name, **data["space"]}
    home = RunDir(path.parent)
    workers = data.get("workers") or 1
    if isinstance(data.get("storage"), str) and data["storage"]:  # a relative file: beside this YAML
        data["storage"] = absolute_storage(data["storage"], path.parent)
    if data.get("storage") in (home.default_storage(workers), home.default_storage(1),
                               home.default_storage(2)):
        data.pop("storage")
    if data.get("study") == path.parent.name or data.get("study") == path.parent.resolve().name:
        data.pop("study", None)
    if data.get("population_size") == default_population(int(data.get("trials") or DEFAULTS["trials"])):
        data.pop("population_size")
    if isinstance(data.get("objectives"), list):
        data["objectives"] = ",".join(o["name"] if isinstance(o, dict) else str(o) for o in data["objectives"])
    replay = data.pop("replay", None)
    if isinstance(replay, dict) and replay.get("table"):  # the run replayed a table: so does the new search
        data["replay"] = replay["table"]
        if replay.get("speed"):
            data["replay_speed"] = replay["speed"]
    if str(data.get("sampler") or "").startswith(_CUSTOM):
        raise UserError(f"{path}: sampler {data['sampler']!r} was a Python object; pass --sampler")
    return data


# --------------------------------------------------------------------- the result handle
@dataclass
class SearchResult:
    """What a search leaves: its Optuna study and its run directory (table, front, export)."""

    study: Any
    config: SearchConfig
    path: Path

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.path)

    @property
    def trials(self):
        """``trials.parquet`` (docs/design.md) as a pandas DataFrame."""
        import pandas as pd

        return pd.read_parquet(self.run_dir.trials_parquet)

    @property
    def front(self):
        """The Pareto front of the completed trials over the search's objectives (``trials`` rows)."""
        from repnas.analysis._front import front_rows

        return front_rows(self.trials, self.config)

    def export(self, out: str | Path, pareto: bool = True, top: int | None = None) -> list[dict]:
        """``repnas export``: run configs, weights and deployable models of the front (or top K)."""
        from repnas.export._export import export_trials

        return export_trials(self.path, out, pareto=pareto and top is None, top=top)

    @property
    def workers_replaced(self) -> int:
        """How many dead ``--workers`` processes were replaced (their trials retried) over the run's life."""
        from repnas.runs import workers_replaced

        return workers_replaced(self.study)

    def summary(self, seconds: float = 0.0) -> str:
        from repnas.analysis._front import summary_text

        return summary_text(self.trials, self.config, seconds, self.workers_replaced)


# --------------------------------------------------------------------- running
def run_search(space: Any = None, *, out: str | Path | None = None, sampler: Any = None,
               callbacks: Iterable[Callback] = (), timeout: float | None = None, resume: bool = False,
               progress: bool = True, ray_address: str | None = None, **options: Any) -> SearchResult:
    """Run a multi-objective search, as ``repnas search`` does, and return a :class:`SearchResult`.

    ``space``: a built-in name (``quick``...), a space YAML path or a ``SearchSpace``. ``options``
    are :func:`search_config`'s (``dataset``, ``budget``, ``trials``, ``epochs``, ``seed``,
    ``objectives``, ``backend``, ``workers``, ``device``...), with the command line's defaults.
    ``sampler``: a name or any ``optuna.samplers.BaseSampler`` (used as given). ``resume=True``
    continues the search in ``out`` (``options`` that a resume may change: trials, workers, device...).
    """
    if resume:
        if out is None:
            raise UserError("resume needs out= (the run directory to continue)")
        search = resume_config(out, space=space, **options)
        out = Path(out)
    else:
        from repnas.runs._start import check_new_run_dir

        search, out = search_config(space, out=out, sampler=sampler, **options)
        check_new_run_dir(out)
    return run_search_config(search, out, resume=resume, sampler=sampler, callbacks=callbacks,
                             timeout=timeout, progress=progress, ray_address=ray_address)


def resume_config(out: str | Path, **changes: Any) -> SearchConfig:
    """The saved ``search.yaml`` of ``out`` with the options a resume may change applied (trials,
    workers, gpus_per_trial, device, early_stop, backend, data_dir, max_failures); others must match it."""
    run = RunDir(out)
    if not run.search_yaml.is_file():
        from repnas.runs._start import staging_dir

        if staging_dir(out).exists() and not run.root.exists():
            raise UserError(f"cannot resume: the search in {out} was stopped before it had started; "
                            "run the same command without --resume")
        raise UserError(f"cannot resume: {run.search_yaml} not found")
    search = SearchConfig.from_yaml(run.search_yaml)
    for name, value in changes.items():
        if value is None:
            continue
        if name == "space":
            if _space_of(value).to_dict() != search.space:
                raise UserError(f"--space {value} differs from the run's space {search.space_name!r}; "
                                "a resumed search keeps its config")
            continue
        if name == "budget":
            from repnas.spaces import parse_budget

            if parse_budget(value, "--budget") != search.budget_spec:
                raise UserError(f"--budget {value} differs from the run's {search.budget_spec.describe()}; "
                                "a resumed search keeps its config")
            continue
        if name == "objectives":
            value = objectives_from_names(value if isinstance(value, str) else ",".join(value))
            if value != search.objectives:
                raise UserError(f"--objectives {','.join(o['name'] for o in value)} differs from the run's "
                                f"{','.join(search.objective_names)}; a resumed search keeps its config")
            continue
        if name == "dataset":
            from repnas.train import absolute_dataset

            value = absolute_dataset(value)  # as search.yaml records it
        if name in ("trials", "workers", "gpus_per_trial", "device", "early_stop", "backend", "data_dir",
                    "max_failures"):
            setattr(search, name, value)
        elif name == "storage" and absolute_storage(str(value)) == search.storage:
            continue
        elif str(getattr(search, name, None)) != str(value):
            raise UserError(f"--{name.replace('_', '-')} {value} differs from the run's "
                            f"{getattr(search, name, None)}; a resumed search keeps its config")
    check_counts(search.trials, None, search.workers or None, search.gpus_per_trial,
                 max_failures=search.max_failures)
    if search.backend == "optuna" and search.workers == 0:  # a Ray search resumed by the Optuna driver
        search.workers = 1
    return search


def run_search_config(search: SearchConfig, out: str | Path, *, resume: bool = False, sampler: Any = None,
                      callbacks: Iterable[Callback] = (), timeout: float | None = None, progress: bool = True,
                      ray_address: str | None = None, join: bool = False) -> SearchResult:
    """Run (or resume) the search ``search`` in ``out`` with either backend; the one place both the
    command line and :func:`run_search` go through. The driver runs inside
    :func:`~repnas.search._supervise.supervised_search`: validated before anything is written, one
    owner per run directory, a new run started atomically, Ctrl-C/SIGTERM stopped cleanly.
    ``join`` adds this machine's workers to a study already running on a database server (its
    driver makes its own folder, outside that frame: the study is not new)."""
    import contextlib

    import optuna

    from repnas.search._supervise import supervised_search

    callbacks = list(callbacks)
    check_counts(search.trials, None, None, None, timeout)
    if isinstance(sampler, str):
        sampler = None  # a name is in search.sampler already
    if sampler is None and search.sampler.startswith(_CUSTOM):
        sampler = _pickled_sampler(RunDir(out), search)
    if search.backend == "ray":
        if sampler is not None or callbacks:
            raise UserError("a sampler object and callbacks need the optuna backend (Ray Tune runs its own "
                            "OptunaSearch); pass a sampler name")
        from repnas.runs._study import open_study
        from repnas.search.ray._driver import run_ray_search

        if timeout is not None:
            raise UserError("--timeout needs the optuna backend")
        # validated, owned (one process per run directory), started atomically, stopped cleanly
        with supervised_search(search, out, resume=resume) as started:
            run_ray_search(search, out, resume=started, progress=progress, address=ray_address)
        study = open_study(search)
    else:
        from repnas.search._optuna_driver import run_optuna_search

        frame = contextlib.nullcontext(False) if join else supervised_search(search, out, resume=resume)
        with frame as started:
            study = run_optuna_search(search, out, resume=started, progress=progress, sampler=sampler,
                                      after_trial=_after_trial(callbacks, search) if callbacks else None,
                                      timeout=timeout, join=join)
    assert isinstance(study, optuna.Study)
    return SearchResult(study=study, config=search, path=Path(out).resolve())  # valid after a chdir


def _pickled_sampler(run: RunDir, search: SearchConfig):
    """The custom sampler a run pickled (``samplers/worker0.pkl``), for a resume without one given."""
    path = run.root / "samplers" / "worker0.pkl"
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise UserError(f"the run used sampler {search.sampler.removeprefix(_CUSTOM)} (a Python object) and "
                        f"{path} cannot be read ({type(exc).__name__}); resume from Python with sampler=") from None



def _after_trial(callbacks: list[Callback], search: SearchConfig) -> Callable[[Any, Any], bool]:
    """One hook for the driver: run the callbacks on (study, frozen trial); True = stop the search.

    The driver asks and tells instead of calling ``Study.optimize``, whose ``Study.stop()`` raises
    outside its loop. So the callbacks get a :func:`_callback_study` on the same storage, built with
    Optuna's public constructor (an ``optuna.Study``, so ``MaxTrialsCallback`` and friends work),
    whose ``stop()`` asks the driver to stop after this trial.
    """
    from repnas.runs._storage import open_storage

    view = None  # made at the first trial's end, once the study exists

    def hook(study, frozen) -> bool:
        nonlocal view
        if view is None:
            view = _callback_study(study.study_name, open_storage(search.storage, heartbeat=False), study.sampler)
        view.stop_requested = False
        for callback in callbacks:
            callback(view, frozen)
        return view.stop_requested

    return hook


def _callback_study(study_name: str, storage, sampler):
    """The study a callback sees: an ``optuna.Study`` (built by Optuna's public constructor) whose
    ``stop()`` stops the search after the trial that just ended, as it does in ``optimize``. Made
    here, not at import, so ``import repnas`` does not import Optuna."""
    import optuna

    class CallbackStudy(optuna.Study):
        stop_requested = False

        def stop(self) -> None:
            self.stop_requested = True

    return CallbackStudy(study_name=study_name, storage=storage, sampler=sampler)
