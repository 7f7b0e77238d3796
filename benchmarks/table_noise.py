"""How noisy is a recorded table? The spread between its seeds, per model.

A search strategy compared on a table (issue 28) cannot be told apart from another by less than the
table's own noise: the same model trained with another seed. This prints, over the models that every
seed of the table holds, the absolute difference of final validation accuracy between two seeds
(median, 90th percentile, max), their rank correlation, and how often the two seeds agree on which
models are on the (val accuracy max, params min, FLOPs min) Pareto front.

    python benchmarks/table_noise.py benchmarks/tables/quick-cifar10-8px.parquet [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from repnas.analysis import pareto_mask
from repnas.search import read_table

OBJECTIVES = [{"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"},
              {"name": "flops", "direction": "minimize"}]


def front(rows: pd.DataFrame) -> set[str]:
    """The model keys on the front of (val accuracy max, params min, FLOPs min)."""
    return set(rows["model_key"][pareto_mask(rows.assign(status="complete"), OBJECTIVES)])


def noise(path: Path) -> dict:
    info, table = read_table(path)
    seeds = sorted(table["seed"].unique())
    if len(seeds) < 2:
        raise SystemExit(f"{path}: one seed only ({seeds}); the spread needs two")
    first, second = (table[table["seed"] == s].set_index("model_key") for s in seeds[:2])
    both = first.index.intersection(second.index)
    a, b = first.loc[both, "val_accuracy"], second.loc[both, "val_accuracy"]
    diff = (a - b).abs()
    front_a, front_b = front(first.loc[both].reset_index()), front(second.loc[both].reset_index())
    return {
        "table": str(path), "space": info.space_name, "seeds": [int(s) for s in seeds[:2]], "models": len(both),
        "epochs": info.epochs,
        "val_accuracy": {"min": float(pd.concat([a, b]).min()), "median": float(pd.concat([a, b]).median()),
                         "max": float(pd.concat([a, b]).max())},
        "seed_abs_diff": {"median": float(diff.median()), "p90": float(diff.quantile(0.9)), "max": float(diff.max())},
        "spearman": float(a.rank().corr(b.rank())),
        "front_sizes": [len(front_a), len(front_b)],
        "front_jaccard": len(front_a & front_b) / max(1, len(front_a | front_b)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = noise(args.table)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
