"""The plain model a search over a user's model repeats: the reference point of its report.

A search of ``repnas search --model SPEC`` (a model space, ``repnas.spaces._model_space``) asks how
much of the model's own parameter count a repeated version keeps and what it loses; the report
therefore marks the plain model's parameters and FLOPs on its accuracy-vs-cost figures and says how
the best trial compares. The plain model is rebuilt from the run's ``search.yaml`` (on the meta
device for its count, once on CPU for its FLOPs), so the report needs the model's code where it runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from repnas.analysis._load import Run


def model_reference(run: Run) -> dict[str, Any] | None:
    """``{model, dataset, params, flops}`` of a model-space run's plain model; ``{model, error}``
    where it cannot be rebuilt; None for a run over a built-in family."""
    space = run.config.get("space")
    if not isinstance(space, dict) or "model" not in space:
        return None
    dataset = str(run.config.get("dataset") or space.get("dataset") or "cifar10")
    try:
        from repnas.spaces import SearchSpace

        model_space = SearchSpace.from_dict(dict(space), "space of search.yaml")
        return {"model": model_space.model, "dataset": dataset, "params": model_space.plain_params(dataset),
                "flops": model_space.plain_flops(dataset)}
    except Exception as exc:  # a moved file or a missing package: the report still renders
        return {"model": space["model"], "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def reference_lines(fig, references: Sequence[dict[str, Any]], x: str) -> None:
    """A dashed vertical line per plain model at its ``x`` (params or flops)."""
    for ref in references:
        value = ref.get(x)
        if value:
            fig.add_vline(x=float(value), line={"dash": "dash", "color": "#555", "width": 1},
                          annotation_text=f"plain {ref['model'].rpartition(':')[2]}: {value:,} {x}",
                          annotation_position="top left")


def reference_note(run: Run, ref: dict[str, Any]) -> str:
    """One sentence: the plain model's counts and how the best feasible trial compares."""
    if "error" in ref:
        return f"Plain model {ref['model']}: not rebuilt here ({ref['error']})."
    text = (f"Reference: the plain {ref['model']} on {ref['dataset']} has {ref['params']:,} trainable parameters "
            f"and {ref['flops']:,} FLOPs per image; every trial keeps its physical shape.")
    trials = run.trials
    if len(trials) and "status" in trials:
        done = trials[trials["status"] == "complete"]
        if len(done) and done["val_accuracy"].notna().any():
            best = done.loc[done["val_accuracy"].idxmax()]
            params = float(best["params"])
            if math.isfinite(params):
                text += (f" The best trial ({int(best['trial'])}, val accuracy {float(best['val_accuracy']):.4f}) "
                         f"has {int(params):,} parameters, {100 * params / ref['params']:.1f}% of the plain count.")
    return text
