"""Ray Tune's ``OptunaSearch``, told what the Optuna driver tells: constraints and duplicates.

``OptunaSearch.on_trial_complete`` tells the study the reported metrics named by ``metric``, or a
pruned/failed state when one is missing. The Optuna driver tells more
(:func:`~repnas.search._tell.optuna_answer`): the ``over_budget`` and ``duplicate`` constraints, an
infeasible point as a complete trial over budget, a duplicate as infeasible-by-duplication. This
subclass does the same from the reported row, so NSGA-II, TPE and GP learn the same things under
either backend, and ``study.best_trials`` lists each model once. Imported only with Ray.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from repnas.search._tell import optuna_answer


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose completed trials are told through :func:`optuna_answer`."""

    def __init__(self, *args, directions: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self._directions = list(directions)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if not result or "status" not in result or ot_trial is None or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)  # no row (the trial died): Ray's default
            return
        names = list(self.metric) if isinstance(self.metric, list) else [self.metric]
        state, values, constraints = optuna_answer(result, names, self._directions)
        for key, value in constraints.items():
            ot_trial.set_constraint(key, value)
        for key in ("trial", "duplicate_of", "status"):  # so readers of the study can tell them apart
            if result.get(key) is not None:
                ot_trial.set_user_attr(key, result[key])
        self._ot_study.tell(ot_trial, values, state=TrialState[state])
        self._completed_trials.add(trial_id)
