"""k seeds of one architecture: k models stepped in turn vs one batched model (``torch.func``), in one run.

The paper's tables train every model with several seeds. The GPU queue runs them as separate trials
(``benchmarks/packed_trials.py`` measures k processes at once); the alternative of issue 18.4 is one
process training the k seeds as one model: ``torch.func.stack_module_state`` stacks the k models'
parameters and buffers, ``vmap`` over ``grad`` of a ``functional_call`` runs one forward and backward
for all k (each seed on its own batch), and one ``_foreach`` SGD update steps them all, so every
kernel is launched once for k seeds instead of k times. This script times SGD steps only (no data
loading, start-up or evaluation: those favour the batched model further) and prints, per model and k,
milliseconds per round (one step of every seed) both ways and the speed-up (serial / batched).

Under a ``torch.func`` transform a repeated layer generates its weight with the reference ops (the
fused function and the weight groups are custom autograd Functions without vmap rules), so this
also measures what batching costs the repeated models. BatchNorm's running statistics are stacked
buffers, updated per seed.

    python benchmarks/batched_seeds.py --device cuda --out batched.json
    python benchmarks/batched_seeds.py --device cpu --models vgg4 --seeds 2 --batch-size 16 --steps 3 --image 8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from repnas.spaces import create_model


def serial_round(models: list[nn.Module], opts: list, xs: torch.Tensor, ys: torch.Tensor, cuda: bool):
    """One SGD step of each model, in turn, each on its own batch."""

    def step() -> None:
        for model, opt, x, y in zip(models, opts, xs, ys, strict=True):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def batched_round(models: list[nn.Module], xs: torch.Tensor, ys: torch.Tensor, cuda: bool, lr: float = 0.01):
    """One SGD step of all k models as one vmapped model (momentum, as ``torch.optim.SGD``)."""
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0])  # on the device: a meta copy computes wrong values with parametrized convs
    names = list(params)
    momenta = [torch.zeros_like(params[n]) for n in names]

    def loss_of(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return nn.functional.cross_entropy(functional_call(base, (p, b), (x,)), y)

    grads_of = vmap(grad_and_value(loss_of), in_dims=(0, 0, 0, 0))

    def step() -> None:
        grads, _ = grads_of(params, buffers, xs, ys)
        g = [grads[n] for n in names]
        with torch.no_grad():
            torch._foreach_mul_(momenta, 0.9)
            torch._foreach_add_(momenta, g)
            torch._foreach_add_([params[n] for n in names], momenta, alpha=-lr)

    return step


def median_ms(step, steps: int, warmup: int, cuda: bool) -> float:
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(name: str, k: int, args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = create_model(name).to(device).train()
        models.append(model.to(memory_format=torch.channels_last) if cuda else model)
    xs = torch.randn(k, args.batch_size, 3, args.image, args.image, device=device)
    ys = torch.randint(0, 10, (k, args.batch_size), device=device)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    serial = serial_round(models, opts, xs, ys, cuda)
    batched = batched_round(models, xs, ys, cuda)
    # alternate the two so that drift in the machine's load hits both alike
    t_serial, t_batched = [], []
    for _ in range(args.rounds):
        t_serial.append(median_ms(serial, args.steps, args.warmup, cuda))
        t_batched.append(median_ms(batched, args.steps, args.warmup, cuda))
    ms_serial, ms_batched = statistics.median(t_serial), statistics.median(t_batched)
    return {"model": name, "k": k, "ms_serial": ms_serial, "ms_batched": ms_batched,
            "speedup": ms_serial / ms_batched}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="wrn16_1,vgg6,rep_vgg6", help="comma list")
    p.add_argument("--seeds", default="2,4", help="comma list of k (seeds trained together)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the figures as one JSON file here")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"batched seeds on {name}: batch {args.batch_size} per seed, {args.image}x{args.image} inputs, "
          f"ms per round (one SGD step of every seed)")
    rows = []
    for model in args.models.split(","):
        for k in (int(s) for s in args.seeds.split(",")):
            row = measure(model, k, args, device)
            rows.append(row)
            print(f"  {model:<10} k={k}: in turn {row['ms_serial']:8.1f} ms | batched {row['ms_batched']:8.1f} ms | "
                  f"speed-up {row['speedup']:.2f}x")
    if args.out:
        from repnas._io import atomic_write_text

        record = {"benchmark": "batched_seeds", "device": name, "torch": torch.__version__,
                  "cuda": torch.version.cuda, "batch_size": args.batch_size, "image": args.image,
                  "rows": rows, "ratio": rows[0]["speedup"],
                  "note": "speed-up of one vmapped model over k models stepped in turn (SGD steps only)"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
