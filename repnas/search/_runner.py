"""One trial of a search, independent of the driver: point -> run config -> train -> result row.

:func:`run_trial` is what both drivers call (the Optuna ask/tell loop and a Ray Tune trainable):
it turns a sampled point into a run config through the space's budget solver, trains it into the
trial's folder, and returns the trial's row of ``trials.parquet`` (without ``trial``/``worker``).
It never raises for a bad candidate: an over-budget point comes back ``infeasible`` (never
trained), an exception, a diverged loss (NaN) or CUDA running out of memory come back ``failed``
with the error, so the search goes on.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from repnas.runs._rundir import SearchConfig

if TYPE_CHECKING:
    from repnas.spaces import DatasetInfo

#: report(epoch, metrics) -> True to stop the trial early (the early-stopping rule's verdict).
Report = Callable[[int, dict[str, Any]], bool]

#: the trainer's metrics that go onto a trial's row (and are copied from an earlier identical trial).
_METRICS = ("val_accuracy", "test_accuracy", "params", "physical_params", "flops", "train_seconds")


def trial_run_config(search: SearchConfig, model_config: dict, device: str, space=None) -> dict[str, Any]:
    """The RunConfig dict of one trial: the trainer's YAML, as ``repnas train`` accepts it.

    ``space`` is ``search.search_space()`` where the caller already parsed it.
    """
    space = space if space is not None else search.search_space()
    recipe = {**space.recipe, **search.recipe, "epochs": int(search.epochs)}
    dataset: dict[str, Any] = {"name": search.dataset, "data_dir": search.data_dir}
    if search.image_size is not None:  # left out otherwise: the configs of earlier searches stay as they were
        dataset["image_size"] = int(search.image_size)
    return {
        "version": 1,
        "model": model_config,
        "dataset": dataset,
        "recipe": recipe,
        "seed": int(search.seed),
        "device": device,
        # the CPU thread count is part of a CPU result (float sums), so the config carries it
        "threads": torch.get_num_threads() if _on_cpu(device) else None,
    }


def _on_cpu(device: str) -> bool:
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def run_trial(search: SearchConfig, point: dict[str, Any], trial_dir: str | Path,
              report: Report | None = None, *, device: str | None = None, data=None,
              progress: bool = False, models=None,
              on_epoch: Callable[[int, dict[str, Any]], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the candidate ``point`` of ``search`` in ``trial_dir``; return its result row.

    ``report(epoch, metrics)`` is called after every epoch; returning True stops the trial, which
    then comes back ``pruned``. ``data`` reuses loaded splits (a worker loads its dataset once).
    ``models`` (a :class:`~repnas.search._canonical.TrialModels`) makes the trial claim the model
    it builds (:func:`~repnas.search._canonical.model_key`): if another trial already trained it
    (different knob values often build the same model), that trial's result is reused without
    training and the row says ``duplicate_of`` (that trial's number, or its Ray Tune trial id under
    the Ray backend); training is deterministic for a seed.
    ``point`` holds a ``budget`` entry where the budget is searched (a range or levels).
    ``on_epoch(epoch, metrics)`` is told every epoch (the search's progress display); the epoch's
    numbers also go to TensorBoard in ``trial_dir`` (:mod:`repnas.search._tensorboard`).
    ``resume`` continues from ``trial_dir/checkpoint.pt`` (a Ray trial restarted after a lost node).
    A search that replays a table (``search.replay``, :mod:`repnas.search._replay`) takes the run
    config and the epochs from the table instead of training; its times are the table's (a virtual
    clock), and a model the table lacks raises :class:`~repnas.search._replay.ReplayMiss`.
    """
    from repnas.runs._claims import REUSED_FIELDS
    from repnas.search._canonical import model_key
    from repnas.search._replay import ReplayMiss, replay_of
    from repnas.search._tensorboard import EpochScalars
    from repnas.spaces import BUDGET_PARAM, InfeasibleError

    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    log = (trial_dir / "log.txt").open("a")
    point = dict(point)
    budget = search.budget_spec.budget_of(point)
    point.pop(BUDGET_PARAM, None)
    row: dict[str, Any] = {
        "status": "failed", "val_accuracy": math.nan, "test_accuracy": math.nan, "params": math.nan,
        "physical_params": math.nan, "flops": math.nan, "train_seconds": math.nan,
        "seed": int(search.seed), "error": "", "budget": int(budget), "config": None,
    }
    replay = replay_of(search)
    clock = replay.clock.now if replay is not None else time.time  # a replay's time is the table's
    started, real_start = clock(), time.time()
    scalars = EpochScalars(trial_dir)
    key, ended = None, False
    try:
        print(f"point: {point} budget: {budget:,}", file=log, flush=True)
        space = search.search_space()
        shape = search.dataset_shape()
        try:
            solution = space.solve(point, budget, shape)
        except InfeasibleError as exc:
            row.update(status="infeasible", error=str(exc), params=exc.min_params,
                       **_smallest_costs(space, point, shape))
            print(f"infeasible: {exc}", file=log, flush=True)
            return row
        print(f"widths: source {solution.source_widths} physical {solution.physical_widths} "
              f"params {solution.params:,} ({100 * solution.fill:.1f}% of {budget:,}) "
              f"torch threads {torch.get_num_threads()}", file=log, flush=True)
        config = trial_run_config(search, solution.model_config, device or search.device, space)
        if replay is not None:  # the recorded run's own config (its dataset options, seed, device)
            config = replay.run_config(solution.model_config, replay.seed_for(search.seed), point)
            row["seed"] = int(config["seed"])
        row["config"] = config
        row["params"] = solution.params
        if models is not None:
            key = model_key(config)
            row["model_key"] = key
            earlier = models.acquire(key)
            if earlier is not None:
                row.update({k: earlier["row"][k] for k in REUSED_FIELDS if k in earlier["row"]})
                row["duplicate_of"] = earlier["trial"]
                key = None  # nothing to record: the model is the other trial's
                print(f"same model as trial {row['duplicate_of']}: result reused", file=log, flush=True)
                return row

        cost: dict[str, Any] = {}
        if replay is None and report is not None and getattr(report, "wants_flops", False):
            cost["params"] = int(solution.params)
            cost["flops"] = _flops(solution.model_config, shape, data)

        def callback(epoch: int, metrics: dict[str, Any]) -> bool:
            metrics = {**metrics, **cost}
            line = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            print(f"epoch {epoch}: {line}", file=log, flush=True)
            scalars(epoch, metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            return bool(report(epoch, metrics)) if report is not None else False

        from repnas.train._trainer import train

        if replay is not None:  # the table's epochs (params and FLOPs in each), not training
            train = replay.train
        result = train(config, out_dir=trial_dir, callback=callback, progress=progress, data=data, resume=resume)
        metrics = dict(result)
        row.update({k: metrics[k] for k in _METRICS})
        row["params"] = int(row["params"])
        row["physical_params"] = int(row["physical_params"])
        row["flops"] = int(row["flops"])
        row["epochs"] = int(metrics.get("epochs", 0))
        if metrics.get("stopped_early"):
            row["status"] = "pruned"
            row["error"] = f"stopped early after epoch {metrics.get('epochs')}"
        elif not math.isfinite(float(row["val_accuracy"])):
            row["error"] = "validation accuracy is not finite"
        else:
            row["status"] = "complete"
        ended = True
    except ReplayMiss:  # the table cannot answer: the search stops with one line naming the model
        raise
    except Exception as exc:  # the search goes on; the error is recorded with the trial
        from repnas._infra import InfrastructureError, describe, is_infrastructure

        if is_infrastructure(exc):  # the machine failed, not the candidate: stop, record nothing
            with contextlib.suppress(OSError):
                print(f"infrastructure error (not recorded): {describe(exc)}", file=log, flush=True)
            raise InfrastructureError(describe(exc)) from exc
        row["status"] = "failed"
        row["error"] = _error_text(exc)
        print(traceback.format_exc(), file=log, flush=True)
        _free_cuda()
        ended = True
    finally:
        scalars.close()
        row["started"], row["finished"] = _iso(started), _iso(clock())
        # a trial that claimed its model records the result for later duplicates (not when the
        # process is being interrupted: a resume releases the claim and trains the model again)
        if key is not None and ended:
            models.finish(key, row)
        print(f"status: {row['status']} {row['error']} ({time.time() - real_start:.1f}s)", file=log, flush=True)
        log.close()
    return row


def _iso(seconds: float) -> str:
    """A ``time.time()`` as an ISO 8601 UTC string (the ``started``/``finished`` columns)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def _smallest_costs(space, point: dict[str, Any], dataset: str | DatasetInfo) -> dict[str, Any]:
    """FLOPs and physical parameters of ``point`` at the smallest widths: what an infeasible trial
    tells the sampler for its cost objectives (it was never built at a width that fits)."""
    from repnas.rescale import count_flops, count_physical_params
    from repnas.spaces import build_model, dataset_info

    try:
        info = dataset_info(dataset)
        arch = space.architecture(point)
        config = space.model_config(arch, tuple(space.min_width for _ in space.widths), info.in_channels)
        model = build_model(config, info.num_classes, info.in_channels)
        return {"flops": int(count_flops(model, info.input_shape)),
                "physical_params": int(count_physical_params(model))}
    except Exception:  # only a hint for the sampler: never fail the search over it
        return {}


def _flops(model_config: dict, dataset: str | DatasetInfo, data=None) -> int:
    """Forward FLOPs per image of a model config (built on CPU: FlopCounterMode needs real kernels),
    on the loaded images' shape where ``data`` is given (as the trainer counts them), else on the
    dataset's shape (a name's, or a :class:`~repnas.spaces.DatasetInfo`)."""
    from repnas.rescale import count_flops
    from repnas.spaces import build_model, dataset_info

    if data is not None:
        classes, channels, shape = data.num_classes, data.in_channels, (data.in_channels, *data.image_size)
    else:
        info = dataset_info(dataset)
        classes, channels, shape = info.num_classes, info.in_channels, info.input_shape
    return int(count_flops(build_model(model_config, classes, channels), shape))


def _error_text(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    message = text.splitlines()[0] if text else ""
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return f"CUDA out of memory: {message or name}"
    return f"{name}: {message}" if message else name


def _free_cuda() -> None:
    """After a failed trial (an OOM above all), release the cached blocks so the next trial starts
    from a clean device."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
