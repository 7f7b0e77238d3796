"""Whole-model weight generation (``repnas.rescale._group``, issue 18): one autograd call for every
eligible repeated layer of a model gives the reference's weights and gradients, serves only inside
the model's forward, and launches a fixed number of operators however many layers there are."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from repnas.rescale import RepeatWeight, materialize, repeated_layers, rescale
from repnas.rescale._group import WeightGroup, generated_together, model_groups
from repnas.rescale._opcount import training_step_ops, weight_generation_ops
from repnas.spaces import create_model


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.ReLU(),
        nn.Conv2d(12, 14, 3, padding=1), nn.ReLU(),
        nn.Conv2d(14, 14, 3, padding=1), nn.ReLU(),
        nn.Conv2d(14, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, (1, 3), padding=(0, 1)), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def _plan(remainder: str) -> dict:
    """Whole tiles (r1 = 1, a grouped conv), a rank-2 bank with remainders on both sides, a borrower
    of the bank member, and two ``linear`` layers (a second group), one with a non-square kernel."""
    return {"version": 2, "remainder": remainder, "banks": {"b": {"out": 4, "in": 4, "rank": 2}},
            "layers": {"0": {"own": [4, 4]}, "2": {"own": [4, 2]}, "4": {"bank": "b"}, "6": {"borrow": "4"},
                       "8": {"own": [8, 7], "map": "linear"}, "10": {"own": [16, 8], "map": "linear"}}}


def _repeated(remainder: str) -> nn.Module:
    torch.manual_seed(0)
    model = rescale(_model(), _plan(remainder)).double()
    with torch.no_grad():  # scalars away from their init, so every map really bends
        for _, _, rep in repeated_layers(model):
            for p in (rep.alpha, rep.beta):
                if p is not None:
                    p.copy_(torch.randn(p.shape, dtype=torch.float64))
    return model


def _output_and_grads(model: nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("remainder", ["paper", "source"])
def test_groups_give_the_reference_outputs_and_gradients(remainder, monkeypatch):
    model = _repeated(remainder)
    groups = sorted(model_groups(model), key=lambda g: g.rows)
    # the paper rule's remainders (maps of maps) keep the per-layer function; the source rule's join
    assert [len(g.layers) for g in groups] == [2, 4 if remainder == "source" else 2]
    served = []
    monkeypatch.setattr(WeightGroup, "weight", _spy(WeightGroup.weight, served))
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    monkeypatch.setattr(RepeatWeight, "use_fused", False)
    out_r, grads_r = _output_and_grads(model, x)
    assert not served  # the reference path never asks a group
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    monkeypatch.setattr(WeightGroup, "enabled", True)
    out_g, grads_g = _output_and_grads(model, x)
    assert len(served) == sum(len(g.layers) for g in groups)  # every member, once per forward
    assert (out_g - out_r).abs().max().item() <= 1e-12
    assert grads_g.keys() == grads_r.keys() and len(grads_g) >= 14
    for name in grads_g:
        scale = max(1.0, grads_r[name].abs().max().item())
        assert (grads_g[name] - grads_r[name]).abs().max().item() <= 1e-12 * scale, name
    assert max(g.abs().max().item() for g in grads_g.values()) > 0.1


def _spy(fn, calls: list):
    def wrapper(self, layer, *args):
        calls.append(layer)
        return fn(self, layer, *args)
    return wrapper


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_group_function_passes_gradcheck(memory_format):
    from repnas.rescale._group import _GroupRepeat

    model = _repeated("source")
    for group in model_groups(model):
        sources = [bank.templates.detach().clone().requires_grad_() if c is None else
                   bank.mix(c).detach().clone().requires_grad_() for bank, c in group.sources]
        scalars = [la.alpha.detach().clone().requires_grad_() for la in group.layers]
        if group.rows == 2:
            scalars += [la.beta.detach().clone().requires_grad_() for la in group.layers]

        def fn(*xs, group=group):
            return _GroupRepeat.apply(group, torch.float64, memory_format, *xs)

        assert torch.autograd.gradcheck(fn, (*sources, *scalars), eps=1e-6, atol=1e-8)


def test_group_writes_the_dtype_and_layout_the_conv_reads(monkeypatch):
    """bf16 channels_last (what CUDA autocast's conv reads) equals the per-layer fused emission
    bitwise: the same ops on the same numbers, only gathered instead of broadcast."""
    monkeypatch.setattr(WeightGroup, "enabled", True)
    model = _repeated("source").float()
    for group in model_groups(model):
        with generated_together(model):
            weights = [group.weight(la, torch.bfloat16, torch.channels_last) for la in group.layers]
        for layer, w in zip(group.layers, weights, strict=True):
            assert w.dtype == torch.bfloat16 and w.is_contiguous(memory_format=torch.channels_last)
            assert w.shape == layer.target_shape
            assert w.equal(layer.emit(memory_format=torch.channels_last, dtype=torch.bfloat16))


def test_a_layer_whose_weight_is_unused_gets_zero_gradients(monkeypatch):
    monkeypatch.setattr(WeightGroup, "enabled", True)
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    model = _repeated("source")
    group = next(g for g in model_groups(model) if g.rows == 2)
    first, last = group.layers[0], group.layers[-1]
    with generated_together(model):
        w = first()
    (d_first,) = torch.autograd.grad(w.sum(), [first.bank.templates])
    (d_ref,) = torch.autograd.grad(first.reference().sum(), [first.bank.templates])
    assert (d_first - d_ref).abs().max().item() <= 1e-12
    with generated_together(model):
        w = last()
    (d_first_alpha,) = torch.autograd.grad(w.sum(), [first.alpha], allow_unused=True)
    assert d_first_alpha is not None and d_first_alpha.abs().max().item() == 0.0


def test_groups_serve_only_inside_the_models_forward(monkeypatch):
    monkeypatch.setattr(WeightGroup, "enabled", True)
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    model = _repeated("source")
    served: list = []
    monkeypatch.setattr(WeightGroup, "weight", _spy(WeightGroup.weight, served))
    conv = model[0]
    assert conv.weight.shape == (12, 4, 3, 3)  # read outside a forward: the per-layer function
    conv(torch.randn(1, 4, 3, 3, dtype=torch.float64))  # a layer called on its own: the same
    assert not served

    def broken(module, args):
        raise RuntimeError("a forward that fails")

    handle = model[3].register_forward_pre_hook(broken)
    with pytest.raises(RuntimeError, match="a forward that fails"):
        model(torch.randn(1, 4, 3, 3, dtype=torch.float64))
    handle.remove()
    assert served and not any(g._active or g._weights is not None for g in model_groups(model))
    served.clear()
    assert conv.weight.shape == (12, 4, 3, 3)
    assert not served  # the failed forward left no group switched on, and no stale weights


@pytest.mark.skipif(bool(os.environ.get("REPNAS_WEIGHT_GROUP")), reason="REPNAS_WEIGHT_GROUP is set")
def test_on_a_cpu_groups_stay_off_by_default():
    """The CPU default is the reference ops (bitwise the committed CPU runs); groups are for CUDA."""
    model = _repeated("source")
    assert WeightGroup.enabled is None and RepeatWeight.use_fused is None
    with generated_together(model):
        assert model_groups(model) and not any(g.serves() for g in model_groups(model))


def test_copies_and_materialized_models(monkeypatch):
    monkeypatch.setattr(WeightGroup, "enabled", True)
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    model = _repeated("source")
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    out = model(x)
    twin = copy.deepcopy(model)
    twin_groups = model_groups(twin)
    assert len(twin_groups) == 2
    assert all(la is not orig for g, h in zip(twin_groups, model_groups(model), strict=True)
               for la, orig in zip(g.layers, h.layers, strict=True))
    assert twin(x).equal(out)
    with torch.no_grad():
        twin[0].parametrizations.weight[0].alpha.add_(1.0)  # the copy's layers are its own
    assert not twin(x).equal(out) and model(x).equal(out)
    plain = materialize(model)
    assert not plain._forward_pre_hooks and not plain._forward_hooks and not model_groups(plain)
    assert (plain(x) - out).abs().max().item() <= 1e-12
    assert model(x).equal(out)  # materializing left the original's groups working


@pytest.mark.parametrize(("name", "plain"), [("rep_vgg6", "vgg11"), ("rep_wrn16_4", "wrn16_4")])
def test_group_ops_do_not_grow_with_the_layers(name, plain, monkeypatch):
    """Issue 18's host target on the op counter (benchmarks/step_profile.py): a GPU step of the
    repeated model launches at most 1.3x the plain model's operators."""
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    torch.manual_seed(0)
    model = create_model(name)
    layers = len(list(repeated_layers(model)))
    monkeypatch.setattr(WeightGroup, "enabled", False)
    per_layer = sum(weight_generation_ops(model).values())
    monkeypatch.setattr(WeightGroup, "enabled", True)
    grouped = sum(weight_generation_ops(model).values())
    assert layers >= 5 and grouped <= 24 < per_layer, (grouped, per_layer)
    step = sum(training_step_ops(model, image=8).values())
    step_plain = sum(training_step_ops(create_model(plain), image=8).values())
    assert step <= 1.3 * step_plain, (step, step_plain)


def test_seeds_stacked_under_vmap_get_each_models_gradients(monkeypatch):
    """benchmarks/batched_seeds.py's batched model: under a torch.func transform the layers take the
    reference ops (the fused function and the groups have no vmap rule), per seed exactly as alone."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    monkeypatch.setattr(WeightGroup, "enabled", True)
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    models = [_repeated("source") for _ in range(2)]
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(0.1 * torch.randn_like(p))
    xs = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0])  # on the device: a meta copy computes wrong values with parametrized convs

    def loss(p, b, x):
        return functional_call(base, (p, b), (x,)).square().sum()

    grads = vmap(grad(loss))(params, buffers, xs)
    for k, model in enumerate(models):
        model.zero_grad(set_to_none=True)
        model(xs[k]).square().sum().backward()
        for name, p in model.named_parameters():
            assert (grads[name][k] - p.grad).abs().max().item() <= 1e-10 * max(1.0, p.grad.abs().max().item()), name
