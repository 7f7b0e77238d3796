"""The GPU procedure's self-check (issue 27.2): every speed path against the reference, before it is trusted.

A lent GPU gives one 10-minute command, so a speed path that computes wrong numbers (a fused weight
with a wrong gradient, a CUDA graph that replays a stale learning rate) would spend the whole lease
training wrong models. Before the checks, benchmarks and queue, the session runs one process (the
task ``selfcheck``, ``python -m repnas.experiments._selfcheck SPEC.json``) that checks each path on a
tiny repeated model, in float32 (TF32 off) against the reference, i.e. the plain autograd ops of
``RepeatWeight.reference``, eager, contiguous:

- ``fused`` (``REPNAS_FUSED``): the per-layer fused weight function (``RepeatWeight.use_fused``);
- ``group`` (``REPNAS_WEIGHT_GROUP``): the whole-model weight groups (``WeightGroup.enabled``);
- ``bf16_channels_last`` (``REPNAS_BF16``, CUDA): bf16 autocast + channels_last, the values against
  the fp32 reference, the gradients against the reference ops under the same autocast;
- ``graph`` (``REPNAS_CUDA_GRAPH``, CUDA): a captured training step (``GraphStep``) against eager
  steps: the losses and parameter updates after warm-up, capture and a replay on a new batch
  (under bf16 + channels_last when that passed, as the trainer runs it);
- ``compile`` (``REPNAS_COMPILE``): ``torch.compile`` of the model (``fullgraph``: a graph break
  fails it).

Each value is the logits and every parameter's gradient (a step: its loss and every parameter's
update), as relative errors against :data:`TOLERANCES`; a switch at 0 turns its path off.

Each path is checked as the run would use it: ``group`` on top of ``fused``; ``bf16_channels_last``,
``graph`` and ``compile`` with the weight paths that passed (forced on, also on a CPU, so the smoke
exercises what a GPU runs). Verdicts are ``passed``, ``failed: <one line>``, ``skipped: needs CUDA``
(a CPU) or ``turned off: <why>`` (off in the caller's environment, or it needs a path that did not
pass): a path that did not pass is switched off, through its environment variable, for every task
the session starts after it (:func:`speed_env`), and benchmarks that measure it wait for a later
session. Each check runs under a watchdog (a path that hangs fails with ``timed out``); a check that
kills its process (a CUDA fault) fails that path and the session starts the process again for the
paths after it (:func:`run_selfcheck`). The verdicts go to ``results/gpu/<gpu>/selfcheck.json``
(the latest session's) and docs/results.md.

``compile`` is off unless ``REPNAS_COMPILE=1``; while it is off, the check compiles with backend
``aot_eager`` (dynamo and AOT autograd: where graph breaks and tracing failures of our autograd
Functions show, in seconds) instead of inductor's code generation (tens of seconds of a lease for a
path no task uses); with ``REPNAS_COMPILE=1`` it compiles with inductor, as the runs will.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repnas._io import atomic_write_text

__all__ = ["PATHS", "TOLERANCES", "SpeedPath", "check_paths", "in_use", "run_selfcheck", "speed_env"]


@dataclass(frozen=True)
class SpeedPath:
    name: str
    #: the environment variable that switches it; "0" turns it off
    env: str
    what: str
    needs_cuda: bool = False
    #: paths it runs on top of: it is off when one of them is
    needs: tuple[str, ...] = ()


#: in checking order: later checks run on the weight paths that passed
PATHS = (
    SpeedPath("fused", "REPNAS_FUSED", "per-layer fused weight function"),
    SpeedPath("group", "REPNAS_WEIGHT_GROUP", "whole-model weight groups", needs=("fused",)),
    SpeedPath("bf16_channels_last", "REPNAS_BF16", "bf16 autocast + channels_last", needs_cuda=True),
    SpeedPath("graph", "REPNAS_CUDA_GRAPH", "CUDA-graph capture of the training step", needs_cuda=True),
    SpeedPath("compile", "REPNAS_COMPILE", "torch.compile of the model"),
)
_BY_NAME = {p.name: p for p in PATHS}

#: relative errors allowed (see :func:`_compare`). fp32 with TF32 off differs from the reference by
#: summation order only (1e-8 .. 2e-6 measured on a CPU; a wrong path errs by 1e-2 and more). bf16:
#: values against the fp32 reference (2.2e-3 .. 2.7e-3 measured under CPU autocast; check_train's
#: 3e-2), gradients against the reference ops under the same autocast, since bf16 gradients differ
#: from fp32 ones by up to 0.16 even with the floor at 1e-1 (a tile scalar's gradient is a sum that
#: cancels); a wrong layout or index errs by O(1). ``floor``: a gradient's norm is floored at this
#: share of the largest gradient's (a conv bias before BatchNorm has a gradient of rounding noise)
TOLERANCES = {"fp32": {"values": 1e-4, "gradients": 2e-3, "floor": 1e-2},
              "bf16": {"values": 3e-2, "gradients": 1e-1, "floor": 1e-1}}
#: seconds a path's check may take before it fails as timed out (compile: its first compilation)
TIMEOUTS = {"cuda": {"compile": 150.0}, "cpu": {"compile": 120.0}}
DEFAULT_TIMEOUT = {"cuda": 40.0, "cpu": 60.0}


class CheckFailed(Exception):
    """A path that ran but disagrees with the reference (the message is the verdict's one line;
    ``detail``: the figures measured before it failed)."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


# ------------------------------------------------------------------------------ the session's side
def off_in_env(env: dict[str, str]) -> dict[str, str]:
    """Paths the caller's environment switches off, with why (they are not checked)."""
    out = {}
    for p in PATHS:
        if p.name == "compile":
            continue  # off by default; checked anyway (its verdict matters the day it is switched on)
        if env.get(p.env) == "0":
            out[p.name] = f"turned off: {p.env}=0 in the environment"
    return out


def speed_env(verdicts: dict[str, str]) -> dict[str, str]:
    """The environment that switches off every path whose check failed (for every later task)."""
    return {_BY_NAME[name].env: "0" for name, verdict in verdicts.items() if verdict.startswith("failed")}


def in_use(name: str, env: dict[str, str], cuda: bool) -> bool:
    """Whether the run's tasks use path ``name`` under ``env`` (the switches' own defaults)."""
    def switch(var: str, default: bool) -> bool:
        return {"1": True, "0": False}.get(env.get(var, ""), default)

    if name == "fused":
        return switch("REPNAS_FUSED", cuda)
    if name == "group":
        return in_use("fused", env, cuda) and switch("REPNAS_WEIGHT_GROUP", cuda)
    if name == "bf16_channels_last":
        return cuda and switch("REPNAS_BF16", True)
    if name == "graph":
        return cuda and switch("REPNAS_CUDA_GRAPH", True) and not in_use("compile", env, cuda)
    return switch("REPNAS_COMPILE", False)


def run_selfcheck(device: str, work: Path, start: Callable[[list[str], dict[str, str], Path], Any],
                  env: dict[str, str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check every path (in as many processes as crashes need) and return the record: per path its
    verdict, seconds, details and whether the run uses it; ``env``, the switches later tasks get.

    ``start(paths, known, result)`` runs the checking process on ``paths`` (``known``: path ->
    verdict of those not to check: off in the environment, or checked by an earlier process),
    writing ``result``, and returns ``(exit code, or None when it was never started; one line of
    why)``: the session passes its scheduler (deadline, log), tests a fake.
    """
    env = dict(os.environ if env is None else env)
    cuda = device.startswith("cuda")
    off = off_in_env(env)
    paths: dict[str, dict[str, Any]] = {name: {"verdict": verdict} for name, verdict in off.items()}
    head: dict[str, Any] = {}
    for attempt in range(1, len(PATHS) + 1):
        pending = [p.name for p in PATHS if p.name not in paths]
        if not pending:
            break
        result = work / f"selfcheck-{attempt}.json"
        result.unlink(missing_ok=True)
        known = {name: v["verdict"] for name, v in paths.items()}  # what a later process builds on
        code, why = start(pending, known, result)
        partial = _read(result) or {}
        head = {k: v for k, v in partial.items() if k not in ("paths", "running")} or head
        got = {k: v for k, v in (partial.get("paths") or {}).items() if k in pending}
        paths.update(got)
        running = partial.get("running")
        if code is None:  # never started (no time left in the command)
            for name in pending:
                paths.setdefault(name, {"verdict": f"failed: not checked ({why})"})
            break
        if running in pending and running not in got:
            paths[running] = {"verdict": f"failed: its check ended the process ({why})"}
        elif not got:  # died before its first path: nothing to blame, nothing gained by trying again
            for name in pending:
                paths[name] = {"verdict": f"failed: the self-check process ended before checking it ({why})"}
            break
    verdicts = {name: paths[name]["verdict"] for name in _BY_NAME}
    switches = speed_env(verdicts)
    after = {**env, **switches}
    for p in PATHS:
        paths[p.name]["in_use"] = in_use(p.name, after, cuda)
        paths[p.name]["switch"] = p.env
    record = {**head, "device": device, "paths": {p.name: paths[p.name] for p in PATHS}, "env": switches,
              "tolerances": TOLERANCES}
    for line in format_lines(record):
        log(line)
    return record


def format_lines(record: dict[str, Any]) -> list[str]:
    """One line per path: what the session log prints."""
    lines = []
    for name, v in record["paths"].items():
        detail = v.get("detail") or {}
        numbers = ", ".join(f"{k} {detail[k]:.1e}" for k in ("values_error", "gradients_error") if k in detail)
        extra = f" ({numbers}; {v['seconds']:.1f} s)" if numbers and "seconds" in v else (
            f" ({v['seconds']:.1f} s)" if "seconds" in v else "")
        lines.append(f"  selfcheck {name:<18} {v['verdict']}{extra}; this run: {'on' if v.get('in_use') else 'off'}")
    if record.get("env"):
        lines.append("  selfcheck: later tasks run with " + " ".join(f"{k}={v}" for k, v in record["env"].items()))
    return lines


def _read(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------ the checking process
class _Case:
    """The tiny repeated model, a batch and the reference's logits and gradients, on one device."""

    def __init__(self, device) -> None:
        import torch

        self.device = device
        torch.manual_seed(0)
        self.model = tiny_model().to(device)
        self.x = torch.randn(8, 3, 8, 8, device=device)
        self.y = torch.randint(0, 10, (8,), device=device)
        with weights(fused=False, group=False):
            self.logits, self.grads = forward_backward(self.model, self.model, self.x, self.y)
        #: the paths that passed so far: what the later checks run on
        self.fused = self.group = self.bf16 = False


def tiny_model():
    """Two small repeated CNNs side by side (one per remainder rule) with BatchNorm and a linear head:
    whole tiles, a grouped conv, a rank-2 bank with remainders on both sides, a borrower, ``swish``
    and ``linear`` maps, a non-square kernel; ~2k parameters, milliseconds per step."""
    import torch
    from torch import nn

    from repnas.rescale import repeated_layers, rescale

    def net(rule: str) -> nn.Module:
        body = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.ReLU(),
            nn.Conv2d(12, 14, 3, padding=1), nn.ReLU(),
            nn.Conv2d(14, 14, 3, padding=1), nn.ReLU(),
            nn.Conv2d(14, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, (1, 3), padding=(0, 1)), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        plan = {"version": 2, "remainder": rule, "banks": {"b": {"out": 4, "in": 4, "rank": 2}},
                "layers": {"0": {"own": [4, 3]}, "3": {"own": [4, 2]}, "5": {"bank": "b"}, "7": {"borrow": "5"},
                           "9": {"own": [8, 7], "map": "linear"}, "11": {"own": [16, 8], "map": "linear"}}}
        body = rescale(body, plan)
        with torch.no_grad():  # scalars away from their init, so that every map really bends
            for _, _, rep in repeated_layers(body):
                for p in (rep.alpha, rep.beta):
                    if p is not None:
                        p.copy_(torch.randn(p.shape))
        return body

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.paper, self.source, self.head = net("paper"), net("source"), nn.Linear(32, 10)

        def forward(self, x):
            return self.head(torch.cat([self.paper(x), self.source(x)], dim=1))

    return Tiny()


@contextlib.contextmanager
def weights(fused: bool, group: bool) -> Iterator[None]:
    """Force how repeated weights are generated (class switches; the environment is not read)."""
    from repnas.rescale import RepeatWeight, WeightGroup

    before = RepeatWeight.use_fused, WeightGroup.enabled
    RepeatWeight.use_fused, WeightGroup.enabled = fused, group
    try:
        yield
    finally:
        RepeatWeight.use_fused, WeightGroup.enabled = before


def forward_backward(module, model, x, y, autocast=None):
    """(logits, {name: gradient}) of one cross-entropy forward and backward of ``module`` (``model``:
    the module whose parameters are read, the compiled module's original)."""
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    with autocast or contextlib.nullcontext():
        logits = module(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    return logits.detach().float(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                                     if p.grad is not None}


def _relative(a, b, floor: float = 0.0) -> float:
    return float((a.float() - b.float()).norm() / max(float(b.float().norm()), floor, 1e-30))


def _compare(logits, grads, ref_logits, ref_grads, precision: str,
             names: tuple[str, str] = ("values", "gradient")) -> dict[str, Any]:
    """Relative errors (norm of the difference / norm of the reference): logits, and each parameter's
    gradient, whose norm is floored at ``TOLERANCES[precision]["floor"]`` of the largest gradient's (a
    conv bias before BatchNorm has a gradient of rounding noise only, which no path reproduces)."""
    tol = TOLERANCES[precision]
    if grads.keys() != ref_grads.keys():
        missing = sorted(set(ref_grads) ^ set(grads))
        raise CheckFailed(f"gradients of other parameters than the reference's: {missing[:2]}")
    floor = tol["floor"] * max(float(g.norm()) for g in ref_grads.values())
    errors = {n: _relative(grads[n], ref_grads[n], floor) for n in ref_grads}
    worst = max(errors, key=errors.get)
    detail = {"values_error": _relative(logits, ref_logits), "gradients_error": errors[worst],
              "worst_parameter": worst, "parameters": len(errors), "precision": precision}
    if not detail["values_error"] <= tol["values"]:  # NaN fails too
        raise CheckFailed(f"{names[0]} differ from the reference: relative error {detail['values_error']:.2e} > "
                          f"{tol['values']:g} ({precision})", detail)
    if not errors[worst] <= tol["gradients"]:
        raise CheckFailed(f"{names[1]} of {worst} differs from the reference: relative error {errors[worst]:.2e} "
                          f"> {tol['gradients']:g} ({precision})", detail)
    return detail


def check_fused(case: _Case) -> dict[str, Any]:
    with weights(fused=True, group=False):
        logits, grads = forward_backward(case.model, case.model, case.x, case.y)
    return _compare(logits, grads, case.logits, case.grads, "fp32")


def check_group(case: _Case) -> dict[str, Any]:
    from repnas.rescale import WeightGroup

    served = []
    original = WeightGroup.weight

    def spy(self, *args, **kwargs):
        served.append(1)
        return original(self, *args, **kwargs)

    WeightGroup.weight = spy  # a group that never serves would pass vacuously
    try:
        with weights(fused=True, group=True):
            logits, grads = forward_backward(case.model, case.model, case.x, case.y)
    finally:
        WeightGroup.weight = original
    if not served:
        raise CheckFailed("no weight group served the model's layers")
    return {**_compare(logits, grads, case.logits, case.grads, "fp32"), "layers_served": len(served)}


def check_bf16(case: _Case) -> dict[str, Any]:
    import torch

    from repnas.train import channels_last

    model = channels_last(copy.deepcopy(case.model))
    x = case.x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(case.x.device.type, dtype=torch.bfloat16)  # CUDA's (a CPU's in the tests)
    with weights(case.fused, case.group):
        logits, grads = forward_backward(model, model, x, case.y, autocast)
    with weights(fused=False, group=False):  # the gradients' reference: the reference ops, same autocast
        _, ref_grads = forward_backward(model, model, x, case.y, autocast)
    return _compare(logits, grads, case.logits, ref_grads, "bf16") | {
        "gradients_against": "the reference ops under the same bf16 autocast + channels_last"}


def check_graph(case: _Case, steps: int = 3) -> dict[str, Any]:
    """Eager steps of one copy against a ``GraphStep`` of another (warm-up 1: step 1 eager, step 2
    captured then replayed, step 3 replayed on a new batch and LR): each step's loss and, at the end,
    every parameter's update; SGD with momentum, Nesterov and weight decay as the trainer's, the LR
    decaying every step (the captured step must read it from its device tensor). As the trainer runs
    it: on the weight paths that passed, under bf16 autocast + channels_last if that passed."""
    import torch

    from repnas.train import EagerStep, GraphStep, channels_last

    torch.manual_seed(1)
    batches = [(torch.randn_like(case.x), torch.randint(0, 10, case.y.shape, device=case.x.device))
               for _ in range(steps)]
    runs = []
    if case.bf16:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    device = case.x.device
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if case.bf16 else contextlib.nullcontext
    for kind in (EagerStep, GraphStep):
        model = copy.deepcopy(case.model)
        model = channels_last(model) if case.bf16 else model
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
        kwargs = {"warmup": 1} if kind is GraphStep else {}
        step = kind(model, optimizer, scheduler, 0.1, autocast(), **kwargs)
        with weights(case.fused, case.group):
            losses = [step(x, y)[0].float() for x, y in batches]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if kind is GraphStep and (step.graph is None or step.failed):
            raise CheckFailed(f"the step was not captured: {step.failed or 'no graph'}")
        updates = {n: p.detach() - start[n] for n, p in model.named_parameters()}
        runs.append((torch.stack(losses), updates))
    (eager_loss, eager_updates), (graph_loss, graph_updates) = runs
    precision = "bf16" if case.bf16 else "fp32"
    return _compare(graph_loss, graph_updates, eager_loss, eager_updates, precision, ("losses", "update")) | {
        "steps": steps}


def check_compile(case: _Case, backend: str) -> dict[str, Any]:
    import torch
    import torch._dynamo

    torch._dynamo.reset()
    # fullgraph: the first graph break raises at once (no lease seconds spent compiling the pieces)
    compiled = torch.compile(case.model, backend=backend, fullgraph=True)
    try:
        with weights(case.fused, case.group):
            logits, grads = forward_backward(compiled, case.model, case.x, case.y)
    except torch._dynamo.exc.Unsupported as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise CheckFailed(f"graph break with backend {backend}: {' '.join(lines[:2])[:200]}",
                          {"backend": backend}) from None
    finally:
        torch._dynamo.reset()  # the compiled code holds the model; later checks run it eagerly
    return _compare(logits, grads, case.logits, case.grads, "fp32") | {"backend": backend, "graph_breaks": 0}


def check_paths(paths: Sequence[str], device: str, result: Path, off: dict[str, str] | None = None,
                compile_backend: str | None = None, timeouts: dict[str, float] | None = None) -> dict[str, Any]:
    """Check ``paths`` in :data:`PATHS` order on ``device``, writing ``result`` (atomically) before and
    after each; return the record. ``off``: paths not to check, with their verdicts."""
    import torch

    from repnas.train import resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    kind = "cuda" if cuda else "cpu"
    backend = compile_backend or ("inductor" if os.environ.get("REPNAS_COMPILE") == "1" else "aot_eager")
    limits = {p.name: TIMEOUTS[kind].get(p.name, DEFAULT_TIMEOUT[kind]) for p in PATHS} | (timeouts or {})
    record: dict[str, Any] = {"device": device, "hardware": _hardware(dev), "torch": torch.__version__,
                              "compile_backend": backend, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "paths": {}, "running": None}
    verdicts = dict(off or {})
    t0 = time.perf_counter()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        case = _Case(dev)
        case.fused = verdicts.get("fused") == "passed"  # checked by an earlier process of this session
        case.group = case.fused and verdicts.get("group") == "passed"
        case.bf16 = verdicts.get("bf16_channels_last") == "passed"
        record["setup_seconds"] = round(time.perf_counter() - t0, 2)
        checks = {"fused": check_fused, "group": check_group, "bf16_channels_last": check_bf16,
                  "graph": check_graph, "compile": lambda c: check_compile(c, backend)}
        for p in PATHS:
            if p.name not in paths:
                continue
            blocked = [n for n in p.needs if not verdicts.get(n, "").startswith("passed")]
            if p.needs_cuda and not cuda:
                verdict, detail, seconds = "skipped: needs CUDA", {}, 0.0
            elif blocked:
                verdict, detail, seconds = f"turned off: needs {', '.join(blocked)}", {}, 0.0
            else:
                record["running"] = p.name
                atomic_write_text(result, json.dumps(record, indent=1) + "\n")
                verdict, detail, seconds = _one(checks[p.name], case, limits[p.name], record, result, cuda)
            verdicts[p.name] = verdict
            record["paths"][p.name] = {"verdict": verdict, "seconds": round(seconds, 2), "detail": detail}
            record["running"] = None
            if verdict == "passed":
                case.fused = case.fused or p.name == "fused"
                case.group = case.group or p.name == "group"
                case.bf16 = case.bf16 or p.name == "bf16_channels_last"
            atomic_write_text(result, json.dumps(record, indent=1, default=float) + "\n")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    record["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(result, json.dumps(record, indent=1, default=float) + "\n")
    return record


def _one(check, case: _Case, timeout: float, record: dict[str, Any], result: Path,
         cuda: bool) -> tuple[str, dict[str, Any], float]:
    """(verdict, details, seconds) of one check under a watchdog that ends the process when the check
    runs past ``timeout`` seconds, after writing the verdict ``failed: timed out`` for it."""
    name = record["running"]

    def expire() -> None:
        record["paths"][name] = {"verdict": f"failed: timed out after {timeout:g} s", "seconds": timeout,
                                 "detail": {}}
        record["running"] = None
        atomic_write_text(result, json.dumps(record, indent=1, default=float) + "\n")
        print(f"selfcheck {name}: timed out after {timeout:g} s", flush=True)
        os._exit(124)

    watchdog = threading.Timer(timeout, expire)
    watchdog.daemon = True
    t = time.perf_counter()
    watchdog.start()
    try:
        detail = check(case)
        if cuda:
            import torch

            torch.cuda.synchronize()
        return "passed", detail, time.perf_counter() - t
    except CheckFailed as exc:
        return f"failed: {exc}", exc.detail, time.perf_counter() - t
    except Exception as exc:  # an error is a verdict on that path, not the end of the self-check
        traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"failed: {type(exc).__name__}: {text}"[:300], {}, time.perf_counter() - t
    finally:
        watchdog.cancel()


def _hardware(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    """``python -m repnas.experiments._selfcheck SPEC.json``: the checking process of a session."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    record = check_paths(spec["paths"], spec["device"], Path(spec["result"]), spec.get("off"),
                         spec.get("compile_backend"), spec.get("timeouts"))
    for name, v in record["paths"].items():
        print(f"selfcheck {name}: {v['verdict']} ({v['seconds']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
