"""``--early-stop moasha`` under Ray: the backend-independent rule as a Tune ``TrialScheduler``.

Tune's own schedulers (ASHA, HyperBand, median stopping) rank trials by one metric; the search has
several objectives, and a cheap model that learns slowly must not be stopped because an expensive
one learns fast. :class:`MultiObjectiveScheduler` hands every per-epoch report of a trial
(``val_accuracy`` and, while early stopping is on, ``params`` and ``flops``: see
:mod:`repnas.search._ray_trial`) to one :class:`~repnas.search._early_stop.MultiObjectiveASHA`
and answers Tune ``STOP`` where the rule says stop. It subclasses ``FIFOScheduler`` (trials run in
the order the searcher proposes them) and overrides only ``on_trial_result``, Tune's documented
hook for stopping a trial from its reports.

A stopped trial never sends its final report (Tune stops its actor), so the driver does what the
trial would have done: ``on_stop`` (given by the driver) records the model's pruned result on its
claim in the study, so a later proposal of the same model reuses it instead of waiting for it; the
searcher tells the study PRUNED and the driver writes a ``pruned`` row
(:mod:`repnas.search._ray_results`). The driver keeps one rule for all the Tune experiments of a
search (top-ups after duplicates), so their trials are ranked together. Imported only with Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from repnas.search._early_stop import STOP, MultiObjectiveASHA


class MultiObjectiveScheduler(FIFOScheduler):
    """Stops a Tune trial where :class:`MultiObjectiveASHA` says so at one of its rungs."""

    def __init__(self, rule: MultiObjectiveASHA,
                 on_stop: Callable[[str, dict[str, Any]], None] | None = None):
        super().__init__()
        self.rule = rule
        self.on_stop = on_stop
        self.stopped: list[str] = []  # Tune trial ids, in the order they were stopped

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        epoch = result.get("epoch")
        if "status" in result or epoch is None:  # a final report (or a reused model's only one)
            return TrialScheduler.CONTINUE
        if any(name not in result for name in self.rule.metric_names):
            return TrialScheduler.CONTINUE  # no costs in the report: nothing to rank by
        if self.rule.on_epoch(trial.trial_id, int(epoch), result) != STOP:
            return TrialScheduler.CONTINUE
        self.stopped.append(trial.trial_id)
        if self.on_stop is not None:
            self.on_stop(trial.trial_id, dict(result))
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {e}: {len(r)}" for e, r in self.rule.rungs.items())
        return f"moasha (eta {self.rule.eta}); trials at rungs {rungs or 'none'}; stopped {len(self.stopped)}"
