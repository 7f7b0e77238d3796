"""Ray Tune's ``OptunaSearch``, told what the Optuna driver tells: constraints and duplicates.

``OptunaSearch.on_trial_complete`` tells the study the reported metrics named by ``metric``, or a
pruned/failed state when one is missing. The Optuna driver tells more
(:func:`~repnas.search._tell.optuna_answer`): the ``over_budget`` and ``duplicate`` constraints, an
infeasible point as a complete trial over budget, a duplicate as infeasible-by-duplication. This
subclass does the same from the reported row, so NSGA-II, TPE and GP learn the same things under
either backend, and ``study.best_trials`` lists each model once. A Ray trial knows neither its
number nor that of the trial it duplicates (it names that one by its Tune trial id): the searcher,
in the driver, numbers trials as the driver does and records those numbers (``trial``,
``duplicate_of``) and the rest of the trial's row as user attributes. Imported only with Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from repnas.runs._rundir import TRIAL_COLUMNS
from repnas.search._tell import optuna_answer
from repnas.search.ray._results import stopped_early


def row_user_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """A trial's final Tune report as the study trial's user attributes, as the Optuna backend
    stores its row: test accuracy, config (a dict), status, times, worker, and ``trial_dir`` (its
    ``trials/<n>`` folder), for optuna-dashboard and ``repnas report STUDY``. Non-finite numbers
    are left out (storages refuse NaN in JSON)."""
    attrs = {k: v for k, v in result.items() if k in TRIAL_COLUMNS and k != "config"
             and not (isinstance(v, float) and not math.isfinite(v))}
    if result.get("config_json"):
        attrs["config"] = json.loads(result["config_json"])
    if result.get("trial") is not None:
        attrs["trial_dir"] = f"trials/{int(result['trial'])}"
    return attrs


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose completed trials are told through :func:`optuna_answer`."""

    def __init__(self, *args, directions: list[str], numbers: dict[str, int] | None = None,
                 on_failed: Callable[[str], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._directions = list(directions)
        self._on_failed = on_failed  # called with the Tune trial id of a trial that failed for good
        self._numbers = dict(numbers or {})  # Tune trial id -> the driver's trial number
        self._next = max(self._numbers.values(), default=-1) + 1

    def suggest(self, trial_id: str):
        """Also number the trial: after the numbers given so far, in the order of suggests (which is
        the order of the study's trials). The number and the Tune trial id go on the study's trial,
        where the driver reads them (:func:`~repnas.search.ray._results.searcher_numbers`)."""
        config = super().suggest(trial_id)
        if isinstance(config, dict) and trial_id not in self._numbers:
            self._numbers[trial_id] = self._next
            self._next += 1
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:  # the driver reads the numbers from here (searcher_numbers)
                ot_trial.set_user_attr("trial", self._numbers[trial_id])
                ot_trial.set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False):
        if error and self._on_failed is not None:  # Tune gave up on it (past --max-failures)
            self._on_failed(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if stopped_early(result, failed=error):
            result = {**result, "status": "pruned"}
        if not result or "status" not in result or ot_trial is None or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)  # no row (the trial died): Ray's default
            return
        names = list(self.metric) if isinstance(self.metric, list) else [self.metric]
        if "trial" not in result and trial_id in self._numbers:  # a Ray trial does not know its number
            result = {**result, "trial": self._numbers[trial_id]}
        if isinstance(result.get("duplicate_of"), str):  # the Tune trial id of the trial it reused
            result = {**result, "duplicate_of": self._numbers.get(result["duplicate_of"], -1)}
        state, values, constraints = optuna_answer(result, names, self._directions)
        for key, value in constraints.items():
            ot_trial.set_constraint(key, value)
        for key, value in row_user_attrs(result).items():  # as the Optuna driver's _tell stores them
            ot_trial.set_user_attr(key, value)
        self._ot_study.tell(ot_trial, values, state=TrialState[state])
        self._completed_trials.add(trial_id)
