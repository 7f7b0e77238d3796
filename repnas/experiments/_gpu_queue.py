"""The GPU session's experiment queue: one YAML file (``experiments/gpu_queue.yaml``) in priority order.

Each item is runs of an experiment file (a subset of its models and seeds) or a search trained with
the recipe of a hand-made experiment. Items may overlap (``c1c2-core`` is part of ``c1c2_vgg_depth``):
a run belongs to the first item that names it, and a finished run (its JSON exists) is never redone.

An item can wait for a condition (``requires``): C3 compares RepCNNs with the authors' G-CNNs, which
only means something once the registry's rot-MNIST models are the authors' (issue 11, branch
fidelity). :func:`blocked_reason` checks that by the parameter count of ``rep_cnn_c4`` on rot-MNIST,
so the item enables itself the day the faithful models land, with no edit here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from repnas.errors import UserError
from repnas.experiments._config import Experiment, ModelEntry, load_experiment

__all__ = ["FAITHFUL_REP_CNN_C4_PARAMS", "GpuQueue", "QueueItem", "blocked_reason", "item_runs", "load_queue",
           "queue_experiment"]

#: trainable parameters of the authors' RepCNN-C4 on rot-MNIST (1 input channel, 10 classes)
FAITHFUL_REP_CNN_C4_PARAMS = 352_987

_ITEM_KEYS = {"name", "experiment", "models", "seeds", "search", "requires", "gpu_minutes"}
_SEARCH_KEYS = {"space", "budget", "trials", "recipe_from", "out", "dataset", "epochs", "seed"}
_TOP_KEYS = {"queue", "max_pack", "search_workers", "search_gpus_per_trial", "default_run_seconds", "smoke"}
_SMOKE_KEYS = {"runs_per_item", "search_trials", "search_workers", "default_run_seconds", "search", "items",
               "item_models"}

#: the speed code the benchmarks measure, by revision (issue 18.6): bump ``SPEED_REVISION`` and add a
#: line when a change is meant to move a benchmark. A session measures every benchmark the current
#: revision lacks on its GPU; the files of older revisions stay, and docs/results.md shows the
#: revisions side by side. Revision 1's files sit in ``bench/`` itself, later ones in ``bench/revN/``.
SPEED_REVISIONS = {
    1: "before issue 18: per-layer reference ops (measured at b0d9b33, 9c0fd04)",
    2: "issue 18: fused weight, whole-model weight groups, captured step (from c8737f7)",
}
SPEED_REVISION = max(SPEED_REVISIONS)


def bench_path(gpu_dir: Path, name: str, revision: int = SPEED_REVISION) -> Path:
    """Where benchmark ``name`` of ``revision`` is kept for one kind of GPU."""
    folder = gpu_dir / "bench" if revision == 1 else gpu_dir / "bench" / f"rev{revision}"
    return folder / f"{name}.json"


#: seconds, planning figures for a task nothing was measured for on this kind of GPU (not results): the
#: issue's own budget ("checks about a minute, benchmarks about two"), with room for the first CIFAR-10
#: decode and process starts; after a session, the measured times (timings.json) replace them. The
#: self-check (issue 27.2, every session): "about 30 s" of checks plus a process start and CUDA's.
DECLARED = {"selfcheck": 45, "check/train": 45, "check/search": 60, "check/report": 15, "bench/repeat_overhead": 30,
            "bench/repeat_overhead_per_layer": 20, "bench/repeat_overhead_host": 15, "bench/step_profile": 20,
            "bench/trainer_throughput": 45, "bench/packed_trials": 90, "bench/batched_seeds": 45,
            "bench/vgg11_15ep": 60}
SMOKE_DECLARED = {"selfcheck": 30, "check/train": 20, "check/search": 30, "check/report": 12,
                  "bench/repeat_overhead": 12,
                  "bench/repeat_overhead_per_layer": 8, "bench/repeat_overhead_host": 8, "bench/step_profile": 10,
                  "bench/trainer_throughput": 15, "bench/packed_trials": 25, "bench/batched_seeds": 10,
                  "bench/vgg11_15ep": 12}



@dataclass
class QueueItem:
    """One line of the queue: runs of ``experiment`` or a ``search`` (a dict of the keys above)."""

    name: str
    experiment: Path | None = None
    models: list[str] | None = None
    seeds: list[int] | None = None
    search: dict[str, Any] | None = None
    requires: str | None = None
    gpu_minutes: float | None = None


@dataclass
class GpuQueue:
    """The parsed queue file (after its ``smoke`` overrides when loaded with ``smoke=True``)."""

    items: list[QueueItem]
    max_pack: int = 4
    search_workers: int = 4
    search_gpus_per_trial: float = 0.25
    default_run_seconds: float = 300.0
    smoke: bool = False
    runs_per_item: int | None = None
    source: Path | None = None
    experiments: dict[Path, tuple[Experiment, Experiment | None]] = field(default_factory=dict, repr=False)


def load_queue(path: str | Path, smoke: bool = False) -> GpuQueue:
    """Read and check the queue file; paths inside it are relative to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such queue file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("queue"), list):
        raise UserError(f"{path}: expected a mapping with a 'queue' list")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}")
    over = data.get("smoke") or {}
    if smoke:
        bad = sorted(set(over) - _SMOKE_KEYS)
        if bad:
            raise UserError(f"{path}: smoke: unknown key {bad[0]!r}")
    items = [_item(raw, k, path, over.get("search") if smoke else None) for k, raw in enumerate(data["queue"])]
    if smoke and over.get("items"):  # the smoke keeps a few items (each kind once), in the queue's order
        missing = sorted(set(over["items"]) - {i.name for i in items})
        if missing:
            raise UserError(f"{path}: smoke.items names no queue item {missing[0]!r}")
        items = [i for i in items if i.name in over["items"]]
    if smoke and over.get("item_models"):  # the smoke may train other (lighter) models of an item on a CPU
        by_name = {i.name: i for i in items}
        for name, models in over["item_models"].items():
            if name not in by_name:
                raise UserError(f"{path}: smoke.item_models names no queue item {name!r}")
            by_name[name].models = [str(m) for m in models]
    names = [i.name for i in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path}: item {twice[0]!r} is listed twice")
    pick = (lambda key, default: over.get(key, data.get(key, default))) if smoke else \
        (lambda key, default: data.get(key, default))
    queue = GpuQueue(items=items, max_pack=int(pick("max_pack", 4)), search_workers=int(pick("search_workers", 4)),
                     search_gpus_per_trial=float(pick("search_gpus_per_trial", 0.25)),
                     default_run_seconds=float(pick("default_run_seconds", 300)), smoke=smoke,
                     runs_per_item=over.get("runs_per_item") if smoke else None, source=path)
    if smoke and over.get("search_trials"):
        for item in queue.items:
            if item.search:
                item.search["trials"] = int(over["search_trials"])
    if queue.max_pack < 1 or queue.search_workers < 1 or not 0 < queue.search_gpus_per_trial <= 1:
        raise UserError(f"{path}: max_pack and search_workers must be >= 1, search_gpus_per_trial in (0, 1]")
    return queue


def _item(raw: Any, k: int, path: Path, smoke_search: dict[str, Any] | None) -> QueueItem:
    where = f"{path}: queue[{k}]"
    if not isinstance(raw, dict) or "name" not in raw:
        raise UserError(f"{where}: each item is a mapping with a name")
    unknown = sorted(set(raw) - _ITEM_KEYS)
    if unknown:
        raise UserError(f"{where} ({raw['name']}): unknown key {unknown[0]!r}")
    if ("experiment" in raw) == ("search" in raw):
        raise UserError(f"{where} ({raw['name']}): give exactly one of 'experiment' or 'search'")
    item = QueueItem(name=str(raw["name"]), requires=raw.get("requires"),
                     gpu_minutes=float(raw["gpu_minutes"]) if raw.get("gpu_minutes") is not None else None)
    if item.requires is not None and item.requires not in GATES:
        raise UserError(f"{where} ({item.name}): requires must be one of {', '.join(GATES)}")
    if "experiment" in raw:
        item.experiment = Path(raw["experiment"])
        if not item.experiment.is_file():
            raise UserError(f"{where} ({item.name}): no such experiment file {item.experiment}")
        item.models = [str(m) for m in raw["models"]] if raw.get("models") else None
        item.seeds = [int(s) for s in raw["seeds"]] if raw.get("seeds") else None
    else:
        search = raw["search"]
        if not isinstance(search, dict) or not {"space", "trials", "recipe_from", "out"} <= set(search):
            raise UserError(f"{where} ({item.name}): search needs space, trials, recipe_from and out")
        bad = sorted(set(search) - _SEARCH_KEYS)
        if bad:
            raise UserError(f"{where} ({item.name}): search: unknown key {bad[0]!r}")
        item.search = {**copy.deepcopy(search), **(smoke_search or {})}
        if not Path(item.search["recipe_from"]).is_file():
            raise UserError(f"{where} ({item.name}): no such experiment file {item.search['recipe_from']}")
    return item


# ------------------------------------------------------------------------------------- gates
def rep_cnn_c4_params() -> int:
    """Trainable parameters of the registry's ``rep_cnn_c4`` on rot-MNIST (1 channel, 10 classes)."""
    from repnas.rescale import count_params
    from repnas.spaces import create_model

    return count_params(create_model("rep_cnn_c4", num_classes=10, in_channels=1))


def _faithful_rotmnist() -> str | None:
    have = rep_cnn_c4_params()
    if have == FAITHFUL_REP_CNN_C4_PARAMS:
        return None
    return (f"waits for fidelity (issue 11): the registry's rep_cnn_c4 has {have:,} parameters on rot-MNIST, "
            f"the authors' {FAITHFUL_REP_CNN_C4_PARAMS:,}; C3 runs once the faithful models are merged")


#: condition name -> a function returning None when met, else why not (looked up at call time)
GATES = {"faithful_rotmnist": _faithful_rotmnist}


def blocked_reason(item: QueueItem) -> str | None:
    """Why ``item`` must wait (one line), or None when it may run."""
    return GATES[item.requires]() if item.requires else None


# ------------------------------------------------------------------------------------- runs
def queue_experiment(path: Path, smoke: bool) -> Experiment:
    """The experiment of a queue item: with ``smoke``, its smoke data/recipe/seeds but all its models
    (the queue names models of the full experiment; the smoke variant only lists a few)."""
    exp = load_experiment(path, smoke=smoke)
    if smoke:
        exp.models = load_experiment(path).models
    return exp


def item_runs(item: QueueItem, exp: Experiment, runs_per_item: int | None = None) -> list[tuple[ModelEntry, int]]:
    """The (model, seed) pairs an experiment item names, in its order (models outer, seeds inner)."""
    entries = [exp.model(m) for m in item.models] if item.models else list(exp.models)
    seeds = item.seeds if item.seeds and not exp.smoke else list(exp.seeds)
    pairs = [(e, s) for e in entries for s in seeds]
    return pairs[:runs_per_item] if runs_per_item else pairs
