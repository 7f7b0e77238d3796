"""Multi-objective early stopping: successive halving among trials of similar cost (off by default).

Optuna's pruners work on single-objective studies only, and in a multi-objective search a cheap
model that learns slowly must not be stopped because an expensive one learns fast: it may still be
on the front. So the rule compares a trial only with its *peers*, the trials whose forward FLOPs are
within a factor of 2 (same ``round(log2(flops))`` bucket; the parameter count is no help here, the
budget solver puts every candidate at about the same count). At rungs ``min_epoch * eta**k`` a trial
records its validation accuracy on the study (user attribute ``rung.<epoch>``) and stops when at
least ``eta`` peers reached that rung and it is not in their top ``1 / eta`` (asynchronous
successive halving, Li et al. 2020, applied per cost bucket).
"""

from __future__ import annotations

import math
from typing import Any

RULES = ("none", "sha")


class SuccessiveHalving:
    """The stop rule of one trial (a ``report(epoch, metrics) -> bool`` callable)."""

    wants_flops = True

    def __init__(self, study, trial_number: int, total_epochs: int, eta: int = 3, min_epoch: int = 1):
        self.study = study
        self.number = trial_number
        self.eta = eta
        self.rungs = set()
        epoch = min_epoch
        while epoch < total_epochs:
            self.rungs.add(epoch)
            epoch *= eta

    def bucket(self, flops: float) -> int:
        return round(math.log2(max(flops, 1.0)))

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> bool:
        if epoch not in self.rungs or "flops" not in metrics:
            return False
        accuracy = float(metrics["val_accuracy"])
        bucket = self.bucket(float(metrics["flops"]))
        from repnas.search._optuna_driver import trial_id_of

        storage = self.study._storage
        trial_id = trial_id_of(self.study, self.number)
        storage.set_trial_user_attr(trial_id, f"rung.{epoch}", accuracy)
        storage.set_trial_user_attr(trial_id, "cost_bucket", bucket)
        peers = [t.user_attrs[f"rung.{epoch}"] for t in self.study.get_trials(deepcopy=False)
                 if t.number != self.number and f"rung.{epoch}" in t.user_attrs
                 and t.user_attrs.get("cost_bucket") == bucket]
        if len(peers) < self.eta:
            return False
        ranked = sorted([*peers, accuracy], reverse=True)
        keep = max(1, len(ranked) // self.eta)
        return accuracy < ranked[keep - 1]


def make_rule(search, study, trial_number: int):
    """The report callable of ``search.early_stop`` for one trial (None when off)."""
    if search.early_stop in ("none", "", None):
        return None
    if search.early_stop == "sha":
        return SuccessiveHalving(study, trial_number, search.epochs)
    raise ValueError(f"unknown early stopping rule {search.early_stop!r}; choose one of {', '.join(RULES)}")
