"""Claims on models: which trial trains each model, kept in the search's Optuna storage.

A model is named by :func:`repnas.search._canonical.model_key` (the model a point builds, not its
knob values). The claims live in the study's user attributes (``model.<key>``): the first trial to
claim a key trains it; a later trial whose point maps to the same key waits for that result (if it
is still training) and reuses it (``duplicate_of``) without training. Both drivers use them under a
study-wide lock (the Optuna driver's study lock; a Ray trial's storage lock,
:func:`~repnas.runs._workers.storage_lock`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

#: study user attribute prefix of a model claim
CLAIM_PREFIX = "model."
#: the row fields a duplicate copies from the trial it reuses
REUSED_FIELDS = ("status", "val_accuracy", "test_accuracy", "params", "physical_params", "flops",
                 "train_seconds", "epochs", "error")


def _claimant(trial: int | str) -> int | str:
    """A claimant: a trial number (the Optuna driver), or a Ray Tune trial id (a Ray trial does not
    know the number the driver will give it; :mod:`repnas.search.ray._results` translates)."""
    return trial if isinstance(trial, str) else int(trial)


def _same(a: int | str, b: int | str) -> bool:
    return str(_claimant(a)) == str(_claimant(b))


class ModelClaims:
    """Which trial trains each model (by :func:`model_key`), kept in the study's user attributes.

    ``lock`` is a context manager factory serialising claimants (a study-wide lock, see above),
    so two workers never both claim one key. A claim is ``{"trial": n}`` while trial n trains and
    gains ``"row"`` (the result's :data:`REUSED_FIELDS`) when :meth:`finish` records the result.
    """

    def __init__(self, study, lock: Callable[[], Any]):
        self.study = study
        self.lock = lock

    def _get(self, key: str) -> dict | None:
        return self.study.user_attrs.get(CLAIM_PREFIX + key)

    def _set(self, key: str, value: dict | None) -> None:
        self.study.set_user_attr(CLAIM_PREFIX + key, value)

    def acquire(self, key: str, trial: int, alive: Callable[[int], bool] | None = None,
                timeout: float = 6 * 3600.0, poll: float = 0.5) -> dict | None:
        """Claim ``key`` for trial ``trial``: None when the caller is to train it, else the finished
        claim ``{"trial", "row"}`` of the trial that trained it (waiting while that one trains).

        A claim of the same trial number is the caller's own (a restored Ray trial). A holder that
        ``alive(number)`` says is gone (interrupted, killed), or that has not finished within
        ``timeout`` seconds, loses its claim and the caller trains the model.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.lock():
                held = self._get(key)
                if held is not None and "row" in held:
                    return held
                mine = held is None or _same(held["trial"], trial)
                stale = not mine and ((alive is not None and not alive(held["trial"]))
                                      or time.monotonic() > deadline)
                if mine or stale:
                    self._set(key, {"trial": _claimant(trial)})
                    return None
            time.sleep(poll)

    def finish(self, key: str, trial: int, row: dict[str, Any]) -> None:
        """Record trial ``trial``'s result for the trials that reuse it."""
        result = {k: row[k] for k in REUSED_FIELDS
                  if k in row and not (isinstance(row[k], float) and not math.isfinite(row[k]))}
        with self.lock():
            self._set(key, {"trial": _claimant(trial), "row": result})

    def release(self, key: str, trial: int) -> None:
        """Drop trial ``trial``'s unfinished claim (it was interrupted), so the model is trained again."""
        with self.lock():
            held = self._get(key)
            if held is not None and _same(held["trial"], trial) and "row" not in held:
                self._set(key, None)

    def release_all(self, trial: int | str, finished: bool = False) -> list[str]:
        """Drop every unfinished claim of trial ``trial`` (it ended without a result: a Ray trial
        that failed more often than ``--max-failures`` allows), so a later proposal of its model
        trains it instead of waiting for it; with ``finished`` its finished claims too (an
        interrupted trial whose point is re-enqueued, see ``recover_interrupted``). Returns the
        keys dropped."""
        dropped = []
        with self.lock():
            for name, held in self.study.user_attrs.items():
                if (name.startswith(CLAIM_PREFIX) and held and (finished or "row" not in held)
                        and _same(held["trial"], trial)):
                    self._set(name[len(CLAIM_PREFIX):], None)
                    dropped.append(name[len(CLAIM_PREFIX):])
        return dropped


class TrialModels:
    """:class:`ModelClaims` seen from one trial: what :func:`~repnas.search._runner.run_trial` asks."""

    def __init__(self, claims: ModelClaims, trial: int | str, alive: Callable[[Any], bool] | None = None):
        self.claims, self.trial, self.alive = claims, _claimant(trial), alive

    def acquire(self, key: str) -> dict | None:
        return self.claims.acquire(key, self.trial, self.alive)

    def finish(self, key: str, row: dict[str, Any]) -> None:
        self.claims.finish(key, self.trial, row)
