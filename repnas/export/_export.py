"""Export chosen trials of a run directory as run configs that ``repnas train`` accepts as is.

For each chosen trial ``DIR/trial_<n>.yaml`` is the trial's RunConfig (device reset to ``auto``)
and, where the trial left a checkpoint, ``DIR/trial_<n>.pt`` is the *materialized* model's plain
``state_dict`` (``repnas.rescale.materialize``: ordinary convs holding the generated weights, loadable
into the base model without repnas's repetition machinery), and two deployable files of that
materialized model that need no repnas at all (:mod:`repnas.export._deploy`): ``trial_<n>.ts``
(TorchScript, ``torch.jit.load``) and ``trial_<n>.onnx`` (ONNX). Both are checked at export time
against the trained *repeated* model in eval mode (max abs logit difference <= 1e-4; the ONNX file
through onnxruntime where it is installed, ``pip install repnas[deploy]``), and the differences are
recorded. ``DIR/exported.yaml`` lists what was exported with the trial's metrics, every path
relative to itself, so the folder can be moved or shipped as a whole.

The Pareto front is :func:`~repnas.analysis._front.front_rows` of ``trials.parquet`` (the same helper
decides the printed front and the report's); for an Optuna run it is the same set as
``study.best_trials``. Each model is exported once: a duplicate trial (``duplicate_of``) is never
chosen, the trial that trained its model is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from repnas._io import atomic_path, atomic_write_text
from repnas.analysis._front import front_rows
from repnas.errors import UserError
from repnas.runs._rundir import RunDir, SearchConfig


def load_run_trials(run_dir: str | Path):
    """(SearchConfig, trials table) of a run directory; ``UserError`` when it is not one."""
    import pandas as pd

    run = RunDir(run_dir)
    if not run.search_yaml.is_file() or not run.trials_parquet.is_file():
        raise UserError(f"{run.root} is not a search run directory (needs search.yaml and trials.parquet)")
    search = SearchConfig.from_yaml(run.search_yaml)
    try:
        trials = pd.read_parquet(run.trials_parquet)
    except (OSError, ValueError) as exc:
        raise UserError(f"{run.trials_parquet}: unreadable ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                        ) from None
    missing = [c for c in ("trial", "status", "val_accuracy", "params", "config") if c not in trials.columns]
    if missing:
        raise UserError(f"{run.trials_parquet}: not a repnas trials table (no columns {', '.join(missing)})")
    return search, trials


def choose_trials(search: SearchConfig, trials, pareto: bool = False, top: int | None = None) -> list[int]:
    """Trial numbers of the Pareto front (best validation accuracy first) or of the top K by
    validation accuracy; duplicates (``duplicate_of``) are skipped, each model comes once."""
    if pareto:
        complete = front_rows(trials, search)
    else:
        trained = trials["duplicate_of"].isna() if "duplicate_of" in trials.columns else True
        complete = trials[(trials["status"] == "complete") & trained]
    if complete.empty:
        raise UserError("the run has no completed trials to export")
    complete = complete.sort_values(["val_accuracy", "params", "trial"], ascending=[False, True, True])
    chosen = [int(t) for t in complete["trial"]]
    return chosen[:top] if top is not None else chosen


def export_trials(run_dir: str | Path, out: str | Path, pareto: bool = False,
                  top: int | None = None) -> list[dict]:
    """Write run configs (and materialized state dicts) of the chosen trials to ``out``."""

    if pareto == (top is not None):
        raise UserError("choose exactly one of --pareto or --top K")
    if top is not None and top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    from repnas._outputs import check_output_dir

    check_output_dir(out)
    search, trials = load_run_trials(run_dir)
    numbers = choose_trials(search, trials, pareto=pareto, top=top)
    with staged_folder(out) as staging:
        return _export(run_dir, staging, trials, numbers, pareto, top)


def _export(run_dir, out: Path, trials, numbers: list[int], pareto: bool, top: int | None) -> list[dict]:
    import pandas as pd

    from repnas.train._config import RunConfig

    run = RunDir(run_dir)
    by_number = {int(r["trial"]): r for _, r in trials.iterrows()}
    exported = []
    for number in numbers:
        row = by_number[number]
        config = json.loads(row["config"])
        config["device"] = "auto"
        run_config = RunConfig.from_dict(config)
        config_path = out / f"trial_{number}.yaml"
        atomic_write_text(config_path, run_config.to_yaml())
        entry: dict[str, Any] = {"trial": number, "config": config_path.name}
        for key in ("val_accuracy", "test_accuracy", "params", "physical_params", "flops"):
            value = row[key]
            entry[key] = None if value is None or pd.isna(value) else (
                float(value) if "accuracy" in key else int(value))
        checkpoint = _checkpoint_for(run, trials, number, row["config"])
        if checkpoint is not None:
            entry.update(_write_materialized(run_config, checkpoint, out, f"trial_{number}"))
            entry["checkpoint"] = _relative(checkpoint, out)
        exported.append(entry)
    atomic_write_text(out / "exported.yaml", yaml.safe_dump(
        {"run": _relative(Path(run_dir), out), "selection": "pareto" if pareto else f"top {top}",
         "trials": exported}, sort_keys=False))
    return exported


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to the folder ``base`` (``exported.yaml``'s paths are relative to itself)."""
    return os.path.relpath(Path(path).resolve(), Path(base).resolve())


def _checkpoint_for(run: RunDir, trials, number: int, config: str) -> Path | None:
    """The trial's checkpoint, or that of a trial with the same run config (a reused result)."""
    same = [int(t) for t in trials.loc[trials["config"] == config, "trial"]]
    candidates = [number] + [t for t in same if t != number]
    for candidate in candidates:
        path = run.trial_dir(candidate) / "checkpoint.pt"
        if path.is_file():
            return path
    return None


def _write_materialized(run_config, checkpoint: Path, out: Path, stem: str) -> dict[str, Any]:
    """Write ``<stem>.pt`` (state dict), ``<stem>.ts`` and ``<stem>.onnx`` of the materialized model;
    return their ``exported.yaml`` fields (file names, input shape, checked differences)."""
    import torch

    from repnas.export._deploy import write_deployables
    from repnas.rescale import materialize
    from repnas.spaces import build_model
    from repnas.train import dataset_shape

    dataset = run_config.dataset
    info = dataset_shape(dataset.name, dataset.data_dir, dataset.image_size)  # an image folder's: read from it
    model = build_model(run_config.model, info.num_classes, info.in_channels)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
    except Exception as exc:  # truncated, foreign or damaged: name the file
        text = str(exc).strip().splitlines()
        raise UserError(f"{checkpoint}: unreadable checkpoint ({type(exc).__name__}: "
                        f"{text[0][:120] if text else ''})") from None
    model.eval()
    plain = materialize(model).eval()
    with atomic_path(out / f"{stem}.pt") as tmp:
        torch.save(plain.state_dict(), tmp)
    # how to feed it: pixels in [0, 1], then (x - mean) / std per channel (None: a checkpoint written
    # before the trainer kept it; the dataset's train-split statistics, repnas.train.load_dataset)
    inputs = state.get("normalization") if isinstance(state, dict) else None
    return {"state_dict": f"{stem}.pt", "normalization": inputs,
            **write_deployables(model, plain, info.input_shape, out, stem)}


@contextlib.contextmanager
def staged_folder(out: str | Path):
    """Yield a hidden folder beside ``out`` to write into; on success the complete folder takes
    ``out``'s place in one step (:mod:`repnas.export._swap`), so ``out`` is the whole export
    or as it was; on failure it is removed and ``out`` is as it was. The staging folder sits beside
    ``out``, so paths relative to it (``exported.yaml``'s) are the same relative to ``out``."""
    from repnas.export._swap import keep_existing, remove_dead_staging, staging_for, swap_in

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(out)  # a killed export's staging folder (it left 176 MB)
    staging = staging_for(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        keep_existing(out, staging)
        swap_in(staging, out)  # whole or not at all: one rename (or exchange) of the complete folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
