"""The Ray Tune driver (``repnas search --backend ray``): the same search through ``tune.Tuner``.

What Ray brings over the embedded driver: trials packed onto GPUs by fractional resources
(``--gpus-per-trial 0.25`` runs 4 at once on one GPU), and clusters (``--ray-address``). What stays
the same: the sampler (Ray's ``OptunaSearch`` around the same seeded Optuna sampler, given the
space's fixed Optuna distributions, with metric and mode lists, so both backends propose points
the same way), the trial runner (:func:`~repnas.search._runner.run_trial`, unchanged) and the run
directory: ``OptunaSearch`` keeps its study in the run directory's storage (``optuna.load_study``
works on it as for the Optuna backend), trials are trained into ``trials/<n>/`` and the rows go to
``trials.parquet``. Tune's own experiment state lives in ``<run>/ray/`` (``RunConfig(storage_path)``),
which is what ``--resume`` restores (``Tuner.restore``). The study holds the points and objective
values only (Optuna forbids annotating finished trials, and the trainable cannot see its Optuna
trial), and ``trials/<n>`` numbers follow Tune's start order (``ray_trials.json`` maps Tune's trial
ids to them), which can differ from the study's numbers when trials run concurrently. So what a user
reads (the printed front, reports, exports) comes from ``trials.parquet``, which has both.

Concurrency: Ray runs as many trials at once as the resources allow (1 CPU and ``--gpus-per-trial``
each) unless ``--workers N`` caps it (``SearchConfig.workers`` 0 = no cap).

Not here: early stopping (Tune's schedulers are single-objective; ``--early-stop`` is for the
Optuna backend), and a scheduler of our own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from repnas._io import atomic_write_text
from repnas.errors import UserError
from repnas.search._rundir import TRIAL_COLUMNS, RunDir, SearchConfig, rows_frame


def trial_number(run: RunDir, trial_id: str) -> int:
    """The ``trials/<n>`` number of a Tune trial: the next free number the first time its id is seen
    (Tune's ids are random strings), the same number when a restored trial runs again. The trainable
    asks first; the driver asks for a trial that died before it could."""
    import json

    path = run.root / "ray_trials.json"
    with run.lock():
        numbers = json.loads(path.read_text()) if path.is_file() else {}
        if trial_id not in numbers:
            numbers[trial_id] = len(numbers)
            atomic_write_text(path, json.dumps(numbers, indent=1))
        return int(numbers[trial_id])


def trial_dirname(trial) -> str:
    """Tune's folder name for a trial: its id, so the driver can number a trial that left no result."""
    return f"trial_{trial.trial_id}"


def trial_device(device: str, cuda_available: bool) -> str:
    """The device inside a Tune trial. Ray shows a trial only the GPU share it assigned (through
    CUDA_VISIBLE_DEVICES), so any ``cuda``/``cuda:N`` of the search means that trial's ``cuda``."""
    if device == "cpu" or (device == "auto" and not cuda_available):
        return "cpu"
    if device == "auto" or device.startswith("cuda"):
        return "cuda"  # without a GPU the trainer reports the problem and the trial is recorded failed
    return device


def trial_gpus(device: str, gpus_per_trial: float, cluster_gpus: float) -> float:
    """The GPU share each trial asks Ray for: ``--gpus-per-trial`` where the cluster (not only the
    driver's machine, which may have none) has GPUs and the search may use them."""
    return gpus_per_trial if device != "cpu" and cluster_gpus > 0 else 0.0


def _trainable(point: dict[str, Any], search_dict: dict, root: str) -> None:
    """One Tune trial: run_trial on the point, then one report of the whole row."""
    import json

    import ray
    import torch
    from ray import tune

    from repnas.search._runner import run_trial

    search = SearchConfig.from_dict(search_dict)
    run = RunDir(root)
    number = trial_number(run, str(tune.get_context().get_trial_id()))
    device = trial_device(search.device, torch.cuda.is_available())
    if device == "cpu":
        torch.set_num_threads(1)
    row = run_trial(search, dict(point), run.trial_dir(number), device=device)
    row["worker"] = f"ray:{ray.get_runtime_context().get_node_id()[:12]}:{device}"
    metrics: dict[str, Any] = {"trial": number, "config_json": json.dumps(row.pop("config"))}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue  # a missing objective makes OptunaSearch record the trial as not complete
        metrics[key] = value
    tune.report(metrics)


def run_ray_search(search: SearchConfig, root: str | Path, resume: bool = False, progress: bool = True,
                   address: str | None = None) -> None:
    """Run (or restore, or extend) the search with Ray Tune; writes the run directory.

    A resume first restores the last Tune experiment if it did not finish (``Tuner.restore``, errored
    trials run again). If the run then has fewer than ``search.trials`` trials (a raised ``--trials``),
    a further experiment ``<study>-<k>`` runs the rest: its ``OptunaSearch`` loads the same study,
    so the sampler goes on from every trial so far. ``trials.parquet`` keeps the rows of all of them.
    """
    try:
        import ray
        from ray import tune
    except ImportError as exc:  # pragma: no cover - ray is a dependency, but keep the message clear
        raise UserError(f"--backend ray needs ray[tune] ({exc})") from None

    from repnas.search._optuna_driver import check_storage, open_study

    run = RunDir(root)
    check_storage(search, resume)
    run.create()
    search.to_yaml(run.search_yaml)
    knobs = list(search.search_space().knobs)
    study = open_study(search, create=not resume)  # new: metric names and the search config on it

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=progress, logging_level="ERROR")
    storage_path = (run.root / "ray").resolve()
    gpu = trial_gpus(search.device, search.gpus_per_trial, ray.cluster_resources().get("GPU", 0.0))
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, search_dict=search.to_dict(), root=str(run.root.resolve())),
        {"cpu": 1, "gpu": gpu})
    rows = _saved_rows(run) if resume else {}
    experiments = _experiments(storage_path, search.study)
    if resume and experiments and tune.Tuner.can_restore(str(experiments[-1])):
        tuner = tune.Tuner.restore(str(experiments[-1]), trainable=trainable, resume_errored=True)
        rows.update(_result_rows(run, tuner.fit(), knobs))
        run.write_trials(rows_frame(list(rows.values()), knobs))
    remaining = search.trials - len(rows)
    if remaining > 0:
        name = search.study if not experiments else f"{search.study}-{len(experiments) + 1}"
        trials_so_far = len(study.get_trials(deepcopy=False))  # as the Optuna backend counts them
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=_searcher(search, trials_so_far), num_samples=remaining,
                                        max_concurrent_trials=search.workers or None,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage_path), verbose=1 if progress else 0),
        )
        rows.update(_result_rows(run, tuner.fit(), knobs))
        run.write_trials(rows_frame(list(rows.values()), knobs))


def _experiments(storage_path: Path, study: str) -> list[Path]:
    """The Tune experiments of this run in the order they ran: ``<study>``, ``<study>-2``, ..."""
    found = {1: storage_path / study} if (storage_path / study).is_dir() else {}
    for path in storage_path.glob(f"{study}-*"):
        suffix = path.name[len(study) + 1:]
        if path.is_dir() and suffix.isdigit():
            found[int(suffix)] = path
    return [found[k] for k in sorted(found)]


def _searcher(search: SearchConfig, trials_so_far: int):
    """Ray's ``OptunaSearch`` with the Optuna backend's seeded sampler, the space's fixed
    distributions and the run's study (loaded if it exists), so both backends propose alike. A
    further experiment's sampler gets a fresh seed, so it does not replay the first one's points."""
    from ray.tune.search.optuna import OptunaSearch

    from repnas.search._optuna_driver import continuation_seed, make_sampler, open_storage, search_population

    return OptunaSearch(
        space=search.search_space().distributions(),
        metric=search.objective_names,
        mode=["max" if d == "maximize" else "min" for d in search.directions],
        sampler=make_sampler(search.sampler, continuation_seed(search.seed, 0, trials_so_far),
                             search_population(search)),
        study_name=search.study,
        storage=open_storage(search.storage, heartbeat=False),  # Tune's trials send no heartbeats
    )


def _saved_rows(run: RunDir) -> dict[int, dict[str, Any]]:
    """The rows of ``trials.parquet`` by trial number (empty before the first experiment ended)."""
    if not run.trials_parquet.is_file():
        return {}
    import pandas as pd

    return {int(r["trial"]): r for r in pd.read_parquet(run.trials_parquet).to_dict("records")}


def _result_rows(run: RunDir, results, knobs: list[str]) -> dict[int, dict[str, Any]]:
    """``trials.parquet`` rows of a Tune ``ResultGrid``, by trial number; a trial that died before
    its report is a failed row with the last line of its error."""
    rows = {}
    for result in results:
        metrics = dict(result.metrics or {})
        if "trial" not in metrics:
            lines = [ln for ln in str(result.error or "no result").splitlines() if ln.strip()]
            trial_id = Path(result.path).name.removeprefix("trial_")
            metrics = {"status": "failed", "error": lines[-1][:300] if lines else "no result",
                       "trial": trial_number(run, trial_id)}
        row = {k: metrics[k] for k in TRIAL_COLUMNS if k in metrics}
        row["config"] = metrics.get("config_json", "")  # Tune's own "config" is the point
        row.update({f"knob.{k}": v for k, v in dict(result.config or {}).items() if k in knobs})
        rows[int(row["trial"])] = row
    return rows
