"""Deployable files of an exported trial: TorchScript and ONNX of the materialized model, checked.

A repeated model needs repnas (its convs are ``torch.nn.utils.parametrize``-d); its materialized
copy is plain torch layers, so it can be serialised into formats that need no Python model code:

- ``<stem>.ts``: TorchScript by ``torch.jit.trace`` (CNN forward passes have no data-dependent control
  flow, so tracing records them exactly); load with ``torch.jit.load``, no repnas import.
- ``<stem>.onnx``: ONNX by ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter.
  Why not the default (``dynamo=True`` since torch 2.9): it needs ``onnxscript`` (and ``onnx``) at
  export time, while the TorchScript-based one needs only ``onnx``; for these plain conv/pool/linear
  graphs both give the same operators. The batch dimension is dynamic (input ``images``, output ``logits``).

Both are checked here against the trained *repeated* model (not only the materialized one) on one
seeded batch of a different size than the traced one, in eval mode: max abs logit difference
<= ``TOLERANCE`` times the largest logit where that exceeds 1. The ONNX file is written where
``onnx`` is installed and run through onnxruntime where that is (``pip install repnas[deploy]``
brings both); what was not written or not checked is recorded with the reason. A check that fails
raises, and the file is not left behind.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repnas._io import atomic_path
from repnas.errors import UserError

#: the largest max abs logit difference a deployable file may have against the repeated model
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def check_batch(input_shape: tuple[int, int, int], size: int = 5, seed: int = 0) -> torch.Tensor:
    """The seeded batch the checks run on (normalised-scale inputs, as the trainer feeds them)."""
    return torch.randn((size, *input_shape), generator=torch.Generator().manual_seed(seed))


def write_deployables(repeated: nn.Module, plain: nn.Module, input_shape: tuple[int, int, int], out: Path,
                      stem: str) -> dict[str, Any]:
    """Write ``out/<stem>.ts`` and ``out/<stem>.onnx`` of ``plain`` (the materialized ``repeated``);
    return ``exported.yaml``'s fields for them: file names, input/output, checked differences."""
    repeated, plain = repeated.eval(), plain.eval()
    x = check_batch(input_shape)
    with torch.no_grad():
        expected = repeated(x)
    fields: dict[str, Any] = {
        "input": {"name": INPUT_NAME, "shape": ["batch", *map(int, input_shape)], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", int(expected.shape[1])]},
    }
    fields["torchscript"], fields["torchscript_max_abs_diff"] = _torchscript(plain, input_shape, x, expected,
                                                                            out / f"{stem}.ts")
    fields["onnx"], fields["onnx_max_abs_diff"], fields["onnx_checked_with"] = _onnx(
        plain, input_shape, x, expected, out / f"{stem}.onnx")
    return fields


def _trace_input(input_shape: tuple[int, int, int]) -> torch.Tensor:
    return check_batch(input_shape, size=2, seed=1)


def _check(what: str, path: Path, got: torch.Tensor, expected: torch.Tensor) -> float:
    diff = float((got.float() - expected.float()).abs().max())
    # relative to the logits' scale where they exceed 1: float32 has ~7 digits, so logits of 1e4 (a
    # barely trained ResNet-18 on 8x8 images) differ by ~1e-3 between any two conv implementations
    tolerance = TOLERANCE * max(1.0, float(expected.float().abs().max()))
    if not diff <= tolerance:
        raise UserError(f"{path.name}: {what} logits differ from the repeated model's by {diff:.3g} "
                        f"(> {tolerance:.3g}); not exported")
    return diff


def _torchscript(plain: nn.Module, input_shape, x: torch.Tensor, expected: torch.Tensor,
                 path: Path) -> tuple[str, float]:
    with warnings.catch_warnings():  # torch 2.14 marks jit.trace deprecated; TorchScript is what is asked for
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(plain, _trace_input(input_shape), check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")
            with torch.no_grad():
                diff = _check("TorchScript", path, loaded(x), expected)
    return path.name, diff


def _onnx(plain: nn.Module, input_shape, x: torch.Tensor, expected: torch.Tensor,
          path: Path) -> tuple[str | None, float | None, str]:
    try:
        import onnx  # noqa: F401  (the exporter writes the model through it)
    except ImportError:
        return None, None, "not written: onnx is not installed (pip install repnas[deploy])"
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is not the default
            warnings.simplefilter("ignore")
            torch.onnx.export(plain, (_trace_input(input_shape),), str(tmp), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        try:
            import onnxruntime
        except ImportError:
            return path.name, None, "not checked: onnxruntime is not installed (pip install repnas[deploy])"
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        diff = _check("ONNX (onnxruntime)", path, torch.from_numpy(got), expected)
    return path.name, diff, f"onnxruntime {onnxruntime.__version__}"
