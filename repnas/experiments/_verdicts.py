"""The claims answered: one verdict per claim, with its uncertainty, computed from the finished runs.

A table shows numbers; a reader wants the answer. This module reduces the runs of
``results/<experiment>/runs/*.json`` (and the search run directories) to the statement each claim of
PAPER.md asks for, with the per-seed spread it rests on, and says "not measured" wherever a run is
missing: a verdict is never extrapolated from other rows.

- **C1** (size, not parameters): the fraction of the VGG-N -> VGG11 gap that RepVGG-N closes,
  ``(acc(RepVGG-N) - acc(VGG-N)) / (acc(VGG11) - acc(VGG-N))`` per seed (the seeds all three have),
  mean and range; RepVGG-6 is the paper's headline (568,746 vs 9,416,010 parameters).
- **C2** (repetition helps at a fixed budget): RepVGG-N minus VGG-N and RepWRN-16-k minus WRN-16-1,
  test accuracy, per seed.
- **C3** (equivariance vs repetition): the relative gain recovered per group,
  ``(err_CNN - err_RepCNN) / (err_CNN - err_GCNN)``, of the seed means and per seed.
- **Search vs hand-made**: the search's front (chosen by validation accuracy, as the search chose it)
  against the hand-made models within the same budget, both judged on test accuracy: dominates / is
  dominated / crosses, with each set's hypervolume in (test accuracy, params <= budget).

The words of a verdict follow fixed rules on the per-seed values (given with each function), so two
readers of the same runs get the same sentence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from repnas.experiments._tables import load_runs, markdown_table, relative_gain

__all__ = ["c1_rows", "c2_rows", "c3_rows", "search_verdict", "verdicts_markdown"]

NOT_MEASURED = "not measured"
#: (search run folder under results/, hand-made experiment, budget, hand-made models it is compared with)
SEARCHES = (
    ("search/vgg-depth-cifar10", "c1c2_vgg_depth", 600_000),
    ("search/wrn-width-cifar10", "c2_wrn_width", 200_000),
)
_ACC = "test_accuracy"


def _per_seed(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Test accuracy per seed (rows) and model (columns), for the seeds every named model has."""
    sub = runs[runs["model"].isin(names)]
    if sub.empty:
        return pd.DataFrame(columns=list(names))
    table = sub.pivot_table(index="seed", columns="model", values=_ACC, aggfunc="first")
    if not set(names) <= set(table.columns):
        return pd.DataFrame(columns=list(names))
    return table[list(names)].dropna()


def _pp(values: Sequence[float]) -> str:
    return ", ".join(f"{100 * v:+.2f}" for v in values)


def _sign_words(values: Sequence[float], better: str, worse: str) -> str:
    """``better`` when every seed's value is > 0, ``worse`` when every one is < 0, else mixed."""
    wins = sum(v > 0 for v in values)
    if wins == len(values):
        return f"{better} in {wins}/{len(values)} seeds"
    if sum(v < 0 for v in values) == len(values):
        return f"{worse} in {len(values)}/{len(values)} seeds"
    return f"mixed: better in {wins}/{len(values)} seeds"


# ------------------------------------------------------------------------------------------- C1
def c1_rows(runs: pd.DataFrame, depths: Sequence[int] = (4, 5, 6, 7, 8, 9, 10)) -> list[dict[str, Any]]:
    """Per N: the fraction of the VGG-N -> VGG11 gap RepVGG-N closes, per seed, and a verdict.

    Verdict rule (per-seed fractions f): every f >= 1 "comparable to VGG11 or better"; every f >= 0.5
    "closes most of the gap"; every f > 0 "closes part of the gap"; every f <= 0 "closes none of it";
    otherwise "inconclusive (seeds disagree)".
    """
    rows = []
    for n in depths:
        names = [f"vgg{n}", f"rep_vgg{n}", "vgg11"]
        acc = _per_seed(runs, names)
        row: dict[str, Any] = {"N": n, "seeds": len(acc), "fractions": [], "rep_minus_vgg11": []}
        if len(acc):
            gap = acc["vgg11"] - acc[f"vgg{n}"]
            fractions = ((acc[f"rep_vgg{n}"] - acc[f"vgg{n}"]) / gap.where(gap > 0)).tolist()
            row["fractions"] = [float(f) for f in fractions]
            row["rep_minus_vgg11"] = (acc[f"rep_vgg{n}"] - acc["vgg11"]).astype(float).tolist()
            row["gap"] = gap.astype(float).tolist()
        fr = [f for f in row["fractions"] if math.isfinite(f)]
        if not len(acc):
            row["verdict"] = NOT_MEASURED
        elif len(fr) < len(row["fractions"]):
            row["verdict"] = "no gap to close (VGG11 not better than VGG-N in some seed)"
        elif all(f >= 1 for f in fr):
            row["verdict"] = "comparable to VGG11 or better"
        elif all(f >= 0.5 for f in fr):
            row["verdict"] = "closes most of the gap"
        elif all(f > 0 for f in fr):
            row["verdict"] = "closes part of the gap"
        elif all(f <= 0 for f in fr):
            row["verdict"] = "closes none of it"
        else:
            row["verdict"] = "inconclusive (seeds disagree)"
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- C2
def c2_rows(depth_runs: pd.DataFrame, width_runs: pd.DataFrame) -> list[dict[str, Any]]:
    """RepVGG-N - VGG-N (N = 4..10) and RepWRN-16-k - WRN-16-1 (k = 2, 4, 8): per-seed differences
    of test accuracy, and the verdict words of :func:`_sign_words`."""
    pairs = [(depth_runs, f"rep_vgg{n}", f"vgg{n}") for n in range(4, 11)]
    pairs += [(width_runs, f"rep_wrn16_{k}", "wrn16_1") for k in (2, 4, 8)]
    rows = []
    for runs, rep, plain in pairs:
        acc = _per_seed(runs, [rep, plain])
        diffs = (acc[rep] - acc[plain]).astype(float).tolist() if len(acc) else []
        params = runs.groupby("model")["params"].first() if len(runs) else pd.Series(dtype=float)
        rows.append({"rep": rep, "plain": plain, "seeds": len(acc), "diffs": diffs,
                     "params_rep": int(params[rep]) if rep in params else None,
                     "params_plain": int(params[plain]) if plain in params else None,
                     "verdict": _sign_words(diffs, "repetition better", "repetition worse") if diffs
                     else NOT_MEASURED})
    return rows


# ------------------------------------------------------------------------------------------- C3
def c3_rows(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per group C4, C8, C16: the gain recovered of the seed means and per seed (PAPER.md: up to ~0.4)."""
    rows = []
    for n in (4, 8, 16):
        names = ["cnn_rotmnist", f"rep_cnn_c{n}", f"gcnn_c{n}"]
        acc = _per_seed(runs, names)
        row: dict[str, Any] = {"group": f"C{n}", "seeds": len(acc), "per_seed": [], "of_means": math.nan}
        if len(acc):
            err = 1.0 - acc
            row["per_seed"] = [relative_gain(*e) for e in err[names].to_numpy()]
            row["of_means"] = relative_gain(*(err[c].mean() for c in names))
        finite = [g for g in row["per_seed"] if math.isfinite(g)]
        if not len(acc):
            row["verdict"] = NOT_MEASURED
        elif not math.isfinite(row["of_means"]):
            row["verdict"] = "no gain to recover (the G-CNN is not better than the CNN)"
        elif finite and all(g > 0 for g in finite):
            row["verdict"] = f"repetition recovers {row['of_means']:.0%} of the G-CNN's gain"
        else:
            row["verdict"] = f"inconclusive: {row['of_means']:.0%} of the means, seeds disagree"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- search vs hand-made
def _front(points: np.ndarray) -> np.ndarray:
    """Rows of (accuracy, params) that no other row weakly dominates (max accuracy, min params)."""
    keep = []
    for i, (a, p) in enumerate(points):
        dominated = any((b >= a and q <= p) and (b > a or q < p) for j, (b, q) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return points[keep]


def _covers(a: np.ndarray, b: np.ndarray) -> bool:
    """Every point of ``b`` is weakly dominated by some point of ``a``."""
    return all(any(x >= acc and y <= params for x, y in a) for acc, params in b)


def search_verdict(trials: pd.DataFrame, handmade: pd.DataFrame, budget: int) -> dict[str, Any]:
    """The search's front vs the hand-made models with ``params <= budget``.

    ``trials``: the search's table (``status``, ``val_accuracy``, ``test_accuracy``, ``params``);
    ``handmade``: one row per model (``model``, ``params``, ``test_acc_mean``). The search's front is
    its non-dominated trials in (val accuracy, params) - what the search itself would hand over -
    judged on their test accuracy, as the hand-made models are. Relation: "dominates" when every
    hand-made point is weakly dominated by a front point and the sets differ, "is dominated" in the
    converse case, else "crosses". Hypervolumes in (test accuracy, params) with the reference
    (accuracy 0, params ``budget``), divided by ``budget`` (so 1.0 is accuracy 1 at zero params).
    """
    from repnas.analysis import hypervolume, pareto_front

    done = trials[(trials["status"] == "complete") & trials["val_accuracy"].notna() & trials[_ACC].notna()]
    done = done[done["params"] <= budget]
    hand = handmade[handmade["params"] <= budget]
    out: dict[str, Any] = {"budget": budget, "trials": len(done), "handmade": hand["model"].tolist()}
    if done.empty or hand.empty:
        out["verdict"] = NOT_MEASURED
        return out
    chosen = pareto_front(done, [{"name": "val_accuracy", "direction": "maximize"},
                                 {"name": "params", "direction": "minimize"}])
    search_pts = _front(chosen[[_ACC, "params"]].to_numpy(dtype=float))
    hand_pts = _front(hand[["test_acc_mean", "params"]].to_numpy(dtype=float))
    ref = [0.0, float(budget)]
    out["hv_search"] = hypervolume(search_pts, ref, [True, False]) / budget
    out["hv_handmade"] = hypervolume(hand_pts, ref, [True, False]) / budget
    out["front"] = [{"trial": int(r.trial), "test_accuracy": float(getattr(r, _ACC)), "params": int(r.params)}
                    for r in chosen.itertuples()]
    covers, covered = _covers(search_pts, hand_pts), _covers(hand_pts, search_pts)
    out["verdict"] = ("the same front" if covers and covered else "the search dominates" if covers
                      else "the search is dominated" if covered else "the fronts cross")
    return out


# ------------------------------------------------------------------------------------------ page
def _fmt_fractions(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} (range {min(finite):.2f} to {max(finite):.2f}, {len(finite)} seeds)"


def verdicts_markdown(results: Path) -> str:
    """The "Verdicts" section of docs/results.md, from whatever ``results`` holds."""
    from repnas.analysis import load_run

    depth = load_runs(results / "c1c2_vgg_depth")
    width = load_runs(results / "c2_wrn_width")
    rot = load_runs(results / "c3_rotmnist")
    parts = ["## Verdicts", "",
             "Each claim's answer as the finished runs give it (test accuracy, seeds paired; the rules behind the "
             "words are in `repnas/experiments/_verdicts.py`). \"not measured\" means a run is missing; no verdict "
             "is extrapolated.", ""]

    c1 = c1_rows(depth)
    head = next(r for r in c1 if r["N"] == 6)
    parts.append("**C1** (RepVGG-6, 568,746 params, vs VGG11, 9,416,010): " + (
        NOT_MEASURED + " (needs vgg6, rep_vgg6 and vgg11 with a common seed)." if not head["seeds"] else
        f"{head['verdict']}: it closes {_fmt_fractions(head['fractions'])} of the VGG6 -> VGG11 gap; "
        f"RepVGG-6 - VGG11 = {_pp(head['rep_minus_vgg11'])} pp per seed."))
    parts += ["", markdown_table(
        ["N", "seeds", "gap VGG11 - VGG-N (pp)", "fraction closed by RepVGG-N", "RepVGG-N - VGG11 (pp)", "verdict"],
        [[r["N"], r["seeds"], _pp(r.get("gap", [])) or "-", _fmt_fractions(r["fractions"]) if r["seeds"] else "-",
          _pp(r["rep_minus_vgg11"]) or "-", r["verdict"]] for r in c1]), ""]

    c2 = c2_rows(depth, width)
    measured = [r for r in c2 if r["seeds"]]
    better = sum(r["verdict"].startswith("repetition better") for r in measured)
    worse = sum(r["verdict"].startswith("repetition worse") for r in measured)
    parts.append(f"**C2**: of {len(c2)} rows, {len(measured)} measured: repetition better in every seed in {better}, "
                 f"worse in every seed in {worse}, mixed in {len(measured) - better - worse}"
                 + ("." if measured else f" ({NOT_MEASURED} yet)."))
    parts += ["", markdown_table(["repeated", "plain", "params repeated / plain", "seeds", "difference per seed (pp)",
                                  "verdict"],
                                 [[r["rep"], r["plain"],
                                   f"{r['params_rep']:,} / {r['params_plain']:,}"
                                   if r["params_rep"] and r["params_plain"] else "-",
                                   r["seeds"], _pp(r["diffs"]) or "-", r["verdict"]] for r in c2]), ""]

    c3 = c3_rows(rot)
    parts.append("**C3** (gain recovered = (err_CNN - err_RepCNN) / (err_CNN - err_GCNN); the paper: up to ~0.4): "
                 + "; ".join(f"{r['group']}: {r['verdict']}" for r in c3) + ".")
    parts += ["", markdown_table(["group", "seeds", "of the means", "per seed", "verdict"],
                                 [[r["group"], r["seeds"],
                                   f"{r['of_means']:.3f}" if math.isfinite(r["of_means"]) else "-",
                                   ", ".join(f"{g:.3f}" for g in r["per_seed"]) or "-", r["verdict"]] for r in c3]),
              ""]

    rows = []
    for folder, experiment, budget in SEARCHES:
        run, table = results / folder, results / experiment / "table.csv"
        if not (run / "trials.parquet").is_file() or not table.is_file():
            rows.append([folder, f"{budget:,}", "-", "-", "-", "-", NOT_MEASURED])
            continue
        v = search_verdict(load_run(run).trials, pd.read_csv(table), budget)
        rows.append([folder, f"{budget:,}", v["trials"], ", ".join(v["handmade"]) or "-",
                     f"{v['hv_search']:.4f}" if "hv_search" in v else "-",
                     f"{v['hv_handmade']:.4f}" if "hv_handmade" in v else "-", v["verdict"]])
    parts += ["**Search vs hand-made** at the same budget (the search's front chosen by validation accuracy, both "
              "judged on test accuracy; hypervolume in (test accuracy, params <= budget), reference (0, budget), "
              "divided by the budget):", "",
              markdown_table(["search", "budget", "trials", "hand-made models within it", "HV search", "HV hand-made",
                              "verdict"], rows), ""]
    return "\n".join(parts) + "\n"
