"""Packed trials: the same short trial run one after another vs k at once on one device, in one run.

A trial is what a search or the experiment queue starts: a separate process running ``repnas train
MODEL`` (start-up, data load, model build and FLOP count, the training steps, evaluation). One small
CIFAR model leaves an H100 mostly idle, so k such processes at once should finish more trials per
hour. Printed per model: seconds of ``--trials`` trials serially, seconds of k trials at once for each
k in ``--packs``, and trials per hour relative to serial (the speed-up; ``ratio`` = the first model at
the largest k, the issue's "4 at once vs serial", target >= 3x).

The GPU session (``python -m repnas.experiments gpu``) packs its queue by this measurement: a model
runs as many at once as gave the most trials per hour for the lightest benchmarked model with at
least its FLOPs per image (``repnas/experiments/_gpu.py``, ``pack_of``), hence two models of different
weight by default.

    python benchmarks/packed_trials.py --device cuda --data-dir .data --out packed.json
    python benchmarks/packed_trials.py --device cpu --dataset digits --models vgg4 --steps 2 --trials 2 --packs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def trial_command(args, model: str) -> list[str]:
    length = ["--steps", str(args.steps)] if args.steps else ["--epochs", str(args.epochs)]
    data = ["--data-dir", args.data_dir] if args.data_dir and args.dataset != "digits" else []
    threads = ["--threads", "1"] if args.device == "cpu" else []  # k CPU processes must not oversubscribe
    return [sys.executable, "-m", "repnas", "train", model, "--dataset", args.dataset, "--device", args.device,
            "--quiet", "--json", *length, *data, *threads]


def run_at_once(commands: list[list[str]], env: dict[str, str]) -> float:
    """Start all ``commands`` together; seconds until the last one ends (each must succeed)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for c in commands]
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            tail = (err or out).decode(errors="replace").strip().splitlines()[-1:]
            raise SystemExit(f"packed_trials: a trial failed (exit {proc.returncode}): {tail}")
    return time.perf_counter() - start


def measure(args, model: str, env: dict[str, str]) -> dict:
    command = trial_command(args, model)
    serial = sum(run_at_once([command], env) for _ in range(args.trials))
    row = {"model": model, "serial_trials": args.trials, "serial_seconds": round(serial, 2), "concurrent": {},
           "trials_per_hour": {"1": round(3600 * args.trials / serial, 1)}, "speedup": {"1": 1.0}}
    for k in args.packs:
        seconds = run_at_once([command] * k, env)
        row["concurrent"][str(k)] = round(seconds, 2)
        row["trials_per_hour"][str(k)] = round(3600 * k / seconds, 1)
        row["speedup"][str(k)] = round((k / seconds) / (args.trials / serial), 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=os.environ.get("REPNAS_DATA"))
    p.add_argument("--models", default="vgg6,vgg11", help="comma list, light to heavy")
    p.add_argument("--epochs", type=int, default=1, help="epochs of one trial")
    p.add_argument("--steps", type=int, help="steps of one trial (overrides --epochs)")
    p.add_argument("--trials", type=int, default=4, help="trials run serially")
    p.add_argument("--packs", default="2,4,8",
                   help="comma list of how many trials run at once (k = 1 is the serial run)")
    p.add_argument("--out", type=Path, help="also write the figures as one JSON file here")
    args = p.parse_args()
    args.packs = [int(k) for k in args.packs.split(",")]

    from repnas.rescale import count_flops
    from repnas.spaces import create_model, dataset_info
    from repnas.train import load_dataset

    # decode (and cache) the dataset once, outside the timings: every trial then reads the cache
    load_dataset(args.dataset, data_dir=args.data_dir if args.dataset != "digits" else None)
    info = dataset_info(args.dataset)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    length = f"{args.steps} steps" if args.steps else f"{args.epochs} epoch(s)"
    print(f"packed trials on {name}: {args.trials} serial vs {args.packs} at once, {length} of {args.dataset} each")
    rows = []
    for model in args.models.split(","):
        row = measure(args, model, env)
        row["flops"] = int(count_flops(create_model(model, num_classes=info.num_classes,
                                                    in_channels=info.in_channels), info.input_shape))
        best = max(row["speedup"], key=lambda k: row["speedup"][k])
        row["best_k"] = int(best)
        rows.append(row)
        print(f"  {model:<8} serial {row['serial_seconds']:7.1f} s for {args.trials}; " + "; ".join(
            f"{k} at once {row['concurrent'][str(k)]:6.1f} s = {row['speedup'][str(k)]:.2f}x" for k in args.packs))
    ratio = rows[0]["speedup"][str(max(args.packs))]
    print(f"ratio ({rows[0]['model']}, {max(args.packs)} at once vs serial, trials per hour): {ratio:.2f}x")
    if args.out:
        from repnas._io import atomic_write_text

        record = {"benchmark": "packed_trials", "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "dataset": args.dataset, "epochs": None if args.steps else args.epochs, "steps": args.steps,
                  "trial": " ".join(trial_command(args, "MODEL")[1:]), "models": rows, "ratio": ratio,
                  "target": "ratio >= 3"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
