"""Does early stopping buy front quality per train-second? none vs sha vs moasha, several seeds.

Runs the Optuna search (``repnas.search.run_optuna_search``, one worker, so trial order is time
order) once per (rule, seed) on a CPU task where accuracy is far from saturated: CIFAR-10 from
the shared ImageFolder archive, downscaled to 8x8 and cut to 2000 training images (best validation
accuracy about 0.37), searched with the
``quick`` space (tiny two-stage VGGs, 12k-parameter budget). Every rule gets the same number of
trials first; then a stopping rule's search is extended (``--resume`` with ``--extend`` more trials, up
to ``--max-trials``) while it has spent less work (below) than ``none``: what early stopping is
for is trying more models with the same compute. Then, per seed, with one reference point for the
three runs (``repnas.analysis.reference_point`` over all of them):

* ``hv@T``: the hypervolume (val accuracy max, params min, FLOPs min) of the front found within
  ``T`` cumulative train-seconds, ``T`` = the smallest total of the three runs, as a ratio to
  ``none`` at the same ``T``;
* ``t95``: the cumulative train-seconds at which the run's front first reaches 95% of ``none``'s
  final hypervolume, as a ratio to ``none``'s total train-seconds (``inf`` = never reached);
* the same two figures with compute counted as ``work`` = epochs x forward FLOPs per image (the
  training arithmetic: on a shared, loaded machine train-seconds of one trial vary several-fold
  with the load, work does not), and the epochs trained in all.

Printed as mean +- standard deviation over seeds, with every seed's value. The decision rule of
issue 15: ``moasha`` becomes the default only if its mean ``t95`` ratio is <= 0.60. Measured with
the defaults below (2 CPU cores shared with other jobs, load ~12, 1403 s wall for the extension
round after 2251 s for the first 12 trials of each run): moasha t95 0.399 +- 0.264 [0.504 0.595
0.099], sha never in one seed [0.599 inf 0.045], none itself 0.647 [0.925 0.928 0.086]; hypervolume
at equal train-seconds moasha 1.745 +- 1.187, sha 1.058 +- 0.185. So moasha is the default.

    python benchmarks/early_stop.py --out runs/early_stop             # ~15-20 min on 2 busy CPU cores
    python benchmarks/early_stop.py --seeds 0 --trials 6 --epochs 3   # a smoke run
    python benchmarks/early_stop.py --archive /path/to/cifar10.tar.gz --train 4000 --size 16

The subset is loaded once and handed to the driver by replacing its private ``_load_data`` (the
search itself only knows named datasets at their native size); every trial still goes through the
driver's real path: ask, budget solver, trainer, early-stopping rule, tell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RULES = ("none", "sha", "moasha")
OBJECTIVES = [{"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"},
              {"name": "flops", "direction": "minimize"}]


def default_archive() -> Path:
    repo = Path(__file__).resolve().parent.parent
    shared = Path(os.environ.get("REPNAS_SHARED", repo.parent / "shared"))
    for candidate in (shared, Path("/work/shared")):
        if (candidate / "datasets" / "cifar10.tar.gz").exists():
            return candidate / "datasets" / "cifar10.tar.gz"
    return shared / "datasets" / "cifar10.tar.gz"


def load_subset(archive: Path, size: int, train: int, val: int, seed: int):
    """CIFAR-10 at ``size`` x ``size``: seeded random ``train``/``val`` subsets of the seeded split
    (the archive's splits are sorted by class), named ``cifar10`` (so the trainer uses CIFAR's
    augmentation)."""
    import torch

    from repnas.train._data import Split, load_dataset

    data = load_dataset(f"imagefolder:{archive}", image_size=size, seed=seed)
    generator = torch.Generator().manual_seed(seed)

    def cut(split, n: int) -> Split:
        pick = torch.randperm(len(split.y), generator=generator)[:n].sort().values
        return Split(split.x[pick].clone(), split.y[pick].clone())

    return dataclasses.replace(data, name="cifar10", train=cut(data.train, train), val=cut(data.val, val),
                               test=cut(data.test, val))


def run_search(rule: str, seed: int, args, data, root: Path, trials: int) -> pd.DataFrame:
    """The trials table of rule ``rule``'s search with at least ``trials`` trials: run, extended
    with ``--resume`` (its pickled sampler proposes what one longer run would have), or read back."""
    import repnas.search._optuna_driver as driver
    from repnas.search import SearchConfig, run_optuna_search
    from repnas.spaces import load_space

    out = root / f"{rule}-s{seed}"
    space = load_space("quick")
    search = SearchConfig(
        space=space.to_dict(), space_name="quick", dataset="cifar10", budget=args.budget, trials=args.trials,
        epochs=args.epochs, seed=seed, population_size=max(4, args.trials // 3), early_stop=rule,
        device="cpu", storage=f"sqlite:///{(out / 'study.db').resolve()}", study=out.name,
        recipe={"crop_padding": 2, "batch_size": 128, "lr": 0.1})
    existing = len(pd.read_parquet(out / "trials.parquet")) if (out / "trials.parquet").exists() else 0
    if existing >= trials:
        import optuna  # measured before (--out kept): only the figures are computed again

        study = optuna.load_study(study_name=search.study, storage=search.storage)
    else:
        search.trials = trials
        driver._load_data = lambda _search: data  # the subset, loaded once (see the module doc)
        study = run_optuna_search(search, out, resume=existing > 0, progress=False)
    table = pd.read_parquet(out / "trials.parquet")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    # a reused result (same model as an earlier trial) trained nothing: it costs no compute
    reused = table["trial"].map(lambda n: trials[n].user_attrs.get("duplicate_of") is not None)
    table["epochs"] = table["trial"].map(lambda n: len(trials[n].intermediate_values))  # one per epoch
    table.loc[reused, ["epochs", "train_seconds"]] = 0
    table["reused"] = reused
    return table


COSTS = ("seconds", "work")


def compute_curve(table: pd.DataFrame, ref, budget: int) -> dict[str, np.ndarray]:
    """After each trial, in order: the hypervolume so far and the compute spent so far, as
    train-seconds, epochs, and ``work`` = epochs x forward FLOPs per image (proportional to the
    training arithmetic, and blind to how loaded the machine was)."""
    from repnas.analysis import hypervolume_history

    t = table.sort_values("trial", kind="stable").reset_index(drop=True)
    return {
        "hv": hypervolume_history(t, OBJECTIVES, ref, budget=budget)["hypervolume"].to_numpy(float),
        "seconds": np.cumsum(t["train_seconds"].fillna(0.0).to_numpy(float)),
        "epochs": np.cumsum(t["epochs"].to_numpy(float)),
        "work": np.cumsum((t["epochs"] * t["flops"].fillna(0.0)).to_numpy(float)),
    }


def hv_at(curve: dict[str, np.ndarray], cost: str, spent: float) -> float:
    """The hypervolume of the front found within ``spent`` units of ``cost``."""
    reached = np.flatnonzero(curve[cost] <= spent * (1 + 1e-9))
    return float(curve["hv"][reached[-1]]) if reached.size else 0.0


def cost_to(curve: dict[str, np.ndarray], cost: str, target: float) -> float:
    """The ``cost`` spent when the front first reached hypervolume ``target`` (inf: never)."""
    hit = np.flatnonzero(curve["hv"] >= target)
    return float(curve[cost][hit[0]]) if hit.size else math.inf


def seed_figures(tables: dict[str, pd.DataFrame], budget: int) -> dict[str, dict[str, float]]:
    """Ratios to ``none`` for one seed, on one reference point shared by the seed's runs."""
    from repnas.analysis import reference_point

    ref = reference_point(list(tables.values()), OBJECTIVES)
    curves = {rule: compute_curve(t, ref, budget) for rule, t in tables.items()}
    base = curves["none"]
    target = 0.95 * base["hv"][-1]
    out = {}
    for rule, curve in curves.items():
        figures = {"final_hv": curve["hv"][-1] / base["hv"][-1], "epochs": curve["epochs"][-1] / base["epochs"][-1]}
        for cost in COSTS:
            equal = min(c[cost][-1] for c in curves.values())
            figures[f"hv_at_equal_{cost}"] = hv_at(curve, cost, equal) / max(hv_at(base, cost, equal), 1e-300)
            figures[f"t95_{cost}"] = cost_to(curve, cost, target) / base[cost][-1]
            figures[f"total_{cost}"] = curve[cost][-1] / base[cost][-1]
        complete = tables[rule]["status"] == "complete"
        figures["best_val"] = float(tables[rule].loc[complete, "val_accuracy"].max())
        figures["pruned"] = int((tables[rule]["status"] == "pruned").sum())
        out[rule] = figures
    return out


def summary(per_seed: dict[int, dict[str, dict[str, float]]], rule: str, key: str) -> str:
    values = [per_seed[s][rule][key] for s in sorted(per_seed)]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "never: " + " ".join("inf" for _ in values)
    mean = statistics.fmean(finite) if len(finite) == len(values) else math.inf
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{mean:.3f} +- {spread:.3f} [" + " ".join(f"{v:.3f}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=default_archive())
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--trials", type=int, default=12, help="trials of the search without stopping")
    parser.add_argument("--max-trials", type=int, default=36,
                        help="most trials a stopping rule gets while it has spent less work than none")
    parser.add_argument("--extend", type=int, default=4, help="trials added per extension")
    parser.add_argument("--epochs", type=int, default=9, help="epochs per trial (rungs at 1 and 3 with eta 3)")
    parser.add_argument("--size", type=int, default=8, help="image side after resizing")
    parser.add_argument("--train", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=1000, help="validation (and test) images")
    parser.add_argument("--budget", type=int, default=12_000)
    parser.add_argument("--out", type=Path, help="keep the run directories here (default: a temp dir); "
                        "runs already there are read, not run again")
    parser.add_argument("--json", type=Path, help="also write the per-seed figures as JSON")
    args = parser.parse_args(argv)
    if not args.archive.exists():
        print(f"early_stop: no CIFAR-10 archive at {args.archive} (give --archive)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    rules = [r for r in args.rules.split(",") if r]
    if "none" not in rules:
        rules.insert(0, "none")
    root = args.out or Path(tempfile.mkdtemp(prefix="early_stop-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"CIFAR-10 {args.size}x{args.size}, {args.train} train / {args.val} val images, space quick, "
          f"budget {args.budget:,}, {args.trials} trials x {args.epochs} epochs, seeds {seeds}, "
          f"torch threads {torch.get_num_threads()}; runs in {root}", flush=True)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    start = time.time()
    for seed in seeds:
        data = load_subset(args.archive, args.size, args.train, args.val, seed)
        tables = {}
        for rule in rules:
            t0 = time.time()
            trials = args.trials
            tables[rule] = t = run_search(rule, seed, args, data, root, trials)
            if rule != "none":  # equal compute: more trials while the rule has spent less than none
                budget = float((tables["none"]["epochs"] * tables["none"]["flops"].fillna(0)).sum())
                while (t["epochs"] * t["flops"].fillna(0)).sum() < budget and trials < args.max_trials:
                    trials += args.extend
                    tables[rule] = t = run_search(rule, seed, args, data, root, trials)
            print(f"seed {seed} {rule:>6}: {len(t)} trials, {int((t['status'] == 'complete').sum())} complete "
                  f"({int(t['reused'].sum())} reused), {int((t['status'] == 'pruned').sum())} pruned, best val "
                  f"{t['val_accuracy'].max():.4f}, train {t['train_seconds'].sum():.1f}s, "
                  f"wall {time.time() - t0:.0f}s", flush=True)
        per_seed[seed] = seed_figures(tables, args.budget)
    print(f"\nall runs: {time.time() - start:.0f}s wall. Ratios to `none` (mean +- std over seeds [per seed]):")
    for key, what in (("hv_at_equal_seconds", "hypervolume at equal train-seconds"),
                      ("t95_seconds", "train-seconds to 95% of none's final hypervolume / none's total"),
                      ("total_seconds", "total train-seconds"),
                      ("hv_at_equal_work", "hypervolume at equal work (epochs x FLOPs)"),
                      ("t95_work", "work to 95% of none's final hypervolume / none's total"),
                      ("total_work", "total work"), ("epochs", "total epochs trained"),
                      ("final_hv", "final hypervolume")):
        print(f"  {what}:")
        for rule in rules:
            print(f"    {rule:>6}  {summary(per_seed, rule, key)}")
    best = {rule: max(per_seed[s][rule]["best_val"] for s in seeds) for rule in rules}
    print("  best val accuracy of any run: " + ", ".join(f"{r} {v:.4f}" for r, v in best.items()))
    if "moasha" in rules:
        t95 = [per_seed[s]["moasha"]["t95_seconds"] for s in seeds]
        mean = statistics.fmean(t95) if all(math.isfinite(v) for v in t95) else math.inf
        verdict = "make moasha the default" if mean <= 0.60 else "keep moasha opt-in"
        print(f"decision (mean moasha t95 ratio {mean:.3f} vs 0.60): {verdict}")
    if args.json:
        args.json.write_text(json.dumps({str(s): v for s, v in per_seed.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
