"""What the sampler is told about a finished trial: its state, objective values and constraints.

Both drivers tell Optuna through :func:`optuna_answer` (the Optuna driver with ``study.tell``, the
Ray driver through its ``OptunaSearch``), so both samplers learn the same things:

* ``complete``: the objective values; constraints ``over_budget = params / budget - 1`` (<= 0) and
  ``duplicate = 0``.
* ``infeasible`` (over budget, never trained): told COMPLETE with ``over_budget > 0`` (how far the
  smallest model of that shape is over the budget), so NSGA-II, TPE and GP, which read constraints
  only from complete (and, for TPE, pruned) trials, learn to avoid the region: NSGA-II ranks it
  after every feasible trial (constrained domination), TPE puts it in its "bad" group, GP's
  constraint model predicts it infeasible. Its objective values are pessimistic placeholders
  (accuracy 0, the smallest model's costs); ``study.best_trials`` skips infeasible trials.
* a duplicate (``duplicate_of``, the model was reused from an earlier trial): the reused state and
  values, with ``duplicate = 1``. Why not FAIL, which samplers ignore: a sampler that learns nothing
  from a proposal proposes it again (TPE's density and GP's acquisition do not move), the loop the
  Optuna FAQ on duplicated parameters warns about. Told infeasible-by-duplication it learns that
  the proposal brings nothing new, while the original trial keeps telling it how good the model
  is; and ``study.best_trials`` (feasible trials only) lists each model once.
* ``failed``: FAIL, no values; ``pruned``: PRUNED.

Constraints are set with ``optuna.Trial.set_constraint`` (Optuna 5's replacement of the samplers'
deprecated ``constraints_func``; the samplers read both from the same trial attributes).
"""

from __future__ import annotations

import math
from typing import Any

#: the constraint names set on every trial that is not FAIL
CONSTRAINTS = ("over_budget", "duplicate")


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def optuna_answer(row: dict[str, Any], names: list[str], directions: list[str]):
    """``(state, values, constraints)`` for a result row: state ``COMPLETE`` | ``PRUNED`` | ``FAIL``
    (an Optuna ``TrialState`` name), values a list (None unless COMPLETE), constraints a dict."""
    status = row.get("status")
    duplicate = _finite(row.get("duplicate_of")) is not None
    params, budget = _finite(row.get("params")), _finite(row.get("budget"))
    constraints = {
        "over_budget": params / budget - 1.0 if params is not None and budget else 0.0,
        "duplicate": 1.0 if duplicate else 0.0,
    }
    if status == "complete":
        values = [_finite(row.get(n)) for n in names]
        if all(v is not None for v in values):
            return "COMPLETE", values, constraints
        return "FAIL", None, {}
    if status == "infeasible":
        constraints["over_budget"] = max(constraints["over_budget"], 1e-9)
        values = [0.0 if d == "maximize" else (_finite(row.get(n)) or 0.0)
                  for n, d in zip(names, directions, strict=True)]
        return "COMPLETE", values, constraints
    if status == "pruned":
        return "PRUNED", None, constraints
    return "FAIL", None, {}


def tell(study, trial, row: dict[str, Any], names: list[str], directions: list[str]) -> str:
    """Set the constraints on ``trial`` (an ``optuna.Trial``) and tell the study; returns the state."""
    from optuna.trial import TrialState

    state, values, constraints = optuna_answer(row, names, directions)
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    if state == "COMPLETE":
        study.tell(trial, values)
    else:
        study.tell(trial, state=TrialState[state])
    return state
