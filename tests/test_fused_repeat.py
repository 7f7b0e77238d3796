"""The fused repeated weight (``repnas.rescale._fused``, issue 18.1) equals the reference ops on every
layout, in values and gradients, and launches at most half their operators."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from repnas.rescale import RepeatWeight, TemplateBank, repeated_layers, rescale
from repnas.rescale._opcount import count_ops, weight_generation_ops
from repnas.spaces import create_model

# (source (o, i), target (O, I)): whole tiles on both axes, r0 = 1, r1 = 1, remainders on the output
# side only, the input side only, both (with the corner), and a source larger than half the target.
LAYOUTS = [
    ((2, 3), (4, 6)), ((2, 3), (2, 9)), ((4, 2), (12, 2)), ((2, 3), (5, 6)), ((2, 3), (4, 7)),
    ((2, 3), (5, 7)), ((3, 2), (7, 2)), ((3, 2), (3, 5)), ((3, 3), (4, 5)), ((4, 4), (4, 16)),
]


def _layer(source, target, scalar_map, rule, rank=1, kernel=(3, 3)) -> tuple[RepeatWeight, list[nn.Parameter]]:
    """A fp64 layer with every scalar away from its init (so each map really bends)."""
    bank = TemplateBank(*source, kernel, rank).double()
    coef = nn.Parameter(torch.randn(rank, dtype=torch.float64)) if rank > 1 else None
    layer = RepeatWeight(bank, (*target, *kernel), scalar_map, coef, remainder=rule).double()
    with torch.no_grad():
        bank.templates.mul_(5)  # weights of order 1: the swish's curvature matters
        for p in (layer.alpha, layer.beta):
            if p is not None:
                p.copy_(torch.randn(p.shape, dtype=torch.float64) * 1.5)
    return layer, [p for p in layer.parameters()]


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize(("scalar_map", "rule"), list(itertools.product(["swish", "linear"], ["paper", "source"])))
@pytest.mark.parametrize(("source", "target"), LAYOUTS, ids=[f"{s}->{t}" for s, t in LAYOUTS])
def test_fused_weight_and_gradients_equal_the_reference(source, target, scalar_map, rule, rank):
    torch.manual_seed(hash((source, target, rank)) % 1000)
    layer, params = _layer(source, target, scalar_map, rule, rank)
    assert layer._fused is not None and layer.use_fused is None and not layer.bank.templates.is_cuda
    assert layer().equal(layer.reference())  # on a CPU the default is the reference (bitwise)
    grad = torch.randn(*target, 3, 3, dtype=torch.float64)
    ref = layer.reference()
    fused = layer.emit()
    assert fused.shape == ref.shape == (*target, 3, 3) and fused.is_contiguous()
    assert (fused - ref).abs().max().item() <= 1e-12
    g_ref = torch.autograd.grad(ref, params, grad)
    g_fused = torch.autograd.grad(fused, params, grad)
    for p, a, b in zip(params, g_ref, g_fused, strict=True):
        assert a.shape == b.shape == p.shape
        assert (a - b).abs().max().item() <= 1e-12 * max(1.0, a.abs().max().item())
    assert max(g.abs().max().item() for g in g_fused) > 0.1  # a real gradient, not zeros on both sides


@pytest.mark.parametrize(("scalar_map", "rule"), list(itertools.product(["swish", "linear"], ["paper", "source"])))
@pytest.mark.parametrize(("source", "target"), [((2, 3), (4, 6)), ((2, 3), (5, 7)), ((3, 2), (3, 5))])
def test_fused_weight_passes_gradcheck(source, target, scalar_map, rule):
    torch.manual_seed(0)
    layer, _ = _layer(source, target, scalar_map, rule, kernel=(1, 2))
    src = layer.source().detach().clone().requires_grad_()
    inputs = (src, layer.alpha.detach().clone().requires_grad_())
    if layer.beta is not None:
        inputs += (layer.beta.detach().clone().requires_grad_(),)

    def fn(*xs):
        from repnas.rescale._fused import fused_weight

        return fused_weight(xs[0], xs[1], xs[2] if len(xs) > 2 else None, layer._fused)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-9)


def _plan_model(groups: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=groups), nn.ReLU(),
        nn.Conv2d(12, 14, 3, padding=1), nn.ReLU(),
        nn.Conv2d(14, 14, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


@pytest.mark.parametrize("remainder", ["paper", "source"])
@pytest.mark.parametrize("groups", [1, 3])
def test_whole_models_train_the_same_fused_and_reference(remainder, groups, monkeypatch):
    """Borrowed sources, a rank-2 bank shared by two layers and a grouped conv: outputs and every
    parameter's gradient of the whole model agree (fp64), so sharing adds the gradients alike."""
    in_per_group = 12 // groups
    plan = {"version": 2, "remainder": remainder, "banks": {"b": {"out": 4, "in": 4, "rank": 2}},
            "layers": {"2": {"own": [4, in_per_group // 2]}, "4": {"bank": "b"}, "6": {"bank": "b"},
                       "0": {"own": [4, 3]}}}
    torch.manual_seed(0)
    model = rescale(_plan_model(groups), plan).double()
    borrow = {**plan, "layers": {**plan["layers"], "6": {"borrow": "4"}}}
    torch.manual_seed(0)
    borrowed = rescale(_plan_model(groups), borrow).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for net in (model, borrowed):
        assert all(rep._fused is not None for _, _, rep in repeated_layers(net))
        results = []
        for fused in (True, False):
            monkeypatch.setattr(RepeatWeight, "use_fused", fused)
            net.zero_grad(set_to_none=True)
            out = net(x)
            out.square().sum().backward()
            results.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
        (out_f, grads_f), (out_r, grads_r) = results
        assert (out_f - out_r).abs().max().item() <= 1e-12
        assert grads_f.keys() == grads_r.keys() and len(grads_f) >= 10
        for name in grads_f:
            assert (grads_f[name] - grads_r[name]).abs().max().item() <= 1e-11, name


def test_emit_writes_the_dtype_and_layout_asked_for():
    torch.manual_seed(0)
    layer, _ = _layer((2, 3), (4, 6), "swish", "paper")
    layer.float()
    ref = layer.reference()
    w = layer.emit(memory_format=torch.channels_last, dtype=torch.bfloat16)
    assert w.dtype == torch.bfloat16 and w.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(w.float(), ref.detach(), rtol=1e-2, atol=1e-2)
    g = torch.randn_like(ref)
    (d_ref,) = torch.autograd.grad(ref, layer.alpha, g)
    (d_emit,) = torch.autograd.grad(w, layer.alpha, g.bfloat16())
    assert d_emit.dtype == torch.float32  # parameters' gradients stay in their own dtype
    torch.testing.assert_close(d_emit, d_ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["rep_vgg6", "rep_wrn16_4"])
def test_weight_generation_launches_at_most_half_the_reference_ops(name, monkeypatch):
    """Issue 18's target, on the op counter the benchmark prints (benchmarks/step_profile.py):
    before the fused weight rep_vgg6 launched 113 ops for weight generation, rep_wrn16_4 315."""
    torch.manual_seed(0)
    model = create_model(name)
    monkeypatch.setattr(RepeatWeight, "use_fused", True)
    fused = sum(weight_generation_ops(model).values())
    monkeypatch.setattr(RepeatWeight, "use_fused", False)
    reference = sum(weight_generation_ops(model).values())
    layers = len(list(repeated_layers(model)))
    assert reference >= 100 and fused * 2 <= reference, (fused, reference)
    assert fused <= 8 * layers  # 8 per tiled swish layer (+ the adds of shared sources' gradients)


def test_op_counter_counts_launching_ops_only():
    x = torch.randn(4, 4, requires_grad=True)
    counts = count_ops(lambda: (x.view(16) * 2).sum().backward())
    assert counts["aten::mul"] == 2 and counts["aten::sum"] == 1  # forward mul, backward mul
    assert "aten::view" not in counts and "aten::expand" not in counts
