"""Beyond the paper: does the search find schemes that dominate the hand-made RepVGG/RepWRN?

Inputs are contracts other parts already write: a search run directory (``trials.parquet``, read by
:func:`repnas.analysis.load_run`) and the ``table.csv`` of train experiments (one row per hand-made
model, mean ± std over seeds). The question per hand-made model M is a 2-objective dominance test:
is there a completed search trial T with ``params(T) <= params(M)`` and ``acc(T) >= acc(M)``, one
of the two strictly? Accuracies only compare when both sides were trained with the same recipe, so
the table also shows each side's epochs.

A ``synthetic: true`` experiment (the ``--smoke`` variant) makes up a small run directory and
hand-made table from a seed, so the whole path (loading, front, dominance, figure) runs in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from repnas.errors import UserError
from repnas.experiments._config import Experiment
from repnas.experiments._tables import HANDMADE_COLUMNS, markdown_table

__all__ = ["dominance_table", "load_handmade", "load_search", "run_compare", "write_synthetic"]

_OBJECTIVES = ({"name": "params", "direction": "minimize"},)


def load_handmade(paths: list[str | Path]) -> pd.DataFrame:
    """The hand-made models' rows of one or more experiment ``table.csv`` files."""
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"no hand-made results table {path}: run that experiment first "
                            "(python -m repnas.experiments run experiments/<name>.yaml)")
        frames.append(pd.read_csv(path).assign(source=path.parent.name))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    needed = {"model", "group", "params", "test_acc_mean", "test_acc_std", "val_acc_mean", "val_acc_std"}
    if frames and not needed <= set(table.columns):
        raise UserError(f"hand-made tables need columns {sorted(needed)}")
    return table


def load_search(paths: list[str | Path], accuracy: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(all completed trials, their accuracy-vs-params front) of one or more search run directories."""
    from repnas.analysis import load_run, pareto_front

    frames = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"no search run directory {path}: run the search first (repnas search ... --out {path})")
        trials = load_run(path).trials
        frames.append(trials.assign(search=path.name))
    if not frames:
        raise UserError("search_runs: name at least one search run directory")
    trials = pd.concat(frames, ignore_index=True)
    trials = trials[(trials["status"] == "complete") & trials[accuracy].notna() & trials["params"].notna()]
    objectives = [{"name": accuracy, "direction": "maximize"}, *_OBJECTIVES]
    front = pareto_front(trials, objectives) if len(trials) else trials
    return trials.reset_index(drop=True), front.reset_index(drop=True)


def dominance_table(trials: pd.DataFrame, handmade: pd.DataFrame, accuracy: str) -> pd.DataFrame:
    """Per hand-made model: the best trial within its parameter count, and whether it dominates it."""
    mean_col, std_col = HANDMADE_COLUMNS[accuracy]
    rows = []
    for m in handmade.to_dict("records"):
        acc = float(m[mean_col])
        within = trials[trials["params"] <= m["params"]]
        best = within.loc[within[accuracy].idxmax()] if len(within) else None
        dominating = within[(within[accuracy] >= acc) & ((within[accuracy] > acc) | (within["params"] < m["params"]))]
        rows.append({
            "model": m["model"],
            "group": m["group"],
            "params": int(m["params"]),
            "acc": acc,
            "acc_std": float(m[std_col]),
            "best_trial": int(best["trial"]) if best is not None else None,
            "best_trial_params": int(best["params"]) if best is not None else None,
            "best_trial_acc": float(best[accuracy]) if best is not None else np.nan,
            "margin": (float(best[accuracy]) - acc) if best is not None else np.nan,
            "dominated": len(dominating) > 0,
            "dominating_trials": len(dominating),
        })
    return pd.DataFrame(rows)


def write_synthetic(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """A made-up search run directory and hand-made table (for the smoke test; labelled synthetic)."""
    rng = np.random.default_rng(seed)
    run = out_dir / "synthetic_search"
    run.mkdir(parents=True, exist_ok=True)
    params = np.sort(rng.uniform(1e5, 1e7, 24)).round()
    acc = 0.80 + 0.03 * np.log10(params / 1e5) + rng.normal(0, 0.01, len(params))
    trials = pd.DataFrame({
        "trial": np.arange(len(params)), "status": ["complete"] * 22 + ["failed", "pruned"],
        "val_accuracy": acc, "test_accuracy": acc - 0.002, "params": params, "physical_params": params * 2,
        "flops": params * 30, "train_seconds": 1.0, "seed": 0, "worker": "0", "error": "", "budget": 1e7,
        "config": json.dumps({"synthetic": True}),
    })
    trials.to_parquet(run / "trials.parquet")
    (run / "search.yaml").write_text(yaml.safe_dump({"synthetic": True, "objectives": [
        {"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"}]}))
    hand = out_dir / "synthetic_handmade" / "table.csv"
    hand.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "model": ["vgg6", "rep_vgg6", "vgg11"], "group": ["plain", "repeated", "plain"],
        "params": [559178, 568746, 9416010], "test_acc_mean": [0.83, 0.84, 0.86], "test_acc_std": [0.004] * 3,
        "val_acc_mean": [0.832, 0.842, 0.862], "val_acc_std": [0.004] * 3,
    }).to_csv(hand, index=False)
    return run, hand


def run_compare(exp: Experiment, out_dir: str | Path, plotlyjs: str = "inline") -> dict[str, Path]:
    """Load the search(es) and the hand-made tables, write table.csv/.md and figure.html."""
    from repnas.experiments._figures import front_vs_handmade, write_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if exp.synthetic:
        run, hand = write_synthetic(out)
        search_runs, handmade_paths = [run], [hand]
    else:
        search_runs, handmade_paths = exp.search_runs, exp.handmade
    trials, front = load_search(search_runs, exp.accuracy)
    handmade = load_handmade(handmade_paths)
    table = dominance_table(trials, handmade, exp.accuracy)
    written = {"table": out / "table.csv", "front": out / "front.csv", "markdown": out / "table.md"}
    table.to_csv(written["table"], index=False)
    keep = [c for c in ("search", "trial", exp.accuracy, "params", "physical_params", "flops") if c in front]
    front[keep].sort_values("params").to_csv(written["front"], index=False)

    def pct(x: float) -> str:
        return "n/a" if not np.isfinite(x) else f"{100 * x:.2f}"

    rows = [[r.model, r.group, f"{r.params:,}", pct(r.acc), r.best_trial if r.best_trial is not None else "none",
             f"{r.best_trial_params:,}" if r.best_trial_params is not None else "n/a", pct(r.best_trial_acc),
             "n/a" if not np.isfinite(r.margin) else f"{100 * r.margin:+.2f}", "yes" if r.dominated else "no"]
            for r in table.itertuples()]
    note = " (SYNTHETIC data: smoke test of the code path, not a result)" if exp.synthetic else ""
    text = [f"# {exp.name}{note}", "", exp.claim.strip(), "",
            f"Search runs: {', '.join(map(str, search_runs))}; {len(trials)} completed trials, "
            f"{len(front)} on the {exp.accuracy}-vs-params front. Hand-made: {', '.join(map(str, handmade_paths))}.",
            "", markdown_table(["model", "group", "params", "acc %", "best trial within params", "its params",
                                "its acc %", "margin pp", "dominated"], rows), ""]
    written["markdown"].write_text("\n".join(text))
    fig = front_vs_handmade(trials, front, handmade, exp.accuracy, f"{exp.name}{note}")
    written["figure"] = write_figure(fig, out / "figure.html", plotlyjs)
    return written
