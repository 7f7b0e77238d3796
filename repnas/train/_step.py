"""One training step, eager or replayed from a CUDA graph (issue 18.2).

At CIFAR sizes a GPU step waits for the host: Python for every module, a dispatch per kernel, the
optimizer's per-group loops. A CUDA graph records the kernels of forward, backward and the SGD update
once and replays them with one launch, so the host's work per step no longer grows with the model.

* :class:`EagerStep` is the step as the trainer always ran it (CPU, MPS, and every fallback).
* :class:`GraphStep` captures it after warm-up on CUDA: static input/label buffers that each step
  copies its batch into, the LR as a 0-dim device tensor written before each replay, and an SGD
  update written with ``_foreach`` ops whose LR is that tensor (torch's SGD turns a tensor LR into a
  host scalar, which a capture cannot contain). The momentum buffers are the optimizer's own, so
  checkpoints and resumes are unchanged. Augmentation stays outside the graph (its random state is
  the trainer's generator, consumed exactly as eagerly).

:func:`make_step` picks: a graph where it can (CUDA, ``capture`` not False), else eager; a capture
that fails falls back to eager with one log line saying why. ``compile=True`` wraps the model in
``torch.compile`` (off by default: its compile seconds must pay back within a trial). Neither switch
is a recipe field, so neither enters the fingerprint of a committed run; both default from the
environment (``REPNAS_CUDA_GRAPH=0`` disables capture, ``REPNAS_COMPILE=1`` enables compile), as does
bf16 autocast with channels_last (:func:`mixed_precision`, ``REPNAS_BF16=0`` disables it).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("repnas.train")

__all__ = ["EagerStep", "GraphStep", "make_step", "mixed_precision", "switches"]


def switches(capture: bool | None = None, compile: bool | None = None) -> tuple[bool, bool]:
    """(capture, compile) from the arguments, else from the environment (capture on, compile off)."""
    if capture is None:
        capture = os.environ.get("REPNAS_CUDA_GRAPH", "1") != "0"
    if compile is None:
        compile = os.environ.get("REPNAS_COMPILE", "0") == "1"
    return capture, compile


def mixed_precision(device: torch.device) -> bool:
    """Whether the trainer runs bf16 autocast and channels_last on ``device``: on CUDA, unless
    ``REPNAS_BF16=0`` (the GPU procedure's self-check sets it when that path disagrees with fp32;
    then a run trains in fp32, contiguous)."""
    return device.type == "cuda" and os.environ.get("REPNAS_BF16", "1") != "0"


class EagerStep:
    """forward, loss, backward, optimizer and LR step; returns (loss, logits) detached, no sync."""

    kind = "eager"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 label_smoothing: float, autocast: Any):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.label_smoothing, self.autocast = label_smoothing, autocast

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()


class GraphStep(EagerStep):
    """The same step replayed from a CUDA graph after ``warmup`` eager steps."""

    kind = "cuda-graph"

    def __init__(self, *args: Any, warmup: int = 3, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.warmup, self.calls, self.graph = warmup, 0, None
        self.failed: str | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if self.graph is None and (self.failed or self.calls <= self.warmup):
            return super().__call__(x, y)
        if self.graph is None:
            try:
                self._capture(x, y)
            except Exception as exc:  # anything uncapturable: eager for the rest of the run
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.graph = None
                log.warning("CUDA graph capture failed (%s); training eagerly", self.failed)
                torch.cuda.synchronize()
                return super().__call__(x, y)
        self.static_x.copy_(x, non_blocking=True)
        self.static_y.copy_(y, non_blocking=True)
        lrs = self.scheduler.get_last_lr()
        for t, lr in zip(self.lr, lrs, strict=True):
            t.fill_(lr)
        self.graph.replay()
        self.scheduler.step()
        return self.static_loss.clone(), self.static_logits.clone()

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD's update (weight decay, momentum, dampening 0, Nesterov) with the LR a
        device tensor; the momentum buffers exist after the eager warm-up steps."""
        for group, lr in zip(self.optimizer.param_groups, self.lr, strict=True):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum:
                bufs = [self.optimizer.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            torch._foreach_add_(params, torch._foreach_mul(grads, lr), alpha=-1.0)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        device = x.device
        self.static_x, self.static_y = x.clone(), y.clone()
        self.lr = [torch.tensor(float(g["lr"]), device=device) for g in self.optimizer.param_groups]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                with self.autocast:
                    logits = self.model(self.static_x)
                    loss = F.cross_entropy(logits, self.static_y, label_smoothing=self.label_smoothing)
                loss.backward()
                self._sgd()
                self.static_loss, self.static_logits = loss.detach(), logits.detach()
        torch.cuda.current_stream(device).wait_stream(side)
        # the capture recorded this step's kernels without running them: the caller replays


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, label_smoothing: float,
              device: torch.device, capture: bool | None = None, compile: bool | None = None) -> EagerStep:
    """The trainer's step for ``device``: a CUDA graph where possible, else eager (see module doc)."""
    capture, compile = switches(capture, compile)
    cuda = device.type == "cuda"
    mixed = mixed_precision(device)
    if compile:
        from repnas.rescale import prepare_weight_groups

        # the weight groups' index tensors made now, not traced into the first graph (a recompile)
        prepare_weight_groups(model, device, torch.channels_last if mixed else torch.contiguous_format)
        model = torch.compile(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if mixed else nullcontext()
    if capture and cuda and not compile:
        return GraphStep(model, optimizer, scheduler, label_smoothing, autocast)
    if capture and cuda and compile:
        log.info("CUDA graph capture off: torch.compile is on (use its mode='reduce-overhead' instead)")
    return EagerStep(model, optimizer, scheduler, label_smoothing, autocast)

