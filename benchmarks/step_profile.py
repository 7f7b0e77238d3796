"""Operators launched per training step, plain vs repeated, so a change that adds kernels is visible
without a GPU (issue 18.5).

At CIFAR sizes a GPU step waits for the host to launch its kernels, so kernels per step predict the
GPU step time better than any CPU timing. For each pair (repeated model, the plain model of the same
physical shape) this prints the launching ATen operators of one SGD step (forward, loss, backward,
Nesterov update; counted by ``repnas.rescale._opcount``, see there why a dispatch mode and not the
profiler's CPU tree) and, for the repeated model, those of weight generation alone (every repeated
layer's weight once, and its backward).

    python benchmarks/step_profile.py                      # the table
    python benchmarks/step_profile.py --top 8 --out ops.json

The counts do not depend on the device or the batch (one op is one kernel launch, whatever its size),
so a CPU run gives the GPU's figure; ``_foreach`` optimizer ops count once, as on CUDA. Steps are
counted with the weight generation a GPU runs (the model-wide groups of ``repnas.rescale._group``
over the fused function); weight generation alone is also counted per layer (fused) and with the
reference ops (the CPU default), so the three can be compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from repnas.rescale import RepeatWeight
from repnas.rescale._group import WeightGroup
from repnas.rescale._opcount import training_step_ops, weight_generation_ops
from repnas.spaces import create_model

PAIRS = [("rep_vgg6", "vgg11"), ("rep_wrn16_4", "wrn16_4")]
#: weight generation ops at f87819d, before the fused weight (this script's first run)
BEFORE = {"rep_vgg6": 113, "rep_wrn16_4": 315}


def profile_pair(rep_name: str, plain_name: str, image: int = 32) -> dict:
    """Op counts of one pair: steps of both models and the repeated model's weight generation."""
    torch.manual_seed(0)
    rep, plain = create_model(rep_name), create_model(plain_name)
    # groups over the fused weight are what a GPU runs (on a CPU the reference is the default)
    defaults = RepeatWeight.use_fused, WeightGroup.enabled
    try:
        RepeatWeight.use_fused = False
        gen_reference = weight_generation_ops(rep)
        RepeatWeight.use_fused, WeightGroup.enabled = True, False
        gen_per_layer = weight_generation_ops(rep)
        WeightGroup.enabled = True
        step_rep, step_plain = training_step_ops(rep, image=image), training_step_ops(plain, image=image)
        gen = weight_generation_ops(rep)
    finally:
        RepeatWeight.use_fused, WeightGroup.enabled = defaults
    return {
        "repeated": rep_name, "plain": plain_name,
        "step_ops_repeated": sum(step_rep.values()), "step_ops_plain": sum(step_plain.values()),
        "step_ratio": sum(step_rep.values()) / sum(step_plain.values()),
        "weight_generation_ops": sum(gen.values()),
        "weight_generation_ops_per_layer": sum(gen_per_layer.values()),
        "weight_generation_ops_reference": sum(gen_reference.values()),
        "weight_generation_by_op": dict(gen.most_common()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5, help="also list the N most frequent ops of weight generation")
    parser.add_argument("--out", type=Path, help="also write the figures as one JSON file here")
    parser.add_argument("--pair", action="append", choices=[r for r, _ in PAIRS],
                        help="only this repeated model's pair (repeatable; default: every pair)")
    parser.add_argument("--image", type=int, default=32, help="input size (the counts do not depend on it)")
    parser.add_argument("--device", default="cpu",
                        help="accepted for the GPU procedure; counting runs on the CPU (counts are device-free)")
    args = parser.parse_args(argv)
    pairs = [p for p in PAIRS if not args.pair or p[0] in args.pair]
    rows = [profile_pair(rep, plain, args.image) for rep, plain in pairs]
    print(f"{'repeated':<12} {'ops/step':>8} | {'plain':<8} {'ops/step':>8} | {'ratio':>5} | "
          "weight generation ops: grouped (per layer fused, reference)")
    for r in rows:
        by_op = list(r["weight_generation_by_op"].items())[: args.top]
        top = ", ".join(f"{k.removeprefix('aten::')} {v}" for k, v in by_op)
        print(f"{r['repeated']:<12} {r['step_ops_repeated']:>8} | {r['plain']:<8} {r['step_ops_plain']:>8} | "
              f"{r['step_ratio']:>5.2f} | {r['weight_generation_ops']} "
              f"({r['weight_generation_ops_per_layer']}, {r['weight_generation_ops_reference']}): {top}")
    record = {"benchmark": "step_profile", "torch": torch.__version__, "pairs": rows,
              "target": "weight generation ops at most half of f87819d's (rep_vgg6 113, rep_wrn16_4 315)",
              "ratio": max(r["weight_generation_ops"] / BEFORE[r["repeated"]] for r in rows)}
    if args.out:
        from repnas._io import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
