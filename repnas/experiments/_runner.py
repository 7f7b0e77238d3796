"""Run an experiment: train every selected (model, seed) pair once, one small JSON per run.

Resumability is by file: ``<out>/runs/<model>__seed<k>.json`` exists -> that run is done and is
skipped. A run is written atomically only after it finished, so a command killed mid-run (a 10 min
limit on a lent GPU) loses that one run and nothing else; the next invocation of the same command
continues. The JSON holds a fingerprint of the run's config (model, dataset, recipe, seed; not the
device or data folder): a result made with another recipe is never silently mixed into a table.

``time_limit`` (seconds) stops *starting* runs once the next one would probably not finish in time
(estimated from the longest run of the same model seen so far, else the longest run of this
invocation), so a fixed-length command slot can be filled by repeating one command.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repnas._io import atomic_write_text
from repnas.errors import UserError
from repnas.experiments._config import Experiment, ModelEntry

__all__ = ["RunOutcome", "hardware_name", "run_experiment", "run_path"]

_RESULT_VERSION = 1
#: metrics kept from ``TrainResult`` (history is reduced to the val accuracy curve: files stay small)
_KEEP = ("val_accuracy", "test_accuracy", "val_loss", "test_loss", "train_loss", "train_accuracy", "params",
         "physical_params", "flops", "train_seconds", "images_per_second", "epochs", "steps", "dataset", "device")


@dataclass
class RunOutcome:
    """What one invocation did: runs trained now, runs already done, runs left for next time."""

    trained: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    left: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    wall_seconds: float = 0.0


def run_path(out_dir: str | Path, entry: ModelEntry, seed: int) -> Path:
    return Path(out_dir) / "runs" / f"{entry.file_stem}__seed{seed}.json"


def fingerprint(run_config: dict[str, Any]) -> str:
    """Hash of what makes a result comparable: model, dataset (not its folder), recipe, seed."""
    from repnas.train import RunConfig

    normal = RunConfig.from_dict(run_config).to_dict()  # defaults filled in: omitted == explicit
    key = {"model": normal["model"], "recipe": normal["recipe"], "seed": normal["seed"],
           "dataset": {k: v for k, v in normal["dataset"].items() if k != "data_dir"}}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def hardware_name(device: str) -> str:
    """The accelerator's name (``torch.cuda.get_device_name``) or the CPU's, for the tables."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine() or "CPU"
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def select(exp: Experiment, models: Sequence[str] | None, seeds: Sequence[int] | None) -> list[tuple[ModelEntry, int]]:
    """The (model, seed) pairs to consider, in config order; unknown names are errors."""
    entries = [exp.model(name) for name in models] if models else list(exp.models)
    if models:
        entries = [e for e in exp.models if e in entries]  # keep the config's order
    chosen_seeds = list(seeds) if seeds else list(exp.seeds)
    return [(entry, seed) for entry in entries for seed in chosen_seeds]


def read_run(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_experiment(
    exp: Experiment,
    out_dir: str | Path,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    device: str | None = None,
    time_limit: float | None = None,
    dry_run: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    start_one: bool = True,
    extra: dict[str, Any] | None = None,
) -> RunOutcome:
    """Train the selected runs that have no result file yet; returns what was done.

    ``device`` overrides the experiment's; ``dry_run`` only reports what would run. ``time_limit``
    stops starting runs that would likely end after it; the first run starts regardless when
    ``start_one`` (so a command always makes progress), not when this call only uses what an
    earlier experiment of the same command left of the time. ``extra`` is merged into each run's
    JSON (the GPU session records the run's GPU share and queue item).
    """
    from repnas.train import RunConfig, train
    from repnas.train._trainer import resolve_device

    if exp.kind != "train":
        raise UserError(f"experiment {exp.name!r} is a {exp.kind} experiment: it trains nothing")
    out = Path(out_dir)
    pairs = select(exp, models, seeds)
    outcome = RunOutcome()
    pending: list[tuple[ModelEntry, int, dict[str, Any], str]] = []
    longest: dict[str, float] = {}
    for entry, seed in pairs:
        config = exp.run_config(entry, seed, device)
        key = fingerprint(config)
        path = run_path(out, entry, seed)
        if path.exists():
            done = read_run(path)
            if done is None:
                raise UserError(f"{path} is not a readable result; delete it to rerun that run")
            if done.get("fingerprint") != key:
                raise UserError(f"{path} was made with a different model/dataset/recipe; move it away or "
                                "use another --out")
            outcome.skipped.append((entry.name, seed))
            longest[entry.name] = max(longest.get(entry.name, 0.0), float(done.get("wall_seconds", 0.0)))
        else:
            pending.append((entry, seed, config, key))
    if dry_run:
        outcome.left = [(e.name, s) for e, s, _, _ in pending]
        return outcome
    if not pending:
        return outcome

    resolved = str(resolve_device(device or exp.device))
    hardware = hardware_name(resolved)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    this_call = 0.0
    for i, (entry, seed, config, key) in enumerate(pending):
        elapsed = time.perf_counter() - start
        estimate = longest.get(entry.name, this_call)
        if time_limit is not None and (i > 0 or not start_one) and elapsed + estimate > time_limit:
            outcome.left = [(e.name, s) for e, s, _, _ in pending[i:]]
            log(f"time limit {time_limit:.0f} s: stopping with {len(outcome.left)} run(s) left; "
                "run the same command again to continue")
            break
        cfg = RunConfig.from_dict(config)
        cfg.device = resolved
        t0 = time.perf_counter()
        try:
            result = train(cfg, progress=progress)
        except Exception as exc:  # one broken model must not cost the rest of a GPU slot
            if isinstance(exc, UserError) and "not available" in str(exc):
                raise
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            outcome.failed.append((entry.name, seed, message))
            log(f"[{i + 1}/{len(pending)}] {entry.name} seed {seed}: FAILED ({message}); nothing written, "
                "it will be retried next time")
            continue
        wall = time.perf_counter() - t0
        record = {
            "version": _RESULT_VERSION,
            "experiment": exp.name,
            "model": entry.name,
            "group": entry.group,
            "seed": seed,
            "fingerprint": key,
            "smoke": exp.smoke,
            **{k: _plain(result[k]) for k in _KEEP if k in result},
            "wall_seconds": wall,
            "hardware": hardware,
            "torch": _torch_version(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "val_curve": [round(float(h["val_accuracy"]), 5) for h in result.history],
            "config": _portable(cfg.to_dict()),
            **(extra or {}),
        }
        atomic_write_text(run_path(out, entry, seed), json.dumps(record, indent=1) + "\n")
        outcome.trained.append((entry.name, seed))
        longest[entry.name] = max(longest.get(entry.name, 0.0), wall)
        this_call = max(this_call, wall)
        log(f"[{i + 1}/{len(pending)}] {entry.name} seed {seed}: test {result['test_accuracy']:.4f} "
            f"val {result['val_accuracy']:.4f}  params {result['params']:,}  wall {wall:.1f} s "
            f"(train {result['train_seconds']:.1f} s) on {hardware}")
    outcome.wall_seconds = time.perf_counter() - start
    return outcome


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config without this machine's data folder (``repnas train`` accepts it as is)."""
    config["dataset"]["data_dir"] = None
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _torch_version() -> str:
    import torch

    return f"torch {torch.__version__}" + (f" cuda {torch.version.cuda}" if torch.version.cuda else "")



