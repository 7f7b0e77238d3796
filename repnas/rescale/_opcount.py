"""Counting the operators a piece of PyTorch code launches, so that a change that adds kernels is
visible on a machine without a GPU (issue 18: "ops launched per training step").

At CIFAR sizes a GPU step is bound by the host launching kernels, not by arithmetic, so the number
of kernels per step is the figure that predicts GPU step time. A CPU run cannot count CUDA kernels,
but every CUDA kernel is launched by an ATen operator that a CPU run dispatches too, so the count of
*launching* ATen operators is the proxy.

Why a dispatch mode and not the call tree of ``torch.profiler``: the profiler's CPU tree records the
CPU kernels' own internals, which a GPU never runs (``aten::sum`` fills its output first,
``mkldnn_convolution`` shows only ``empty``/``resize_`` children, a ``_foreach_add_`` falls back to
one ``add_`` per tensor), so no rule over that tree counts what CUDA would launch. A
``TorchDispatchMode`` sees each operator once, after autograd and the composite decompositions,
exactly as the backend is asked to run it (forward, the backward autograd runs, the optimizer's
``_foreach`` ops), and nothing inside it. Metadata-only operators (views, allocations) are left out:
they launch no kernel.

Used by ``benchmarks/step_profile.py`` and by ``tests/test_fused_repeat.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["NO_KERNEL_OPS", "count_ops", "training_step_ops", "weight_generation_ops"]

#: ATen operators that only make a new view or allocate: no kernel launch on a GPU.
NO_KERNEL_OPS = frozenset(
    (
        "view", "_unsafe_view", "reshape", "as_strided", "as_strided_", "expand", "t", "transpose",
        "permute", "squeeze", "unsqueeze", "select", "slice", "narrow", "alias", "detach", "lift_fresh",
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_", "split",
        "split_with_sizes", "unbind", "unflatten", "_reshape_alias", "set_", "_local_scalar_dense",
        "is_same_size", "_record_function_enter_new", "_record_function_exit",
        "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "_to_copy_noop",
    )
)


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL_OPS:
            self.counts[f"aten::{name}"] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> Counter[str]:
    """Launching ATen operators of one call of ``fn`` (name -> count).

    ``fn`` should run everything to be counted (e.g. forward, ``backward()`` and the optimizer step);
    it runs once uncounted first, so lazily created state (optimizer buffers) is not counted.
    """
    fn()
    with _Counter() as counter:
        fn()
    return counter.counts


def training_step_ops(model: torch.nn.Module, batch: int = 2, image: int = 32, in_channels: int = 3) -> Counter[str]:
    """Launching operators of one SGD training step (forward, loss, backward, Nesterov update) of
    ``model`` on a random batch, gradients set to None before each step as the trainer does."""
    model.train()
    x = torch.randn(batch, in_channels, image, image)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return count_ops(step)


def weight_generation_ops(model: torch.nn.Module) -> Counter[str]:
    """Launching operators of generating every repeated layer's weight once and back-propagating a
    fixed gradient through it: what repetition adds to a step, and nothing else. The weights come
    from the model's weight groups where those serve (``_group``), as in a forward."""
    from repnas.rescale._apply import repeated_layers
    from repnas.rescale._group import generated_together

    params = [p for _, _, p in repeated_layers(model)]
    leaves = [t for t in model.parameters()]
    grads = [torch.ones(p.target_shape) for p in params]

    def generate() -> None:
        for t in leaves:
            t.grad = None
        with generated_together(model):
            weights = [p() for p in params]
        torch.autograd.backward(weights, grads)

    return count_ops(generate)
