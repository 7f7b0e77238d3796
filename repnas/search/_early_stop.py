"""Multi-objective early stopping: successive-halving rules for a search with several objectives.

Optuna's pruners work on single-objective studies only, and in a multi-objective search a cheap
model that learns slowly must not be stopped because an expensive one learns fast: it may still be
on the front. Two rules (``--early-stop``, off by default):

* ``sha``: successive halving among *peers*, the trials whose forward FLOPs are within a factor of 2
  (same ``round(log2(flops))`` bucket). At rungs ``min_epoch * eta**k`` a trial records its
  validation accuracy on the study (user attribute ``rung.<epoch>``) and stops when at least ``eta``
  peers reached that rung and it is not in their top ``1 / eta`` (asynchronous successive halving,
  Li et al. 2020, applied per cost bucket).
* ``moasha``: :class:`MultiObjectiveASHA`, asynchronous successive halving whose ranking at a rung
  is a non-dominated sort on (accuracy at the rung, params, FLOPs), in the spirit of Syne Tune's
  ``MOASHA`` (Salinas et al., "A multi-objective perspective on jointly tuning hardware and
  hyperparameters", 2021). A cheap model is never outranked by an expensive one on accuracy alone:
  it is only stopped when other trials are at least as accurate at the rung *and* at least as cheap.

:class:`MultiObjectiveASHA` is backend-independent: it knows nothing of Optuna or Ray, only
``on_epoch(trial_key, epoch, metrics) -> "continue" | "stop"`` and ``record(...)`` (learn a result
seen elsewhere). :class:`StudyRungs` runs it for one trial of an Optuna study, whose state it
rebuilds at every rung from what the study stores (every trial's intermediate values, one per epoch,
and its ``params``/``flops`` user attributes), so several ``--workers`` processes and a ``--resume``
share one ranking without any state of their own.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

RULES = ("none", "sha", "moasha")
#: the rules the Ray backend applies (``sha`` ranks through study user attributes that only the
#: Optuna driver's trials write)
RAY_RULES = ("none", "moasha")
CONTINUE, STOP = "continue", "stop"

#: (metric name, direction) of what ``moasha`` ranks by, in this order.
MOASHA_OBJECTIVES: tuple[tuple[str, str], ...] = (
    ("val_accuracy", "maximize"), ("params", "minimize"), ("flops", "minimize"))


# --------------------------------------------------------------------------- ranking
def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """The non-dominated front index of each row of ``points`` (all objectives minimised): 0 for
    the rows no other row dominates, 1 for those only front 0 dominates, and so on."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    ranks = np.full(n, -1)
    level, left = 0, np.arange(n)
    while left.size:
        sub = points[left]
        # row i is dominated if some row j is <= everywhere and < somewhere
        le = np.all(sub[None, :, :] <= sub[:, None, :], axis=2)
        lt = np.any(sub[None, :, :] < sub[:, None, :], axis=2)
        dominated = np.any(le & lt, axis=1)
        ranks[left[~dominated]] = level
        left = left[dominated]
        level += 1
    return ranks


def crowding_distances(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row within its set (larger = more isolated; the extremes
    of each objective get infinity), on objectives scaled to [0, 1]."""
    points = np.asarray(points, dtype=float)
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        column = points[order, j]
        span = column[-1] - column[0]
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def priority_order(points: np.ndarray) -> np.ndarray:
    """Row indices best first: by non-dominated front, then by crowding distance (so a front that
    must be cut keeps its extremes and its spread), then lexicographically by the objectives (the
    first, accuracy, is the one training changes), then by row index (deterministic)."""
    points = np.asarray(points, dtype=float)
    ranks = nondominated_ranks(points)
    crowding = np.zeros(len(points))
    for level in np.unique(ranks):
        members = np.flatnonzero(ranks == level)
        crowding[members] = crowding_distances(points[members])
    key = [(ranks[i], -crowding[i], *points[i], i) for i in range(len(points))]
    return np.array(sorted(range(len(points)), key=key.__getitem__), dtype=int)


# --------------------------------------------------------------------------- the rule
class MultiObjectiveASHA:
    """Asynchronous successive halving ranked by non-dominated sorting (backend-independent).

    Rungs are at epochs ``min_epoch * eta**k`` below ``max_epochs``. When a trial reaches a rung its
    objective vector (``metrics`` at that epoch) is recorded there; it goes on while fewer than
    ``eta`` other trials have reached the rung (too little to judge: the first trials always run to
    the end), and otherwise only if it is among the best ``ceil(n / eta)`` of the ``n`` recorded
    vectors in :func:`priority_order` (Syne Tune keeps a rank fraction up to ``1 / eta`` likewise).
    Everything it knows is in ``rungs``: a backend that cannot keep the object alive (several
    processes, a resumed search) rebuilds it with :meth:`record`.
    """

    def __init__(self, max_epochs: int, eta: int = 3, min_epoch: int = 1,
                 objectives: Sequence[tuple[str, str]] = MOASHA_OBJECTIVES):
        if eta < 2 or min_epoch < 1:
            raise ValueError(f"successive halving needs eta >= 2 and min_epoch >= 1, got {eta}, {min_epoch}")
        for name, direction in objectives:
            if direction not in ("maximize", "minimize"):
                raise ValueError(f"objective {name}: direction must be maximize or minimize, not {direction}")
        self.max_epochs = int(max_epochs)
        self.eta = int(eta)
        self.objectives = [(str(n), str(d)) for n, d in objectives]
        self.rungs: dict[int, dict[Hashable, tuple[float, ...]]] = {}
        epoch = int(min_epoch)
        while epoch < self.max_epochs:
            self.rungs[epoch] = {}
            epoch *= self.eta

    @property
    def metric_names(self) -> list[str]:
        return [name for name, _ in self.objectives]

    def _vector(self, metrics: Mapping[str, Any]) -> tuple[float, ...]:
        """The metrics as a point to minimise (maximised objectives negated); NaN sorts last."""
        missing = [n for n in self.metric_names if n not in metrics]
        if missing:
            raise ValueError(f"early stopping needs {', '.join(missing)} in the epoch's metrics")
        vector = []
        for name, direction in self.objectives:
            value = float(metrics[name])
            value = -value if direction == "maximize" else value
            vector.append(value if math.isfinite(value) else math.inf)
        return tuple(vector)

    def record(self, trial_key: Hashable, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Learn a trial's result at ``epoch`` without deciding anything (state recovery)."""
        if epoch in self.rungs:
            self.rungs[epoch][trial_key] = self._vector(metrics)

    def on_epoch(self, trial_key: Hashable, epoch: int, metrics: Mapping[str, Any]) -> str:
        """Record the trial's metrics after ``epoch`` (1-based) and say whether it goes on:
        :data:`CONTINUE` or :data:`STOP`."""
        if epoch not in self.rungs:
            return CONTINUE
        recorded = self.rungs[epoch]
        recorded.pop(trial_key, None)  # a trial trained again (a resumed search) replaces its result
        others = list(recorded.values())
        recorded[trial_key] = vector = self._vector(metrics)
        if len(others) < self.eta:
            return CONTINUE
        order = priority_order(np.array([*others, vector]))
        keep = math.ceil((len(others) + 1) / self.eta)
        return CONTINUE if len(others) in order[:keep] else STOP


# --------------------------------------------------------------------------- Optuna glue
class StudyRungs:
    """``moasha`` for one trial of an Optuna study: a ``report(epoch, metrics) -> bool`` callable.

    At a rung it rebuilds the rule's view of that rung from the study (every other trial's
    intermediate value at that epoch and its ``params``/``flops`` attributes, which
    :class:`~repnas.search._epochs.EpochReport` writes as the trials train), then asks the rule.
    Trials that reused another trial's result (``duplicate_of``) or were interrupted (their point
    is trained again under a new number) are left out, so no model is counted twice.
    """

    wants_flops = True

    def __init__(self, study, trial_number: int, total_epochs: int, eta: int = 3, min_epoch: int = 1):
        self.study = study
        self.number = trial_number
        self.rule = MultiObjectiveASHA(total_epochs, eta=eta, min_epoch=min_epoch)

    def sync(self, epoch: int) -> None:
        """Load every other trial's result at rung ``epoch`` from the study into the rule."""
        names = self.rule.metric_names
        for t in self.study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            if (t.number == self.number or epoch not in t.intermediate_values or attrs.get("duplicate_of") is not None
                    or attrs.get("interrupted") or not all(n in attrs for n in names[1:])):
                continue
            self.rule.record(t.number, epoch, {names[0]: t.intermediate_values[epoch],
                                               **{n: attrs[n] for n in names[1:]}})

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> bool:
        if epoch not in self.rule.rungs:
            return False
        self.sync(epoch)
        return self.rule.on_epoch(self.number, epoch, metrics) == STOP


class SuccessiveHalving:
    """``sha``: the stop rule of one trial (a ``report(epoch, metrics) -> bool`` callable)."""

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
        from repnas.runs._study import trial_id_of

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
    if search.early_stop == "moasha":
        return StudyRungs(study, trial_number, search.epochs)
    raise ValueError(f"unknown early stopping rule {search.early_stop!r}; choose one of {', '.join(RULES)}")
