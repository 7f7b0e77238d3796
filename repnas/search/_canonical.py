"""A candidate's identity is the model it builds, not its knob values; claims on models.

Many points of a space build the same model once the budget solver has picked the widths: the tile
map or scalar init where no layer tiles, sharing in a one-layer stage, the rank or scope of banks
that no stage uses. :func:`model_key` names what a trial trains: the resolved model config with the
plan reduced to what changes the built model (per layer: its source and, only where the layer
really tiles, its map and scalar init), plus everything in the run config that changes training
(dataset, recipe, seed). The device, the CPU thread count and the data folder are left out: they
change where and how fast the same model is trained, not which model.

:class:`ModelClaims` keeps, in the search's Optuna storage (study user attributes ``model.<key>``),
which trial trains each model and, once it has finished, its result row. Both drivers use it the
same way, under a study-wide lock (the Optuna driver's study lock; a Ray trial's storage lock,
:func:`~repnas.runs._workers.storage_lock`): the first trial to claim a key trains it; a later trial
whose point maps to the same key waits for that result (if it is still training) and reuses it
(``duplicate_of``) without training. Training is deterministic for a seed, so the reused row is what
training again would give.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

from repnas.runs._claims import REUSED_FIELDS  # noqa: F401  (re-exported: the runner copies these)

#: run-config keys that do not change which model is trained, or how
_NOT_TRAINING = ("device", "threads")
_DATASET_NOT_TRAINING = ("data_dir",)


@lru_cache(maxsize=512)
def _conv_shapes(base: str, kwargs_json: str, num_classes: int, in_channels: int) -> dict[str, tuple[int, int]]:
    """(out, in) channels of every conv of a base model, built on the meta device (no memory)."""
    import torch
    from torch import nn

    from repnas.spaces import build_model

    with torch.device("meta"):
        model = build_model({"base": base, "kwargs": json.loads(kwargs_json)}, num_classes, in_channels)
    return {n: (int(m.out_channels), int(m.in_channels // m.groups))
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def canonical_plan(plan: dict | None, shapes: dict[str, tuple[int, int]]) -> dict | None:
    """The part of a plan that changes the built model; None when the plan changes nothing.

    A layer whose source has its own shape is not tiled and has no scalars (``repnas.rescale``), so
    its map, scalar init and remainder rule are dropped; a tiled layer keeps its effective map (its
    own or the plan's), its remainder rule and, where that map has scalars, the plan's scalar init.
    Every layer keeps its effective bias init, an own source its source init (plan version 2's
    options change how training starts). Banks no layer uses are dropped.
    """
    from repnas.rescale import SCALAR_MAPS, RepetitionPlan

    if not plan or not plan.get("layers"):
        return None
    resolved = RepetitionPlan.from_dict(plan)  # version-1 documents get their own option values
    layers, banks = plan["layers"], plan.get("banks") or {}
    default_map, scalar_init = plan.get("map", "swish"), plan.get("scalar_init", "xavier")

    def source(name: str) -> tuple[int, int]:
        seen = set()
        rule = layers.get(name)
        while rule is not None and "borrow" in rule and name not in seen:
            seen.add(name)
            name, rule = rule["borrow"], layers.get(rule["borrow"])
        if rule is None or "borrow" in rule:  # a plain lender tiles its full weight
            return shapes.get(name, (0, 0))
        if "own" in rule:
            return int(rule["own"][0]), int(rule["own"][1])
        bank = banks.get(rule["bank"], {})
        return int(bank.get("out", 0)), int(bank.get("in", 0))

    out_layers: dict[str, dict[str, Any]] = {}
    for name, rule in layers.items():
        kind = next(k for k in ("own", "borrow", "bank") if k in rule)
        entry: dict[str, Any] = {kind: list(rule[kind]) if kind == "own" else rule[kind]}
        # how a repeated conv's bias and an own source start change the trained model everywhere
        entry["bias_init"] = resolved.option("bias_init", name)
        if kind == "own":
            entry["source_init"] = resolved.option("source_init", name)
        if source(name) != shapes.get(name):
            scalar_map = rule.get("map") or default_map
            entry["map"] = scalar_map
            if SCALAR_MAPS[scalar_map].scalars_per_tile > 0:
                entry["scalar_init"] = scalar_init
            entry["remainder"] = resolved.option("remainder", name)
        out_layers[name] = entry
    used = {rule["bank"] for rule in layers.values() if "bank" in rule}
    return {"layers": out_layers, "banks": {k: v for k, v in banks.items() if k in used}}


def canonical_run(config: dict[str, Any]) -> dict[str, Any]:
    """What identifies a trial's training: canonical model, dataset (not its folder), recipe, seed."""
    from repnas.train import dataset_shape

    run = {k: v for k, v in config.items() if k not in _NOT_TRAINING}
    model = dict(run.get("model") or {})
    if "base" in model:
        dataset = run["dataset"]
        info = dataset_shape(dataset["name"], dataset.get("data_dir"), dataset.get("image_size"))
        shapes = _conv_shapes(model["base"], json.dumps(model.get("kwargs") or {}, sort_keys=True),
                              info.num_classes, info.in_channels)
        plan = canonical_plan(model.get("plan"), shapes)
        model = {"base": model["base"], "kwargs": model.get("kwargs") or {}}
        if plan is not None:
            model["plan"] = plan
    run["model"] = model
    run["dataset"] = {k: v for k, v in (run.get("dataset") or {}).items()
                      if k not in _DATASET_NOT_TRAINING and v is not None}
    return run


def model_key(config: dict[str, Any]) -> str:
    """A short stable hash of :func:`canonical_run`: equal keys train the same model the same way."""
    text = json.dumps(canonical_run(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
