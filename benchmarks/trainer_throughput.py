"""Training throughput: the repnas trainer vs a plain torchvision DataLoader loop, in one run.

Both train the same model (``vgg11`` by default) on CIFAR-10 at the same batch size with the same
optimizer (SGD-Nesterov, label smoothing) and, on CUDA, the same bf16 autocast + channels_last:
the difference measured is the input pipeline. repnas keeps the uint8 dataset on the device and
augments whole batches with tensor ops; the baseline is the textbook loop: ``DataLoader`` with
``--workers`` processes running ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize`` per image on PIL images (what ``torchvision.datasets.CIFAR10`` yields).
Both timings start before the first step (worker start-up is a real cost of short trials) and end
after a device synchronise.

Meant for a GPU, where the DataLoader is the bottleneck; on CPU both are compute-bound and the ratio
is near 1. Quick check on CPU:

    .venv/bin/python benchmarks/trainer_throughput.py --device cpu --steps 3 --batch-size 32 \\
        --data-dir ../shared/datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def repnas_images_per_second(args, splits) -> float:
    from repnas.train import RunConfig, train
    from repnas.train._data import Split

    config = RunConfig(
        model=args.model,
        dataset={"name": args.dataset, "data_dir": args.data_dir, "val_fraction": 0.0},
        recipe={"epochs": 1, "steps": args.steps, "batch_size": args.batch_size, "lr": 0.05},
        device=args.device,
    )
    # the final test evaluation is not part of the timing, but keep it short on slow devices
    tiny_test = Split(splits.test.x[:64], splits.test.y[:64])
    result = train(config, data=dataclasses.replace(splits, test=tiny_test), progress=False)
    return float(result["images_per_second"])


class _PilCifar(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) arrays served as PIL images + transforms, like torchvision.datasets.CIFAR10."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        x = x.permute(0, 2, 3, 1)
        self.x = (x[..., 0] if x.shape[-1] == 1 else x).contiguous().numpy()  # PIL: (H, W) for grayscale
        self.y = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


def dataloader_images_per_second(args, splits, device: torch.device) -> float:
    import torchvision.transforms as T

    from repnas.spaces import create_model
    from repnas.train._trainer import channels_last, param_groups

    cuda = device.type == "cuda"
    transform = T.Compose([
        T.RandomCrop(splits.image_size, padding=4),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(splits.mean, splits.std),
    ])
    dataset = _PilCifar(splits.train.x, splits.train.y, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, pin_memory=cuda,
        drop_last=True, persistent_workers=False,
    )
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    model = channels_last(model.to(device)) if cuda else model.to(device)
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    model.train()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    steps = 0
    while steps < args.steps:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast:
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == args.steps:
                break
    if cuda:
        torch.cuda.synchronize(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    default_data = os.environ.get("REPNAS_DATA") or str(shared)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--data-dir", default=default_data, help="cifar10.tar.gz's folder or a torchvision root")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps timed for each pipeline")
    p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes of the baseline")
    p.add_argument("--model", default="vgg11")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (the measurement) or digits (a quick CPU check)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="also write the figures as one JSON file here")
    args = p.parse_args()

    from repnas.train import load_dataset
    from repnas.train._trainer import resolve_device

    device = resolve_device(args.device)
    args.device = str(device)
    splits = load_dataset(args.dataset, data_dir=args.data_dir if args.dataset != "digits" else None,
                          val_fraction=0.0)
    ours = repnas_images_per_second(args, splits)
    theirs = dataloader_images_per_second(args, splits, device)
    row = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dataset": args.dataset,
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "workers": args.workers,
        "repnas_images_per_second": round(ours, 1),
        "dataloader_images_per_second": round(theirs, 1),
        "ratio": round(ours / theirs, 3),
    }
    if args.out:
        from repnas._io import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps({"benchmark": "trainer_throughput", "target": "ratio >= 10",
                                                **row}, indent=1) + "\n")
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{args.model} on {args.dataset}, batch {args.batch_size}, {args.steps} steps, {row['device']}")
        print(f"  repnas trainer (data on device): {ours:10.1f} img/s")
        print(f"  DataLoader ({args.workers} workers) + transforms: {theirs:10.1f} img/s")
        print(f"  ratio: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
