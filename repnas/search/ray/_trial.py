"""One Ray Tune trial, on whichever node Ray puts it: nothing here touches the driver's run directory.

The trial trains in a scratch folder of its own node and sends everything out through Tune: after
every epoch one ``tune.report`` of that epoch's metrics with the folder as a checkpoint
(``config.yaml``, ``checkpoint.pt``, ``log.txt``; Tune copies it to ``RunConfig(storage_path)``,
a path or a pyarrow URI every node reaches), so Tune's progress table and TensorBoard show learning
curves and a trial whose node died starts again elsewhere from its last epoch
(``FailureConfig(max_failures)``, ``tune.get_checkpoint()``). The last epoch's report also carries
the trial's whole row (test accuracy, cost, status, run config): one report per epoch in all. The
driver numbers the trials and fills ``trials/<n>/`` from their last checkpoints
(:mod:`repnas.search.ray._results`). A trial first claims the model it builds in the study
(:func:`trial_models`); a duplicate reports the reused row, ``duplicate_of`` its Tune trial id.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from repnas import _faults
from repnas.runs._rundir import SearchConfig

#: keys of the trainer's per-epoch metrics that Tune gets (the rest stay in the trial's log).
EPOCH_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "train_seconds")
#: what an epoch's report adds while ``--early-stop`` is on: the costs the Tune scheduler ranks by
#: (:mod:`repnas.search.ray._scheduler`); the report also names the model's claim key
#: (``model_key``), with which the driver records a stopped trial's result for later proposals.
EARLY_STOP_KEYS = ("params", "flops")


class _KeyedModels:
    """A trial's :class:`~repnas.search._canonical.TrialModels` that remembers the key it claimed."""

    def __init__(self, models):
        self.models, self.key = models, None

    def acquire(self, key: str):
        self.key = key
        return self.models.acquire(key)

    def finish(self, key: str, row: dict[str, Any]) -> None:
        self.models.finish(key, row)


def trial_device(device: str, cuda_available: bool) -> str:
    """The device inside a Tune trial. Ray shows a trial only the GPU share it assigned (through
    CUDA_VISIBLE_DEVICES), so any ``cuda``/``cuda:N`` of the search means that trial's ``cuda``."""
    if device == "cpu" or (device == "auto" and not cuda_available):
        return "cpu"
    if device == "auto" or device.startswith("cuda"):
        return "cuda"  # without a GPU the trainer reports the problem and the trial is recorded failed
    return device


def final_metrics(row: dict[str, Any], last_epoch: dict[str, Any]) -> dict[str, Any]:
    """The last report of a trial: its last epoch's metrics, then its row (the row wins, its NaNs too), with the
    run config as JSON (``config`` is Tune's name for the point) and no non-finite objective (a
    missing objective makes ``OptunaSearch`` record the trial as not complete)."""
    metrics = dict(last_epoch)
    for key, value in row.items():
        if key == "config":
            metrics["config_json"] = json.dumps(value) if value is not None else ""
        elif isinstance(value, float) and not math.isfinite(value):
            metrics.pop(key, None)  # a failed trial's NaN accuracy hides its last epoch's value
        else:
            metrics[key] = value
    return metrics


def trial_models(search: SearchConfig, trial_id: str):
    """The trial's model claims (:mod:`~repnas.search._canonical`), kept in the search's study like
    the Optuna driver's, so a duplicate reuses the model another Tune trial trained. A trial runs on
    any node and never sees the run directory: the claims are serialised by the storage's own lock
    (:func:`~repnas.runs._workers.storage_lock`: the server's advisory lock, or a file lock
    beside a SQLite/journal file). None, and every proposal trains, where this node cannot reach a
    file storage (a cluster without a shared filesystem and without a database server)."""
    from repnas.runs._claims import ModelClaims, TrialModels
    from repnas.runs._storage import open_storage
    from repnas.runs._workers import storage_lock, storage_reachable

    if not storage_reachable(search):
        return None
    import optuna

    study = optuna.load_study(study_name=search.study, storage=open_storage(search.storage, heartbeat=False))
    return TrialModels(ModelClaims(study, lambda: storage_lock(search)), trial_id)


def trainable(point: dict[str, Any], search_dict: dict) -> None:
    """The Tune function trainable of a search (``tune.with_parameters`` passes ``search_dict``)."""
    import ray
    import torch
    from ray import tune

    from repnas.search._runner import run_trial

    search = SearchConfig.from_dict(search_dict)
    device = trial_device(search.device, torch.cuda.is_available())
    if device == "cpu":
        torch.set_num_threads(1)  # part of the run config: the same on every node and every retry
    work = Path(tempfile.mkdtemp(prefix="repnas-trial-"))
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retry after a lost node (or a restored experiment)
            checkpoint.to_directory(str(work))
            with (work / "log.txt").open("a") as log:
                print(f"restored from Tune's checkpoint on node {ray.get_runtime_context().get_node_id()[:12]}",
                      file=log)
        last: dict[str, Any] = {}
        early_stop = search.early_stop == "moasha"
        trial_id = str(tune.get_context().get_trial_id())
        models = trial_models(search, trial_id)
        models = _KeyedModels(models) if models is not None else None

        def report(epoch: int, metrics: dict[str, Any]) -> bool:
            """Tune's report of one epoch; Tune's scheduler, not this trial, decides on stopping."""
            last.clear()
            last.update({k: metrics[k] for k in EPOCH_KEYS if k in metrics})
            last["epoch"] = epoch
            if epoch < search.epochs:  # the last epoch is reported with the whole row below
                extra = {k: metrics[k] for k in EARLY_STOP_KEYS if k in metrics} if early_stop else {}
                if early_stop and models is not None and models.key:
                    extra["model_key"] = models.key
                tune.report({**last, **extra}, checkpoint=tune.Checkpoint.from_directory(str(work)))
                _faults.point("ray:reported")
            return False

        report.wants_flops = early_stop  # run_trial then adds params and FLOPs to each epoch's metrics
        row = run_trial(search, dict(point), work, report, device=device, models=models,
                        resume=(work / "checkpoint.pt").is_file())
        row["worker"] = f"ray:{ray.get_runtime_context().get_node_id()[:12]}:{device}"
        tune.report(final_metrics(row, last), checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
