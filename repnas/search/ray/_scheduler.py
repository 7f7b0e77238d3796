"""``--early-stop moasha`` under Ray: the backend-independent rule as a Tune ``TrialScheduler``.

Tune's own schedulers (ASHA, HyperBand, median stopping) rank trials by one metric; the search has
several objectives, and a cheap model that learns slowly must not be stopped because an expensive
one learns fast. :class:`MultiObjectiveScheduler` hands every per-epoch report of a trial
(``val_accuracy`` and, while early stopping is on, ``params`` and ``flops``: see
:mod:`repnas.search.ray._trial`) to one :class:`~repnas.search._early_stop.MultiObjectiveASHA`
and answers Tune ``STOP`` where the rule says stop. It subclasses ``FIFOScheduler`` (trials run in
the order the searcher proposes them) and overrides only ``on_trial_result``, Tune's documented
hook for stopping a trial from its reports.

A stopped trial never sends its final report (Tune stops its actor), so the driver does what the
trial would have done: ``on_stop`` (given by the driver) records the model's pruned result on its
claim in the study, so a later proposal of the same model reuses it instead of waiting for it; the
searcher tells the study PRUNED and the driver writes a ``pruned`` row
(:mod:`repnas.search.ray._results`).

Before it decides anything, a scheduler learns every per-epoch report stored under the run's Tune
storage (``result.json`` of each trial, :func:`~repnas.search.ray._results.epoch_reports`). So the
trials of all the Tune experiments of a search (top-ups after duplicates) are ranked together, and
so is a restored experiment: Tune does not save a scheduler with its experiment state, and
``Tuner.restore`` (``--resume`` after the driver died) unpickles the one the experiment started
with, whose rungs were empty then. Imported only with Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from repnas.search._early_stop import STOP, MultiObjectiveASHA


class MultiObjectiveScheduler(FIFOScheduler):
    """Stops a Tune trial where :class:`MultiObjectiveASHA` says so at one of its rungs."""

    def __init__(self, rule: MultiObjectiveASHA,
                 on_stop: Callable[[str, dict[str, Any]], None] | None = None,
                 history: tuple[str, str] | None = None):
        """``history``: ``(tune_storage, study)``, where the search's Tune experiments live; their
        stored reports are learned (:meth:`learn_history`) before the first decision."""
        super().__init__()
        self.rule = rule
        self.on_stop = on_stop
        self.history = history
        self.learned = history is None
        self.stopped: list[str] = []  # Tune trial ids, in the order they were stopped

    def __setstate__(self, state: dict[str, Any]) -> None:  # unpickled by Tuner.restore: learn again
        self.__dict__.update(state)
        self.learned = self.history is None

    def learn_history(self) -> int:
        """Record every stored per-epoch report of the search's experiments on the rule (a result
        the rule holds already is recorded again, unchanged); returns how many were recorded."""
        from repnas.search.ray._results import epoch_reports, experiment_paths

        count = 0
        for experiment in experiment_paths(*self.history) if self.history else []:
            for trial_id, report in epoch_reports(experiment):
                if "status" not in report and all(name in report for name in self.rule.metric_names):
                    self.rule.record(trial_id, int(report["epoch"]), report)
                    count += 1
        self.learned = True
        return count

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        epoch = result.get("epoch")
        if "status" in result or epoch is None:  # a final report (or a reused model's only one)
            return TrialScheduler.CONTINUE
        if any(name not in result for name in self.rule.metric_names):
            return TrialScheduler.CONTINUE  # no costs in the report: nothing to rank by
        if not self.learned:
            self.learn_history()
        if self.rule.on_epoch(trial.trial_id, int(epoch), result) != STOP:
            return TrialScheduler.CONTINUE
        self.stopped.append(trial.trial_id)
        if self.on_stop is not None:
            self.on_stop(trial.trial_id, dict(result))
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {e}: {len(r)}" for e, r in self.rule.rungs.items())
        return f"moasha (eta {self.rule.eta}); trials at rungs {rungs or 'none'}; stopped {len(self.stopped)}"
