"""Export chosen trials of a run directory as run configs that ``repnas train`` accepts as is.

For each chosen trial ``DIR/trial_<n>.yaml`` is the trial's RunConfig (device reset to ``auto``)
and, where the trial left a checkpoint, ``DIR/trial_<n>.pt`` is the *materialized* model's plain
``state_dict`` (``repnas.rescale.materialize``: ordinary convs holding the generated weights, loadable
into the base model without repnas's repetition machinery). ``DIR/exported.yaml`` lists what was
exported with the trial's metrics.

The Pareto front is :func:`~repnas.search._front.front_rows` of ``trials.parquet`` (the same helper
decides the printed front and the report's); for an Optuna run it is the same set as
``study.best_trials``. Each model is exported once: a duplicate trial (``duplicate_of``) is never
chosen, the trial that trained its model is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from repnas.errors import UserError
from repnas.search._front import front_rows
from repnas.search._rundir import RunDir, SearchConfig


def load_run_trials(run_dir: str | Path):
    """(SearchConfig, trials table) of a run directory; ``UserError`` when it is not one."""
    import pandas as pd

    run = RunDir(run_dir)
    if not run.search_yaml.is_file() or not run.trials_parquet.is_file():
        raise UserError(f"{run.root} is not a search run directory (needs search.yaml and trials.parquet)")
    return SearchConfig.from_yaml(run.search_yaml), pd.read_parquet(run.trials_parquet)


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
    from repnas.train._config import RunConfig

    if pareto == (top is not None):
        raise UserError("choose exactly one of --pareto or --top K")
    if top is not None and top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    search, trials = load_run_trials(run_dir)
    numbers = choose_trials(search, trials, pareto=pareto, top=top)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    by_number = {int(r["trial"]): r for _, r in trials.iterrows()}
    exported = []
    for number in numbers:
        row = by_number[number]
        config = json.loads(row["config"])
        config["device"] = "auto"
        run_config = RunConfig.from_dict(config)
        config_path = out / f"trial_{number}.yaml"
        run_config.to_yaml(config_path)
        entry: dict[str, Any] = {"trial": number, "config": config_path.name}
        for key in ("val_accuracy", "test_accuracy", "params", "physical_params", "flops"):
            value = row[key]
            entry[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) else (
                float(value) if "accuracy" in key else int(value))
        checkpoint = _checkpoint_for(run, trials, number, row["config"])
        if checkpoint is not None:
            state_path = out / f"trial_{number}.pt"
            _write_materialized(run_config, checkpoint, state_path)
            entry["state_dict"] = state_path.name
            entry["checkpoint"] = str(checkpoint)
        exported.append(entry)
    (out / "exported.yaml").write_text(yaml.safe_dump(
        {"run": str(Path(run_dir)), "selection": "pareto" if pareto else f"top {top}", "trials": exported},
        sort_keys=False))
    return exported


def _checkpoint_for(run: RunDir, trials, number: int, config: str) -> Path | None:
    """The trial's checkpoint, or that of a trial with the same run config (a reused result)."""
    same = [int(t) for t in trials.loc[trials["config"] == config, "trial"]]
    candidates = [number] + [t for t in same if t != number]
    for candidate in candidates:
        path = run.trial_dir(candidate) / "checkpoint.pt"
        if path.is_file():
            return path
    return None


def _write_materialized(run_config, checkpoint: Path, path: Path) -> None:
    import torch

    from repnas.rescale import materialize
    from repnas.spaces import build_model, dataset_info

    info = dataset_info(run_config.dataset.name)
    model = build_model(run_config.model, info.num_classes, info.in_channels)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    plain = materialize(model.eval())
    torch.save(plain.state_dict(), path)
