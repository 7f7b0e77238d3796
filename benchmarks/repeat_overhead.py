"""What does learnable repetition cost per training step?

Times a forward+backward+SGD step of a repeated model against the plain model of the same physical
shape, in one run, and prints the ratio (repeated / plain):

    rep_vgg6    vs vgg11     (depth repetition: VGG11's shape from VGG6's parameters)
    rep_wrn16_4 vs wrn16_4   (width repetition: WRN-16-4's shape from WRN-16-1's parameters)

    python benchmarks/repeat_overhead.py --device cuda --batch-size 256      # the number that matters
    python benchmarks/repeat_overhead.py --device cpu --batch-size 32 --steps 5
    python benchmarks/repeat_overhead.py --out results.json   # also one JSON (GPU name, torch version)
    python benchmarks/repeat_overhead.py --host --device cpu  # batch 2, 8x8 inputs: host work per step

``--host`` (issue 18.5) makes the arithmetic negligible (8x8 inputs, batch 2: the issue asks for 1,
but BatchNorm in train mode refuses one value per channel, which VGG's 1x1 maps at the end of an
8x8 input give) so what is timed is the host's work per step: Python, dispatch and kernel launches,
the part of a GPU step at CIFAR sizes that does not shrink with a faster GPU. The target is
repeated / plain <= 1.3x. It is timed as the process's CPU time (``time.process_time``), which
other processes on a loaded machine do not inflate. On a CPU the arithmetic is not quite ~0 for a
model whose physical weight is large (VGG11's 9.4M: the optimizer and the weight generation pass
over it several times per step); ``--device meta`` runs the same step on shape-only tensors, which
leaves exactly the host's work (dispatch, autograd, Python; meta kernels are partly Python, so the
absolute milliseconds are higher than a GPU's host cost), and by default with the weight generation
a GPU runs (``--weights group``), so it is the CPU's view of a GPU step's host work.

Timing: the two models alternate per round (``--rounds`` blocks of ``--steps`` steps, caches warm
within a block, as in training); with ``--host`` they take turns every step instead
(``--every-step``), which holds the ratio steady against a shared machine's drift where the
arithmetic, and so the caches, do not matter.

``--weights`` picks how repeated weights are generated: ``default`` (what the device runs: the
model-wide group of ``repnas.rescale._group`` on CUDA and meta, the reference ops on a CPU),
``reference``, ``fused`` (one fused function per layer) or ``group``.

On CUDA it uses bf16 autocast and channels_last (as the trainer does). The extra work of a repeated
layer is generating its weight (a repeat and a few elementwise ops over the physical weight) once per
step, plus the backward of that; it does not grow with the batch, so the ratio falls as the batch grows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from repnas.rescale import RepeatWeight, count_params
from repnas.rescale._group import WeightGroup
from repnas.spaces import create_model
from repnas.train._trainer import channels_last

PAIRS = [("rep_vgg6", "vgg11"), ("rep_wrn16_4", "wrn16_4")]


def make_step(model: nn.Module, batch: int, device: torch.device, image: int = 32):
    """One training step (forward, backward, SGD update) of ``model`` as a function, on a fixed batch."""
    model = model.to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model = channels_last(model)
    x = torch.randn(batch, 3, image, image, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def paired_step_seconds(step_fns: list, device: torch.device, steps: int, warmup: int, rounds: int,
                        clock=time.perf_counter, every_step: bool = False) -> list[float]:
    """Median step time of each function. The models take turns so that drift in the machine's
    load (a shared 2-core VM has plenty) hits all alike: ``rounds`` blocks of ``steps`` steps each
    (a model's caches stay warm within a block, as in training), or, with ``every_step``, one step
    each in turn, the order reversed every turn (finer against drift, but every step starts with
    the other model's data in the caches: for host work, where the arithmetic is ~0, not for
    arithmetic-bound figures)."""
    cuda = device.type == "cuda"
    times: list[list[float]] = [[] for _ in step_fns]

    def timed(k: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        step_fns[k]()
        if cuda:
            torch.cuda.synchronize()
        return clock() - t0

    if every_step:
        for turn in range(warmup + rounds * steps):
            for k in list(range(len(step_fns)))[:: 1 if turn % 2 == 0 else -1]:
                t = timed(k)
                if turn >= warmup:
                    times[k].append(t)
        return [statistics.median(t) for t in times]
    for _ in range(rounds):
        for k in range(len(step_fns)):
            block = [timed(k) for _ in range(warmup + steps)][warmup:]
            times[k].append(statistics.median(block))
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the two models this many times")
    parser.add_argument("--every-step", action=argparse.BooleanOptionalAction, default=None,
                        help="the models take turns every step (default: with --host only)")
    parser.add_argument("--out", type=Path, help="also write the figures as one JSON file here")
    parser.add_argument("--pair", action="append", choices=[r for r, _ in PAIRS],
                        help="only this repeated model's pair (repeatable; default: every pair)")
    parser.add_argument("--host", action="store_true",
                        help="host work per step: batch 2, 8x8 inputs (overrides --batch-size)")
    parser.add_argument("--weights", choices=["default", "reference", "fused", "group"], default="default",
                        help="how repeated weights are generated (default: as the device runs them; meta: as CUDA)")
    args = parser.parse_args()
    weights = args.weights
    if weights == "default":
        weights = "reference" if args.device == "cpu" else "group"
    RepeatWeight.use_fused = weights != "reference"
    WeightGroup.enabled = weights == "group"
    image = 8 if args.host else 32
    # host work is CPU time: the process's, so that other processes on a loaded machine do not count
    clock = time.process_time if args.host else time.perf_counter
    if args.host:
        args.batch_size = 2
    device = torch.device(args.device)
    every_step = args.host if args.every_step is None else args.every_step
    torch.manual_seed(0)
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else f"{device.type} ({torch.get_num_threads()} threads)")
    print(f"device {name}, batch {args.batch_size}, {image}x{image} inputs, weights {weights}, "
          f"median of {args.rounds} x {args.steps} steps, "
          + ("the two models taking turns every step" if every_step else "the two models alternating per round"))
    print(f"{'repeated':<12} {'params':>10} {'ms/step':>9} | {'plain':<8} {'params':>10} {'ms/step':>9} | ratio")
    rows = []
    for rep_name, plain_name in [p for p in PAIRS if not args.pair or p[0] in args.pair]:
        rep, plain = create_model(rep_name), create_model(plain_name)
        t_plain, t_rep = paired_step_seconds(
            [make_step(plain, args.batch_size, device, image), make_step(rep, args.batch_size, device, image)],
            device, args.steps, args.warmup, args.rounds, clock, every_step)
        print(
            f"{rep_name:<12} {count_params(rep):>10,} {1e3 * t_rep:>9.1f} | {plain_name:<8} "
            f"{count_params(plain):>10,} {1e3 * t_plain:>9.1f} | {t_rep / t_plain:.3f}x"
        )
        rows.append({"repeated": rep_name, "plain": plain_name, "params_repeated": count_params(rep),
                     "params_plain": count_params(plain), "ms_repeated": 1e3 * t_rep, "ms_plain": 1e3 * t_plain,
                     "ratio": t_rep / t_plain})
    if args.out:
        from repnas._io import atomic_write_text

        record = {"benchmark": "repeat_overhead_host" if args.host else "repeat_overhead", "device": name,
                  "weights": weights, "torch": torch.__version__,
                  "cuda": torch.version.cuda, "batch_size": args.batch_size, "steps": args.steps,
                  "rounds": args.rounds, "image": image,
                  "target": "ratio <= 1.3" if args.host else "ratio <= 1.05", "pairs": rows,
                  "ratio": max(r["ratio"] for r in rows)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
