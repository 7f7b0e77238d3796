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
ids to them), which can differ from the study's numbers when trials run concurrently.

Not here: early stopping (Tune's schedulers are single-objective; ``--early-stop`` is for the
Optuna backend), and a scheduler of our own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.search._rundir import TRIAL_COLUMNS, RunDir, SearchConfig, rows_frame


def _trial_number(run: RunDir) -> int:
    """A stable trial number for this Tune trial: the next free number the first time a trial id is
    seen (Tune's ids are random strings), the same number when a restored trial runs again."""
    import json

    from ray import tune

    trial_id = str(tune.get_context().get_trial_id())
    path = run.root / "ray_trials.json"
    with run.lock():
        numbers = json.loads(path.read_text()) if path.is_file() else {}
        if trial_id not in numbers:
            numbers[trial_id] = len(numbers)
            path.write_text(json.dumps(numbers, indent=1))
        return int(numbers[trial_id])


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
    number = _trial_number(run)
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
                   address: str | None = None) -> str:
    """Run (or restore) the search with Ray Tune; writes the run directory; returns the front table."""
    try:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - ray is a dependency, but keep the message clear
        raise UserError(f"--backend ray needs ray[tune] ({exc})") from None

    from repnas.search._optuna_driver import (
        check_storage,
        front_table,
        make_sampler,
        open_storage,
        open_study,
        search_population,
    )

    run = RunDir(root)
    check_storage(search, resume)
    run.create()
    search.to_yaml(run.search_yaml)
    space = search.search_space()
    if not resume:
        open_study(search, create=True)  # metric names and the search config on the study

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=progress, logging_level="ERROR")
    storage_path = str((run.root / "ray").resolve())
    experiment = Path(storage_path) / search.study
    searcher = OptunaSearch(
        space=space.distributions(),
        metric=search.objective_names,
        mode=["max" if d == "maximize" else "min" for d in search.directions],
        sampler=make_sampler(search.sampler, search.seed, search_population(search)),
        study_name=search.study,
        storage=open_storage(search.storage),
    )
    gpu = trial_gpus(search.device, search.gpus_per_trial, ray.cluster_resources().get("GPU", 0.0))
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, search_dict=search.to_dict(), root=str(run.root.resolve())),
        {"cpu": 1, "gpu": gpu})
    if resume and tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=search.trials,
                                        max_concurrent_trials=search.workers if search.workers > 1 else None),
            run_config=tune.RunConfig(name=search.study, storage_path=storage_path,
                                      verbose=1 if progress else 0),
        )
    results = tuner.fit()
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        if "trial" not in metrics:  # the trainable died before reporting
            lines = [ln for ln in str(result.error or "no result").splitlines() if ln.strip()]
            metrics = {"status": "failed", "error": lines[-1][:300] if lines else "no result",
                       "trial": 10_000 + len(rows)}
        row = {k: metrics[k] for k in TRIAL_COLUMNS if k in metrics}
        row["config"] = metrics.get("config_json", "")  # Tune's own "config" is the point
        row.update({f"knob.{k}": v for k, v in config.items() if k in space.knobs})
        rows.append(row)
    run.write_trials(rows_frame(rows, list(space.knobs)))
    study = open_study(search)
    return front_table(study, search)

