"""Second derivatives and graph breaks of the three weight paths on real models (issue 27.1).

The tests check a tiny repeated model; this checks the paper's models, which take minutes to
compile on a CPU. For each model and path (``reference``, ``fused`` = ``REPNAS_FUSED=1``, ``group`` =
``REPNAS_WEIGHT_GROUP=1`` on top), forced on whatever device runs it:

* the second derivative through the parameters, ``grad(sum(g_i^2), params)`` with
  ``g = grad(loss, params, create_graph=True)``, in float64, relative to the reference's largest value;
* ``torch._dynamo.explain``'s graph breaks, and (``--compile``) forward and backward of
  ``torch.compile(model, fullgraph=True, backend="aot_eager")`` against eager.

    python benchmarks/weight_paths_check.py                 # second derivatives and graph breaks
    python benchmarks/weight_paths_check.py --compile       # also fullgraph compile vs eager (minutes)
"""

from __future__ import annotations

import argparse
import time

import torch

from repnas.rescale import RepeatWeight, repeated_layers
from repnas.rescale._group import WeightGroup
from repnas.spaces import create_model

PATHS = {"reference": (False, False), "fused": (True, False), "group": (True, True)}


def use(path: str) -> None:
    RepeatWeight.use_fused, WeightGroup.enabled = PATHS[path]


def model_of(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model with every scalar drawn from N(0, 1), so each map really bends."""
    torch.manual_seed(0)
    model = create_model(name).to(dtype)
    with torch.no_grad():
        for _, _, rep in repeated_layers(model):
            for p in (rep.alpha, rep.beta):
                if p is not None:
                    p.copy_(torch.randn(p.shape, dtype=dtype))
    return model


def second_derivative(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    params = list(model.parameters())
    g = torch.autograd.grad(model(x).square().sum(), params, create_graph=True)
    return list(torch.autograd.grad(sum(gi.square().sum() for gi in g), params))


def check(name: str, compile_too: bool) -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model = model_of(name, torch.float64)
    use("reference")
    ref = second_derivative(model, x)
    scale = max(t.abs().max().item() for t in ref)
    model32, x32 = model_of(name, torch.float32), x.float()
    for path in PATHS:
        use(path)
        line = f"{name:12s} {path:9s}"
        if path != "reference":
            got = second_derivative(model, x)
            diff = max((a - b).abs().max().item() for a, b in zip(got, ref, strict=True)) / scale
            line += f" second derivative rel. diff {diff:.1e}"
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model32)(x32)
        line += f" | graph breaks {explained.graph_break_count}"
        if compile_too:
            start = time.perf_counter()
            torch._dynamo.reset()
            results = []
            for net in (model32, torch.compile(model32, fullgraph=True, backend="aot_eager")):
                model32.zero_grad(set_to_none=True)
                out = net(x32)
                out.square().sum().backward()
                results.append((out.detach(), [p.grad.clone() for p in model32.parameters()]))
            (out_e, grads_e), (out_c, grads_c) = results
            grad_diff = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
                            for a, b in zip(grads_e, grads_c, strict=True))
            line += (f" | fullgraph aot_eager vs eager: output {(out_e - out_c).abs().max().item():.1e},"
                     f" gradients (rel.) {grad_diff:.1e} ({time.perf_counter() - start:.0f} s)")
        print(line, flush=True)
    use("reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model names (default: rep_vgg6, rep_wrn16_4)")
    parser.add_argument("--compile", action="store_true", help="also compile with fullgraph=True and compare")
    args = parser.parse_args()
    for name in args.model or ["rep_vgg6", "rep_wrn16_4"]:
        check(name, args.compile)


if __name__ == "__main__":
    main()
