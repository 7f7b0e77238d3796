"""The Ray Tune driver (``repnas search --backend ray``): the same search through ``tune.Tuner``.

What Ray brings over the embedded driver: trials packed onto GPUs by fractional resources
(``--gpus-per-trial 0.25`` runs 4 at once on one GPU) and clusters (``--ray-address``) without a
shared filesystem. What stays the same: the sampler (Ray's ``OptunaSearch`` around the same seeded
Optuna sampler, given the space's fixed Optuna distributions, with metric and mode lists), the
trial runner (:func:`~repnas.search._runner.run_trial`) and the run directory.

Who writes what (docs/scaling.md): a trial (:mod:`repnas.search.ray._trial`, on any node) trains in
a scratch folder and reports once per epoch to Tune with that folder as a checkpoint; Tune keeps
experiment state and checkpoints in its storage (``--ray-storage``: a path every node reaches or a
pyarrow URI; default ``<run>/ray`` for one node) and restarts a trial whose node died from its last
checkpoint (``FailureConfig(max_failures)``, ``--max-failures``). The driver alone numbers the
trials and fills ``trials/<n>/`` and ``trials.parquet`` (:mod:`repnas.search.ray._results`), and
``--resume`` after a driver crash restores the experiment (``Tuner.restore``). The study holds the
points and objective values only (Optuna forbids annotating finished trials); what a user reads
(the printed front, reports, exports) comes from ``trials.parquet``.

Concurrency: Ray runs as many trials at once as the resources allow (1 CPU and ``--gpus-per-trial``
each, or ``--resources-per-trial``) unless ``--workers N`` caps it (``SearchConfig.workers`` 0 = no cap).

Early stopping (``--early-stop moasha``, the default as with the Optuna backend): the same
multi-objective rule as a Tune ``TrialScheduler`` (:mod:`repnas.search.ray._scheduler`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.runs._rundir import RunDir, SearchConfig, rows_frame
from repnas.search._early_stop import MultiObjectiveASHA
from repnas.search.ray._checks import check_ray_early_stop
from repnas.search.ray._imports import check_worker_imports, worker_runtime_env
from repnas.search.ray._results import (
    experiment_paths,
    number_trials,
    result_rows,
    searcher_numbers,
    trial_dirname,
    tune_storage,
)
from repnas.search.ray._trial import trainable, trial_device

__all__ = ["parse_resources", "run_ray_search", "trial_device", "trial_gpus", "trial_resources"]

def trial_gpus(device: str, gpus_per_trial: float, cluster_gpus: float) -> float:
    """The GPU share each trial asks Ray for: ``--gpus-per-trial`` where the cluster (not only the
    driver's machine, which may have none) has GPUs and the search may use them."""
    return gpus_per_trial if device != "cpu" and cluster_gpus > 0 else 0.0


def parse_resources(text: str) -> dict[str, float]:
    """``--resources-per-trial "cpu=2,gpu=0.5,big_node=1"`` -> ``{"cpu": 2.0, "gpu": 0.5, "big_node": 1.0}``;
    a custom resource pins trials to the nodes started with it (``ray start --resources``)."""
    resources: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not name.strip() or amount < 0:
            raise UserError(f"--resources-per-trial: {part!r} is not NAME=AMOUNT (e.g. cpu=1,my_node=1)")
        resources[name.strip().lower() if name.strip().lower() in ("cpu", "gpu") else name.strip()] = amount
    return resources


def trial_resources(search: SearchConfig, cluster_gpus: float) -> dict[str, float]:
    """What one trial asks Ray for: 1 CPU and the ``--gpus-per-trial`` share (where the cluster has
    GPUs), overridden and extended by ``--resources-per-trial``."""
    resources = {"cpu": 1.0, "gpu": trial_gpus(search.device, search.gpus_per_trial, cluster_gpus)}
    resources.update(search.ray.get("resources") or {})
    return resources



def run_ray_search(search: SearchConfig, root: str | Path, resume: bool = False, progress: bool = True,
                   address: str | None = None) -> None:
    """Run (or restore, or extend) the search with Ray Tune; writes the run directory (the driver only).

    A resume first restores the last Tune experiment if it did not finish (``Tuner.restore``: errored
    trials run again from their last checkpoints). If the run then has fewer than ``search.trials``
    trials (a raised ``--trials``), a further experiment ``<study>-<k>`` runs the rest: its
    ``OptunaSearch`` loads the same study, so the sampler goes on from every trial so far.
    ``trials.parquet`` keeps the rows of all of them.
    """
    try:
        import ray
        from ray import tune
    except ImportError as exc:  # pragma: no cover - ray is a dependency, but keep the message clear
        raise UserError(f"--backend ray needs ray[tune] ({exc})") from None

    from repnas.runs._start import check_study
    from repnas.runs._study import open_study
    from repnas.search._samplers import spread_budgets

    check_ray_early_stop(search)  # before anything is written (a caller without validate_search)
    run = RunDir(root)
    check_study(search, resume)
    run.create()
    run.remove_dead_temporaries()
    search.to_yaml(run.search_yaml)
    knobs = search.knob_names()
    study = open_study(search, create=not resume)  # new: metric names and the search config on it
    if not resume or not study.get_trials(deepcopy=False):  # new, or created empty by supervised_search
        spread_budgets(study, search)  # OptunaSearch's ask takes the enqueued points first

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=progress, logging_level="ERROR", runtime_env=worker_runtime_env(address))
    check_worker_imports(trainable.__module__, root, address)  # one line, not a failed trial per retry
    storage = tune_storage(search, run)
    resources = trial_resources(search, ray.cluster_resources().get("GPU", 0.0))
    missing = sorted(k for k, v in resources.items() if k not in ("cpu", "gpu") and v > 0
                     and ray.cluster_resources().get(k, 0.0) < v)
    if missing and progress:
        print(f"waiting for nodes with resource {', '.join(missing)} (none in the cluster yet)", flush=True)
    bound = tune.with_resources(tune.with_parameters(trainable, search_dict=search.to_dict()), resources)
    # how often Tune restarts a trial (from its last epoch) after its node or process died
    failure = tune.FailureConfig(max_failures=int(search.max_failures))
    rows = _saved_rows(run) if resume else {}
    experiments = experiment_paths(storage, search.study)
    if resume and experiments and tune.Tuner.can_restore(experiments[-1]):
        tuner = tune.Tuner.restore(experiments[-1], trainable=bound, resume_errored=True)
        rows.update(_rows(run, study, _fit(tuner), knobs))
        run.write_trials(rows_frame(list(rows.values()), knobs))
    claims = DriverClaims(search.to_dict())  # one for every experiment of the search
    for _ in range(_MAX_TOP_UPS):  # duplicates do not count: top up until --trials distinct models
        remaining = search.trials - _distinct(rows)
        if remaining <= 0:
            break
        experiments = experiment_paths(storage, search.study)
        name = search.study if not experiments else f"{search.study}-{len(experiments) + 1}"
        trials_so_far = len(study.get_trials(deepcopy=False))  # as the Optuna backend counts them
        searcher = _searcher(search, trials_so_far, number_trials(run, []), on_failed=claims.failed)
        scheduler = None
        if search.early_stop == "moasha":  # it learns the earlier experiments' reports (see ._scheduler)
            from repnas.search.ray._scheduler import MultiObjectiveScheduler

            scheduler = MultiObjectiveScheduler(MultiObjectiveASHA(search.epochs), on_stop=claims.pruned,
                                                history=(storage, search.study))
        tuner = tune.Tuner(
            bound,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=search.workers or None,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1 if progress else 0,
                                      failure_config=failure,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        before = _distinct(rows)
        rows.update(_rows(run, study, _fit(tuner), knobs))
        run.write_trials(rows_frame(list(rows.values()), knobs))
        if _distinct(rows) == before:  # only known models proposed: the space looks exhausted
            if progress:
                print(f"note: the space looks exhausted: an experiment proposed only models already trained; "
                      f"stopped at {before} distinct trial(s) of the {search.trials} asked", flush=True)
            break


class DriverClaims:
    """What the driver records on the model claims (:mod:`~repnas.search._canonical`) for trials
    that cannot: one stopped by the scheduler (:meth:`pruned`, its result) and one that failed more
    often than ``--max-failures`` allows (:meth:`failed`, its claim dropped). Either way a later
    proposal of the same model does not wait hours for a trial that is gone. Picklable (Tune
    pickles the scheduler and the searcher with the experiment): it keeps the search's dict and
    opens the study on first use."""

    def __init__(self, search_dict: dict[str, Any]):
        self.search_dict = search_dict
        self._claims = None

    def __getstate__(self) -> dict[str, Any]:
        return {"search_dict": self.search_dict, "_claims": None}

    def claims(self):
        if self._claims is None:
            import optuna

            from repnas.runs._claims import ModelClaims
            from repnas.runs._storage import open_storage
            from repnas.runs._workers import storage_lock

            search = SearchConfig.from_dict(self.search_dict)
            study = optuna.load_study(study_name=search.study, storage=open_storage(search.storage, heartbeat=False))
            self._claims = ModelClaims(study, lambda: storage_lock(search))
        return self._claims

    def pruned(self, trial_id: str, result: dict[str, Any]) -> None:
        """The scheduler's ``on_stop``: the stopped trial's result goes on its model's claim."""
        key = result.get("model_key")
        if not key:
            return  # this node reached no claims (no shared storage): nothing to record
        # finish() keeps the fields a reused row takes (REUSED_FIELDS) of the last epoch's report
        self.claims().finish(key, trial_id, {**result, "status": "pruned", "epochs": int(result["epoch"])})

    def failed(self, trial_id: str) -> None:
        """The searcher's ``on_failed``: the trial's unfinished claims are dropped."""
        self.claims().release_all(trial_id)


#: further Tune experiments a search runs when duplicates left it short of --trials distinct models
_MAX_TOP_UPS = 4


def _rows(run: RunDir, study, results, knobs: list[str]) -> dict[int, dict[str, Any]]:
    """The rows of a finished (or restored) experiment, numbered as its searcher numbered them."""
    return result_rows(run, results, knobs, given=searcher_numbers(study))


def _distinct(rows: dict[int, dict[str, Any]]) -> int:
    """Rows that count towards --trials: not duplicates (``duplicate_of`` unset)."""
    import pandas as pd

    return sum(1 for r in rows.values() if r.get("duplicate_of") is None or pd.isna(r["duplicate_of"]))


def _fit(tuner):
    """``tuner.fit()`` with Tune's strict metric check off: a trial's per-epoch reports carry that
    epoch's metrics, and only its last one the objectives ``OptunaSearch`` reads (params and FLOPs
    are known once the trial ends), which Tune's check would refuse (``TUNE_DISABLE_STRICT_METRIC_
    CHECKING`` is Tune's documented switch for that; it is read by the driver, so set here only)."""
    import os

    saved = os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    try:
        return tuner.fit()
    finally:
        if saved is None:
            os.environ.pop("TUNE_DISABLE_STRICT_METRIC_CHECKING", None)
        else:
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = saved


def _searcher(search: SearchConfig, trials_so_far: int, numbers: dict[str, int] | None = None,
              on_failed: Callable[[str], None] | None = None):
    """Ray's ``OptunaSearch`` with the Optuna backend's seeded sampler, the space's fixed
    distributions and the run's study (loaded if it exists), so both backends propose alike. A
    further experiment's sampler gets a fresh seed, so it does not replay the first one's points."""
    from repnas.runs._storage import open_storage
    from repnas.search._samplers import continuation_seed, make_sampler, search_population
    from repnas.search.ray._searcher import ConstrainedOptunaSearch

    return ConstrainedOptunaSearch(
        directions=search.directions,
        numbers=numbers,  # the trial numbers given so far (ray_trials.json): the next ones follow
        space=search.distributions(),
        metric=search.objective_names,
        mode=["max" if d == "maximize" else "min" for d in search.directions],
        sampler=make_sampler(search.sampler, continuation_seed(search.seed, 0, trials_so_far),
                             search_population(search)),
        study_name=search.study,
        storage=open_storage(search.storage, heartbeat=False),  # Tune's trials send no heartbeats
        on_failed=on_failed,  # DriverClaims.failed: a trial Tune gave up on frees its model
    )


def _saved_rows(run: RunDir) -> dict[int, dict[str, Any]]:
    """The rows of ``trials.parquet`` by trial number (empty before the first experiment ended)."""
    if not run.trials_parquet.is_file():
        return {}
    import pandas as pd

    return {int(r["trial"]): r for r in pd.read_parquet(run.trials_parquet).to_dict("records")}
