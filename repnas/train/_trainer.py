"""The trainer: short, fast, seeded SGD runs with the whole dataset resident on the device.

Modelled on airbench94: no DataLoader and no workers; images stay uint8 on the device and every
batch is cropped/flipped/rotated by batched tensor ops (``_augment``); bf16 autocast and
channels_last on CUDA (unless ``REPNAS_BF16=0``), plain fp32 with the same semantics on CPU. What one
run does:

1. seed torch, build the model (``repnas.spaces.build_model``) and count params/FLOPs
   (``repnas.rescale.describe``, on CPU before the move to the device);
2. SGD(-Nesterov) with weight decay only on tensors with ``ndim >= 2`` (conv/linear weights and the
   repetition layers' 4-D source templates), never on biases, BatchNorm or the 1-D tile scalars and
   mixing coefficients: decaying those would pull every tile towards zero scale;
3. a one-cycle (triangular, as airbench), cosine or constant LR with a linear warmup, stepped per
   batch through ``LambdaLR``; label-smoothed cross-entropy;
4. after each epoch: validation metrics, a checkpoint (``out_dir/checkpoint.pt``, written
   atomically; ``resume=True`` continues from it bit-identically on CPU) and ``callback(epoch,
   metrics)``, which may return True to stop (the search's pruning);
5. test accuracy once at the end: reported, never used for a decision.

``train_seconds`` is the wall time of the optimisation steps only (augmentation included, evaluation
and checkpoints excluded), so ``images_per_second`` measures the training pipeline itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from repnas._io import atomic_path, atomic_write_text
from repnas.errors import UserError
from repnas.train._augment import AugmentSpec, augment, normalize
from repnas.train._config import RunConfig
from repnas.train._data import DataSplits, Split, load_dataset
from repnas.train._step import make_step, mixed_precision

__all__ = ["TrainResult", "evaluate", "param_groups", "resolve_device", "train"]

Callback = Callable[[int, dict[str, Any]], "bool | None"]
_EVAL_BATCH = 1024
#: the progress bar is updated from the host every this many steps (a tqdm update per step is host
#: work that a GPU step at CIFAR sizes waits for)
_PROGRESS_EVERY = 50
_CHECKPOINT, _METRICS, _CONFIG = "checkpoint.pt", "metrics.json", "config.yaml"


@dataclass
class TrainResult(Mapping[str, Any]):
    """The final metrics (a read-only mapping: ``result["test_accuracy"]``, ``dict(result)``), plus
    the per-epoch ``history`` and the trained ``model`` (on the training device)."""

    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA where available, else CPU; asking for CUDA without one is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    if device.startswith("cuda:") and device[5:].isdigit() and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available")
    return torch.device(device)


def channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D tensors (conv weights) in channels_last, the layout cuDNN's fast NHWC
    kernels want; returns it. ``Module.to(memory_format=torch.channels_last)`` also converts every
    5-D tensor and raises on it ("required rank 4 tensor"), and a repeated model keeps its weight
    banks as 5-D parameters (found on an H200). Those keep their layout: the conv weight built from
    them each step is a new tensor either way."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def train(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    *,
    data: DataSplits | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
    capture: bool | None = None,
    compile: bool | None = None,
) -> TrainResult:
    """Train one :class:`RunConfig` (an object, a dict, or a YAML path) and return its metrics.

    ``data`` reuses already loaded splits (a search loads its dataset once); ``model`` trains a given
    module instead of building ``config.model`` (tests, notebooks). ``callback(epoch, metrics)`` is
    called after every epoch (1-based); returning True stops training there.

    ``capture`` (CUDA graph of the step, default on where CUDA is) and ``compile`` (``torch.compile``,
    default off) are speed switches, not part of the recipe, so they never change a run's
    fingerprint; None takes ``REPNAS_CUDA_GRAPH`` / ``REPNAS_COMPILE`` from the environment
    (``repnas.train._step``).
    """
    cfg = _as_config(config)
    device = resolve_device(cfg.device)
    with _cpu_threads(cfg.threads if device.type == "cpu" else None):
        return _train(cfg, device, out_dir, callback, progress, data, model, resume, capture, compile)


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (None: leave as is), restoring the count after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    cfg: RunConfig,
    device: torch.device,
    out_dir: str | os.PathLike | None,
    callback: Callback | None,
    progress: bool,
    data: DataSplits | None,
    model: nn.Module | None,
    resume: bool,
    capture: bool | None = None,
    compile: bool | None = None,
) -> TrainResult:
    recipe = cfg.recipe
    cuda = device.type == "cuda"
    if data is None:
        data = load_splits(cfg)
    if len(data.train) == 0:
        raise UserError(f"dataset {data.name!r} has no training images")

    torch.manual_seed(cfg.seed)
    if model is None:
        model = _build_model(cfg, data)
    input_shape = (data.in_channels, *data.image_size)
    accounting = _describe(model, input_shape)

    out = Path(out_dir) if out_dir is not None else None
    state = _load_checkpoint(out, cfg, device) if (resume and out is not None) else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / _CONFIG, cfg.to_yaml())

    mixed = mixed_precision(device)  # bf16 autocast + channels_last on CUDA unless REPNAS_BF16=0
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = channels_last(model.to(device)) if mixed else model.to(device)
    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    val = Split(data.val.x.to(device), data.val.y.to(device))  # evaluated every epoch: copy it once
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)
    spec = _augment_spec(recipe, data)

    n = len(train_y)
    batch = min(recipe.batch_size, n)
    steps_per_epoch = n // batch  # the incomplete last batch is dropped: BN dislikes tiny batches
    total_steps = recipe.steps if recipe.steps is not None else recipe.epochs * steps_per_epoch
    total_epochs = math.ceil(total_steps / steps_per_epoch)

    optimizer = torch.optim.SGD(
        param_groups(model, recipe.weight_decay),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
    )
    lr_factor = _lr_lambda(recipe.schedule, recipe.warmup, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    history: list[dict[str, Any]] = []
    step, start_epoch, train_seconds, images_seen = 0, 0, 0.0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        step, start_epoch = state["step"], state["epoch"]
        train_seconds, images_seen = state["train_seconds"], state["images_seen"]
    train_step = make_step(model, optimizer, scheduler, recipe.label_smoothing, device, capture, compile)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", leave=False,
               desc=f"train {data.name}", dynamic_ncols=True)
    stopped_early = False
    try:
        for epoch in range(start_epoch, total_epochs):
            model.train()
            steps = min(steps_per_epoch, total_steps - step)
            order = torch.randperm(n, device=device, generator=generator)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for i in range(steps):
                idx = order[i * batch : (i + 1) * batch]
                x = normalize(augment(train_x[idx], spec, generator), mean, std)
                if mixed:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = train_y[idx]
                loss, logits = train_step(x, y)
                loss_sum += loss.float()
                correct += (logits.argmax(1) == y).sum()
                if (i + 1) % _PROGRESS_EVERY == 0:
                    bar.update(_PROGRESS_EVERY)
            bar.update(steps % _PROGRESS_EVERY)
            if cuda:
                torch.cuda.synchronize(device)
            train_seconds += time.perf_counter() - start
            step += steps
            images_seen += steps * batch
            if not math.isfinite(float(loss_sum)):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch + 1} (loss is not finite); lower recipe.lr"
                )
            val_loss, val_acc = evaluate(model, val, mean, std)
            metrics = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(loss_sum) / max(steps, 1),
                "train_accuracy": float(correct) / max(steps * batch, 1),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "train_seconds": train_seconds,
            }
            history.append(metrics)
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val=f"{val_acc:.3f}")
            if out is not None:
                _save_checkpoint(out, cfg, model, optimizer, scheduler, generator, history, epoch + 1, step,
                                 train_seconds, images_seen, normalization(data))
            if callback is not None and callback(epoch + 1, dict(metrics)):
                stopped_early = True
                break
    finally:
        bar.close()

    test_loss, test_acc = evaluate(model, data.test, mean, std)
    last = history[-1] if history else {}
    metrics = {
        "val_accuracy": last.get("val_accuracy", math.nan),
        "val_loss": last.get("val_loss", math.nan),
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "train_loss": last.get("train_loss", math.nan),
        "train_accuracy": last.get("train_accuracy", math.nan),
        "params": accounting["params"],
        "physical_params": accounting["physical_params"],
        "flops": accounting["flops"],
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if train_seconds > 0 else math.nan,
        "epochs": len(history),
        "steps": step,
        "stopped_early": stopped_early,
        "seed": cfg.seed,
        "dataset": data.name,
        "device": str(device),
    }
    if out is not None:
        atomic_write_text(out / _METRICS, json.dumps({**metrics, "history": history}, indent=2) + "\n")
    return TrainResult(metrics=metrics, history=history, model=model)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on a split, in eval mode; NaN for an empty split."""
    if len(split) == 0:
        return math.nan, math.nan
    device = mean.device
    mixed = mixed_precision(device)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if mixed else nullcontext()
    for xb, yb in zip(split.x.split(_EVAL_BATCH), split.y.split(_EVAL_BATCH), strict=True):
        x = normalize(xb.to(device, non_blocking=True), mean, std)
        if mixed:
            x = x.contiguous(memory_format=torch.channels_last)
        y = yb.to(device, non_blocking=True)
        with autocast:
            logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return float(loss) / len(split), float(correct) / len(split)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: decay on tensors with ``ndim >= 2``, none on biases/BN/tile scalars."""
    params = [p for p in model.parameters() if p.requires_grad]  # shared tensors appear once
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


# ------------------------------------------------------------------------------------- helpers
def _as_config(config: Any) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return RunConfig.from_dict(dict(config))
    if isinstance(config, (str, os.PathLike)):
        return RunConfig.from_yaml(config)
    raise UserError(f"config must be a RunConfig, a mapping or a YAML path, got {type(config).__name__}")


_SPLITS_MEMO: dict[tuple, DataSplits] = {}


def load_splits(cfg: RunConfig) -> DataSplits:
    """``load_dataset`` for a config, memoised in-process (a search trains many models on one dataset)."""
    d = cfg.dataset
    key = (d.name, d.data_dir, d.val_fraction, d.image_size, d.train_subset, d.val_subset, cfg.seed,
           os.environ.get("REPNAS_DATA"))
    if key not in _SPLITS_MEMO:
        if len(_SPLITS_MEMO) >= 2:
            _SPLITS_MEMO.pop(next(iter(_SPLITS_MEMO)))
        _SPLITS_MEMO[key] = load_dataset(d.name, d.data_dir, d.val_fraction, cfg.seed, d.image_size,
                                         train_subset=d.train_subset, val_subset=d.val_subset)
    return _SPLITS_MEMO[key]


def _build_model(cfg: RunConfig, data: DataSplits) -> nn.Module:
    try:
        from repnas.spaces import build_model
    except ImportError as exc:  # pragma: no cover - spaces is part of the package
        raise UserError(f"cannot build models: repnas.spaces is unavailable ({exc})") from None
    return build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)


def _describe(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    from repnas.rescale import describe

    try:
        return describe(model, input_shape)
    except RuntimeError as exc:  # e.g. a family that pools an 8x8 input down to nothing
        raise UserError(
            f"the model cannot run on {input_shape[1]}x{input_shape[2]} inputs ({str(exc).splitlines()[0]}); "
            "set dataset.image_size to a larger size"
        ) from None


def _augment_spec(recipe: Any, data: DataSplits) -> AugmentSpec:
    """The dataset's usual augmentation, overridden by any recipe field that is not null."""
    name, rgb = data.name, data.in_channels == 3
    if name == "rotmnist":
        crop, flip, rot = 0, False, True
    elif name == "digits":
        crop, flip, rot = 1, False, False  # 8x8: one pixel is already an eighth of the image
    elif rgb:
        crop, flip, rot = 4, True, False  # natural images (cifar10/100, RGB image folders)
    else:
        crop, flip, rot = 2, False, False  # MNIST-like: flips change digits' meaning
    return AugmentSpec(
        crop_padding=crop if recipe.crop_padding is None else recipe.crop_padding,
        flip=flip if recipe.flip is None else recipe.flip,
        rotate=rot if recipe.rotate is None else recipe.rotate,
    )


def _lr_lambda(schedule: str, warmup: float, total: int) -> Callable[[int], float]:
    """LR multiplier for the step about to be taken (0-based): linear warmup, then the schedule."""
    warm = round(warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = (step - warm) / max(total - warm, 1)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(1.0 - progress, 0.0)  # onecycle: linear down to (almost) zero, as airbench

    return factor


def normalization(data) -> dict[str, list[float]]:
    """How the model's inputs were scaled: pixels in [0, 1], then ``(x - mean) / std`` per channel
    (the train split's statistics). Kept in the checkpoint, so an exported model says how to feed it."""
    return {"mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std]}


def _save_checkpoint(out: Path, cfg: RunConfig, model, optimizer, scheduler, generator, history, epoch, step,
                     train_seconds, images_seen, inputs: dict[str, list[float]] | None = None) -> None:
    state = {
        "config": cfg.to_dict(),
        "normalization": inputs,
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "train_seconds": train_seconds,
        "images_seen": images_seen,
    }
    with atomic_path(out / _CHECKPOINT) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(out: Path, cfg: RunConfig, device: torch.device) -> dict[str, Any] | None:
    path = out / _CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"cannot resume: {path} is unreadable ({exc})") from None
    saved, now = dict(state.get("config", {})), cfg.to_dict()
    saved.pop("device", None)
    now.pop("device", None)
    if saved != now:
        raise UserError(f"cannot resume: {path} was written by a different config")
    # the device may change between runs, but a CPU generator's state does not fit a CUDA one
    if state["generator"].numel() != torch.Generator(device=device).get_state().numel():
        raise UserError(f"cannot resume: {path} was written on another device type than {device.type}")
    return state
