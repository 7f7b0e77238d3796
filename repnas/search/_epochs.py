"""Every epoch of an Optuna trial into the study: learning curves where users look.

Optuna refuses ``trial.report`` in a multi-objective study (it raises: pruners are single-objective),
but its storage takes intermediate values for any trial, and optuna-dashboard plots them per trial.
So after each epoch :class:`EpochReport` writes

* the validation accuracy as the intermediate value at step ``epoch`` (1-based)
  (``storage.set_trial_intermediate_value``), so ``optuna.load_study(...).trials[n].intermediate_values``
  is the trial's accuracy curve, one value per epoch;
* the validation loss as the user attribute ``val_loss_curve`` (a list, element ``k`` = epoch
  ``k + 1``): a second intermediate series would have to share the steps of the first, and the
  dashboard and samplers read intermediate values as one metric;
* at the first epoch, the model's ``params`` and ``flops`` as user attributes (the finished row
  sets them again), so an early-stopping rule in another process can rank a running trial.

Then it asks the early-stopping rule, if any.
"""

from __future__ import annotations

import math
from typing import Any

#: user attribute holding a trial's validation loss per epoch
LOSS_CURVE = "val_loss_curve"


class EpochReport:
    """The ``report(epoch, metrics) -> bool`` callable of one trial of ``study`` (see module doc)."""

    def __init__(self, study, trial_number: int, rule=None):
        from repnas.runs._study import trial_id_of

        self.study = study
        self.storage = study._storage
        self.trial_id = trial_id_of(study, trial_number)
        self.rule = rule
        self.losses: list[float | None] = []

    @property
    def wants_flops(self) -> bool:
        """Whether the trial runner should add ``params``/``flops`` to every epoch's metrics."""
        return bool(getattr(self.rule, "wants_flops", False))

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> bool:
        accuracy = float(metrics.get("val_accuracy", math.nan))
        self.storage.set_trial_intermediate_value(self.trial_id, int(epoch), accuracy)
        loss = float(metrics.get("val_loss", math.nan))
        self.losses.append(loss if math.isfinite(loss) else None)
        self.storage.set_trial_user_attr(self.trial_id, LOSS_CURVE, list(self.losses))
        if len(self.losses) == 1:
            for key in ("params", "flops"):
                if key in metrics:
                    self.storage.set_trial_user_attr(self.trial_id, key, int(metrics[key]))
        return bool(self.rule(epoch, metrics)) if self.rule is not None else False

    def copy_from(self, number: int) -> None:
        """Give this trial the curve of trial ``number`` (its result was reused: same model, same
        seed, so the same curve), so every complete trial has one value per epoch."""
        from repnas.runs._study import trial_id_of

        source = self.storage.get_trial(trial_id_of(self.study, number))
        for step, value in sorted(source.intermediate_values.items()):
            self.storage.set_trial_intermediate_value(self.trial_id, step, value)
        if LOSS_CURVE in source.user_attrs:
            self.storage.set_trial_user_attr(self.trial_id, LOSS_CURVE, source.user_attrs[LOSS_CURVE])
