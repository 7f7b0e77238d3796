"""Tables of an experiment: per-model mean ± std over seeds, paired comparisons, C3's gain recovered.

Everything is computed from the per-run JSON files, so a table can be rebuilt at any time from
whatever runs exist (partial experiments give partial tables, never stale ones). Standard deviations
are the sample std over seeds (``ddof=1``); with one seed there is none and the table says so.
Markdown is written by hand (``DataFrame.to_markdown`` needs the optional ``tabulate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from repnas.experiments._config import Experiment
from repnas.experiments._runner import read_run

__all__ = ["compare_table", "load_runs", "markdown_table", "relative_gain", "relative_gain_table", "summarize",
           "write_tables"]

#: a search trial's accuracy column -> the summary table's columns of the same metric (mean, std over seeds)
HANDMADE_COLUMNS = {"test_accuracy": ("test_acc_mean", "test_acc_std"), "val_accuracy": ("val_acc_mean", "val_acc_std")}

RUN_COLUMNS = ("model", "group", "seed", "test_accuracy", "val_accuracy", "params", "physical_params", "flops",
               "epochs", "train_seconds", "wall_seconds", "hardware", "smoke", "fingerprint")


def load_runs(out_dir: str | Path) -> pd.DataFrame:
    """One row per finished run found in ``<out_dir>/runs/*.json``."""
    rows = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        record = read_run(path)
        if record is None:
            continue
        rows.append({c: record.get(c) for c in RUN_COLUMNS})
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    for c in ("test_accuracy", "val_accuracy", "train_seconds", "wall_seconds"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    return frame


def summarize(runs: pd.DataFrame, order: Sequence[str] | None = None, accuracy: str = "test_accuracy") -> pd.DataFrame:
    """Per model: seeds, accuracy mean/std (test and val), error, params, FLOPs, wall time, hardware."""
    rows = []
    names = list(order) if order is not None else list(dict.fromkeys(runs["model"]))
    for name in names:
        r = runs[runs["model"] == name]
        if r.empty:
            continue
        rows.append({
            "model": name,
            "group": r["group"].iloc[0],
            "seeds": len(r),
            "test_acc_mean": r["test_accuracy"].mean(),
            "test_acc_std": r["test_accuracy"].std(ddof=1),
            "val_acc_mean": r["val_accuracy"].mean(),
            "val_acc_std": r["val_accuracy"].std(ddof=1),
            "err_mean": 1.0 - r[accuracy].mean(),
            "params": int(r["params"].iloc[0]),
            "physical_params": int(r["physical_params"].iloc[0]),
            "flops": int(r["flops"].iloc[0]),
            "epochs": int(r["epochs"].max()),
            "wall_s_mean": r["wall_seconds"].mean(),
            "wall_s_total": r["wall_seconds"].sum(),
            "hardware": "; ".join(sorted(set(r["hardware"].astype(str)))),
        })
    return pd.DataFrame(rows)


def _paired(runs: pd.DataFrame, names: Sequence[str], accuracy: str) -> pd.DataFrame:
    """Accuracy per seed (rows) and model (columns), only the seeds every model has."""
    sub = runs[runs["model"].isin(names)]
    table = sub.pivot_table(index="seed", columns="model", values=accuracy, aggfunc="first")
    if not set(names) <= set(table.columns):
        return pd.DataFrame(columns=list(names))
    return table[list(names)].dropna()


def compare_table(runs: pd.DataFrame, pairs: Sequence[dict[str, str]], accuracy: str = "test_accuracy") -> pd.DataFrame:
    """For each ``{a, b, claim}``: acc(a) - acc(b), mean ± std over the seeds both have, params ratio."""
    rows = []
    params = runs.groupby("model")["params"].first()
    for pair in pairs:
        a, b = pair["a"], pair["b"]
        paired = _paired(runs, [a, b], accuracy)
        if paired.empty:
            continue
        diff = paired[a] - paired[b]
        rows.append({
            "claim": pair.get("claim", ""),
            "a": a,
            "b": b,
            "seeds": len(paired),
            "acc_a": paired[a].mean(),
            "acc_b": paired[b].mean(),
            "diff_mean": diff.mean(),
            "diff_std": diff.std(ddof=1),
            "a_wins": int((diff > 0).sum()),
            "params_a": int(params[a]),
            "params_b": int(params[b]),
            "params_ratio": float(params[a]) / float(params[b]),
        })
    return pd.DataFrame(rows)


def relative_gain(err_cnn: float, err_rep: float, err_gcnn: float) -> float:
    """(err_CNN - err_RepCNN) / (err_CNN - err_GCNN): the share of the G-CNN's gain that repetition alone
    recovers (PAPER.md, C3). NaN when the G-CNN is not better than the CNN (no gain to recover)."""
    denominator = err_cnn - err_gcnn
    if not denominator > 0:
        return math.nan
    return (err_cnn - err_rep) / denominator


def relative_gain_table(runs: pd.DataFrame, spec: dict[str, Any], accuracy: str = "test_accuracy") -> pd.DataFrame:
    """Per group (C4, C8, C16): the three mean errors, the gain of the means, and the per-seed gain.

    The headline number is the gain computed from errors averaged over seeds (ratios of noisy
    differences are unstable per seed); the per-seed mean ± std shows how stable it is.
    """
    rows = []
    cnn = spec["cnn"]
    for label, pair in spec["groups"].items():
        names = [cnn, pair["rep"], pair["gcnn"]]
        paired = _paired(runs, names, accuracy)
        if paired.empty:
            continue
        err = 1.0 - paired
        per_seed = np.array([relative_gain(*row) for row in err[names].to_numpy()], dtype=float)
        finite = per_seed[np.isfinite(per_seed)]
        rows.append({
            "group": str(label),
            "cnn": cnn,
            "rep": pair["rep"],
            "gcnn": pair["gcnn"],
            "seeds": len(paired),
            "err_cnn": err[cnn].mean(),
            "err_rep": err[pair["rep"]].mean(),
            "err_gcnn": err[pair["gcnn"]].mean(),
            "gain_recovered": relative_gain(err[cnn].mean(), err[pair["rep"]].mean(), err[pair["gcnn"]].mean()),
            "gain_per_seed_mean": finite.mean() if len(finite) else math.nan,
            "gain_per_seed_std": finite.std(ddof=1) if len(finite) > 1 else math.nan,
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ markdown
def _pct(mean: float, std: float | None = None) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _int(value: Any) -> str:
    return f"{int(value):,}" if value is not None and math.isfinite(float(value)) else "n/a"


def _num(value: Any, digits: int = 1) -> str:
    return f"{float(value):.{digits}f}" if value is not None and math.isfinite(float(value)) else "n/a"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    def right(cell: Any) -> bool:
        parts = str(cell).replace(",", "").split("±")
        return all(p.strip().lstrip("+-").replace(".", "", 1).isdigit() for p in parts)

    align = ["---:" if rows and all(right(r[i]) for r in rows) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame) -> str:
    headers = ["model", "group", "seeds", "test acc % (mean ± std)", "val acc %", "params", "physical params",
               "MFLOPs", "epochs", "s / run", "hardware"]
    rows = [[r.model, r.group, r.seeds, _pct(r.test_acc_mean, r.test_acc_std), _pct(r.val_acc_mean, r.val_acc_std),
             _int(r.params), _int(r.physical_params), _num(r.flops / 1e6), r.epochs, _num(r.wall_s_mean),
             r.hardware] for r in summary.itertuples()]
    return markdown_table(headers, rows)


def compare_markdown(table: pd.DataFrame) -> str:
    headers = ["claim", "A", "B", "seeds", "acc A %", "acc B %", "A - B (pp, mean ± std)", "A wins",
               "params A / B"]
    rows = [[r.claim, r.a, r.b, r.seeds, _pct(r.acc_a), _pct(r.acc_b), _signed_pp(r.diff_mean, r.diff_std),
             f"{r.a_wins}/{r.seeds}", f"{r.params_ratio:.3f}"] for r in table.itertuples()]
    return markdown_table(headers, rows)


def _signed_pp(mean: float, std: float) -> str:
    text = f"{100 * mean:+.2f}"
    return f"{text} ± {100 * std:.2f}" if math.isfinite(std) else text


def gain_markdown(table: pd.DataFrame) -> str:
    headers = ["N", "CNN", "RepCNN", "G-CNN", "seeds", "err CNN %", "err RepCNN %", "err G-CNN %",
               "gain recovered (of means)", "per seed (mean ± std)"]
    rows = [[r.group, r.cnn, r.rep, r.gcnn, r.seeds, _pct(r.err_cnn), _pct(r.err_rep), _pct(r.err_gcnn),
             _num(r.gain_recovered, 3), _gain_seed(r.gain_per_seed_mean, r.gain_per_seed_std)]
            for r in table.itertuples()]
    return markdown_table(headers, rows)


def _gain_seed(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


# ------------------------------------------------------------------------------------- writing
def write_tables(exp: Experiment, out_dir: str | Path) -> dict[str, Path]:
    """Rebuild every table of ``exp`` from the run files in ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(out)
    runs = runs[runs["model"].isin([e.name for e in exp.models])]
    summary = summarize(runs, [e.name for e in exp.models], exp.accuracy)
    written = {"runs": out / "runs.csv", "table": out / "table.csv", "markdown": out / "table.md"}
    runs.drop(columns=["fingerprint"]).sort_values(["model", "seed"]).to_csv(written["runs"], index=False)
    summary.to_csv(written["table"], index=False)

    parts = [f"# {exp.name}" + (" (smoke: tiny data and epochs, numbers mean nothing)" if exp.smoke else ""), ""]
    if exp.claim:
        parts += [exp.claim.strip(), ""]
    parts += [_recipe_line(exp), "", summary_markdown(summary) if len(summary) else "No finished runs yet.", ""]
    if exp.compare:
        table = compare_table(runs, exp.compare, exp.accuracy)
        table.to_csv(out / "compare.csv", index=False)
        written["compare"] = out / "compare.csv"
        if len(table):
            parts += ["## Paired comparisons (same seeds)", "", compare_markdown(table), ""]
    if exp.relative_gain is not None:
        table = relative_gain_table(runs, exp.relative_gain, exp.accuracy)
        table.to_csv(out / "gain.csv", index=False)
        written["gain"] = out / "gain.csv"
        if len(table):
            parts += ["## Relative gain recovered: (err_CNN - err_RepCNN) / (err_CNN - err_GCNN)", "",
                      gain_markdown(table), ""]
    total = runs["wall_seconds"].sum()
    hardware = ", ".join(sorted(set(runs["hardware"].astype(str)))) or "n/a"
    parts += [f"{len(runs)} runs, {total:.0f} s wall time in all ({total / 3600:.2f} h), on: {hardware}.", ""]
    written["markdown"].write_text("\n".join(parts))
    return written


def _recipe_line(exp: Experiment) -> str:
    recipe = ", ".join(f"{k}={v}" for k, v in exp.recipe.items())
    dataset = exp.dataset.get("name", "?")
    return f"Dataset `{dataset}`, seeds {exp.seeds}, recipe: {recipe or 'RunConfig defaults'}."
