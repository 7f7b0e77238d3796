"""The seeded Optuna samplers a search runs, made to survive a pickle.

A search pickles its sampler after every ask (so ``--resume`` proposes what an uninterrupted run
would, Optuna's own recipe) and Ray's ``Tuner`` pickles it inside ``OptunaSearch``. Optuna 5.1 gave
its genetic samplers a ``threading.Lock`` (``_thread_lock``, guarding the generation cache) and no
``__getstate__``, so ``pickle.dumps(NSGAIISampler())`` raises ``cannot pickle '_thread.lock'``. The
subclass here drops the lock when pickled and makes a new one when loaded; everything else, the RNG
and the generation cache, is Optuna's own state. It keeps Optuna's class name on purpose: Optuna keys
a trial's generation by the sampler's class name (``NSGAIISampler:generation``), so a study started
by plain Optuna and resumed by repnas, or the other way round, reads the same generations.
"""

from __future__ import annotations

import threading

import optuna

from repnas.errors import UserError

__all__ = ["NSGAIISampler", "adopt_sampler", "make_sampler"]


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable under every Optuna release repnas admits (see the module)."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()  # unused by an Optuna release without one


def make_sampler(name: str, seed: int, population_size: int):
    """The explicit, seeded sampler of a search: NSGA-II (default), TPE, GP or random."""
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; choose nsga2, tpe, gp or random")


def adopt_sampler(loaded, fresh):
    """``loaded`` (a sampler unpickled from a run directory) if it is the kind ``fresh`` is, brought
    up to this Optuna release, else None. A pickle of plain Optuna NSGA-II (repnas before this
    module) becomes the picklable subclass; attributes a newer Optuna added get ``fresh``'s values
    (its empty caches and lock), so a run started under one Optuna release resumes under the next
    with its RNG and generations intact."""
    if type(loaded).__name__ != type(fresh).__name__ or not isinstance(fresh, type(loaded)):
        return None
    if isinstance(fresh, NSGAIISampler) and type(loaded) is not NSGAIISampler:
        loaded.__class__ = NSGAIISampler
    for key, value in vars(fresh).items():
        loaded.__dict__.setdefault(key, value)
    return loaded
