"""Summary tables: the front with a command to reproduce each row, and what each knob does."""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd

from repnas.analysis._load import Run, knob_columns
from repnas.analysis._pareto import Objectives, feasible_mask, pareto_front, pareto_mask

#: How a front row is reproduced: retrain the trial from its run config, or export the whole front
#: (``repnas export`` writes ``trial_<n>.yaml`` and the trained ``trial_<n>.pt`` for each front
#: trial; it has no per-trial switch, so the export command is the same for every row).
TRAIN_COMMAND = "repnas train {config}"
EXPORT_COMMAND = "repnas export {run} --pareto --out {out}"


def trial_commands(run_path: Path | str | None, trial: int) -> dict[str, str]:
    """``repnas train`` / ``repnas export`` command lines for one trial of a run directory."""
    if run_path is None:
        return {"train_command": "", "export_command": ""}
    run = Path(run_path)
    config = run / "trials" / str(int(trial)) / "config.yaml"
    return {
        "train_command": TRAIN_COMMAND.format(config=shlex.quote(str(config))),
        "export_command": EXPORT_COMMAND.format(run=shlex.quote(str(run)),
                                                out=shlex.quote(f"export/{run.name}")),
    }


def front_table(run: Run, objectives: Objectives | None = None, budget: float | None = None) -> pd.DataFrame:
    """The run's Pareto front (best first objective first): trial, objectives, cost, knobs, commands."""
    objectives = list(objectives or run.objectives)
    front = pareto_front(run.trials, objectives, budget)
    metrics = [c for c in ("val_accuracy", "test_accuracy", "params", "physical_params", "flops",
                           "train_seconds") if c in front.columns]
    names = list(dict.fromkeys([o["name"] for o in objectives] + metrics))
    table = front[["trial", *names, *knob_columns(front)]].reset_index(drop=True)
    commands = [trial_commands(run.path, t) for t in table["trial"]]
    table["train_command"] = [c["train_command"] for c in commands]
    table["export_command"] = [c["export_command"] for c in commands]
    return table


def _knob_groups(values: pd.Series, max_levels: int) -> pd.Series:
    """Group labels for a knob: its values, or quantile bins when a numeric knob has many values."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and numeric.nunique() > max_levels:
        return pd.qcut(numeric, q=min(4, max_levels), duplicates="drop").astype(str)
    return values.astype(str)


def knob_effects(run: Run, objective: str = "val_accuracy", objectives: Objectives | None = None,
                 max_levels: int = 8) -> pd.DataFrame:
    """Per knob and value: how many trials, how many feasible, the objective's mean and best, and
    how many reached the front. A quick read of which knob settings pay off (not a causal claim:
    the sampler chose the values, so they are correlated with each other)."""
    objectives = list(objectives or run.objectives)
    trials = run.trials.reset_index(drop=True)
    columns = ["knob", "value", "trials", "feasible", f"mean_{objective}", f"best_{objective}", "on_front"]
    if trials.empty or not knob_columns(trials):
        return pd.DataFrame(columns=columns)
    feasible = feasible_mask(trials, objectives)
    front = pareto_mask(trials, objectives)
    direction = next((o["direction"] for o in objectives if o["name"] == objective), "maximize")
    score = pd.to_numeric(trials[objective], errors="coerce").where(feasible)
    rows = []
    for knob in knob_columns(trials):
        groups = _knob_groups(trials[knob], max_levels)
        for value, index in groups.groupby(groups, sort=True).groups.items():
            s = score.loc[index]
            best = s.max() if direction == "maximize" else s.min()
            rows.append([knob.removeprefix("knob."), value, len(index), int(feasible[index].sum()),
                         s.mean(), best, int(front[index].sum())])
    return pd.DataFrame(rows, columns=columns)
