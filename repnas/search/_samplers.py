"""The seeded Optuna sampler of a search, its state across resumes, and the points asked first.

Each worker has its own seeded sampler (``seed + worker``); a resumed worker gets back the sampler
it pickled (:func:`resumed_sampler`), a joining one a fresh seed (:func:`continuation_seed`), and a
new study over a range of budgets starts with budgets spread over the range (:func:`spread_budgets`).

Picklable NSGA-II:
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

import copy
import pickle
import threading

import optuna

from repnas._io import atomic_path
from repnas.errors import UserError
from repnas.runs._rundir import RunDir, SearchConfig

__all__ = [
    "NSGAIISampler",
    "adopt_sampler",
    "check_sampler_pickles",
    "continuation_seed",
    "default_population",
    "make_sampler",
    "resumed_sampler",
    "save_sampler",
    "search_population",
    "search_sampler",
    "spread_budgets",
    "worker_sampler",
]


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


def default_population(trials: int) -> int:
    """NSGA-II's population: a third of the trials (4..50), so a short search still evolves."""
    return max(4, min(50, trials // 3))


def search_population(search: SearchConfig) -> int:
    return search.population_size or default_population(search.trials)


def continuation_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The seed of a sampler that joins a study with ``trials_so_far`` trials: ``seed + worker`` for
    an empty study (a new search), else a fresh deterministic seed."""
    import numpy as np

    if trials_so_far == 0:
        return seed + worker
    return int(np.random.SeedSequence([seed, worker, trials_so_far]).generate_state(1)[0])


def worker_sampler(sampler, worker: int):
    """Worker ``worker``'s copy of a given sampler: the object itself for worker 0, a reseeded deep
    copy for the others (``BaseSampler.reseed_rng``, as Optuna does for ``n_jobs``)."""
    if sampler is None or worker == 0:
        return sampler
    clone = copy.deepcopy(sampler)
    clone.reseed_rng()
    return clone


def spread_budgets(study, search: SearchConfig) -> list[int]:
    """Enqueue the first points of a new study at budgets spread over a searched budget (levels:
    each level; a range: log-spaced from its low to its high end), the other knobs left to the
    sampler. A front across budgets needs both ends: left to chance, a first generation of four
    draws often misses one, and a sampler that also minimises parameters rarely goes back up."""
    import numpy as np

    from repnas.spaces import BUDGET_PARAM

    spec = search.budget_spec
    if not spec.searched:
        return []
    count = min(search.trials, search_population(search))
    if spec.levels:
        budgets = list(spec.levels)[:count] if len(spec.levels) <= count else [
            spec.levels[round(k)] for k in np.linspace(0, len(spec.levels) - 1, count)]
    else:
        budgets = [round(float(b)) for b in np.geomspace(spec.low, spec.high, max(2, count))]
    for budget in budgets:
        study.enqueue_trial({BUDGET_PARAM: budget}, skip_if_exists=True)
    return budgets


def save_sampler(run: RunDir, worker: int, sampler) -> None:
    """Pickle worker ``worker``'s sampler after each ask. Optuna's storage keeps trials, not sampler
    state (its RNG, NSGA-II's generation bookkeeping); Optuna's recipe for a reproducible resume is
    to pickle the sampler and pass it back (tutorial "Saving/Resuming Study with RDB Backend")."""
    (run.root / "samplers").mkdir(exist_ok=True)
    with atomic_path(run.root / "samplers" / f"worker{worker}.pkl") as tmp, open(tmp, "wb") as handle:
        pickle.dump(sampler, handle)


def check_sampler_pickles(search: SearchConfig, run: RunDir) -> None:
    """Every ``samplers/worker<k>.pkl`` of a run to resume loads: checked before the resume writes
    anything. A damaged pickle (random bytes raise ``OverflowError``, ``ValueError``, ... as often as
    ``UnpicklingError``) was found by the first worker after ``search.yaml`` had been rewritten,
    and ended in a traceback; a missing pickle is fine (an older run, a new worker). A Python sampler
    object (``custom:``) is read by ``repnas.search._api._pickled_sampler`` instead."""
    if search.sampler.startswith("custom:"):
        return
    for path in sorted((run.root / "samplers").glob("worker*.pkl")):
        try:
            with open(path, "rb") as handle:
                pickle.load(handle)
        except Exception as exc:  # any failure of the unpickler means a damaged file
            raise UserError(f"cannot resume: sampler state {path} is damaged ({type(exc).__name__}); delete it "
                            "to resume with a fresh sampler (the study's trials are kept)") from None


def resumed_sampler(search: SearchConfig, run: RunDir, worker: int, trials_so_far: int):
    """Worker ``worker``'s sampler for a study that already has trials: its pickle, so a resumed
    search proposes what the uninterrupted one would have; without a readable pickle (an older
    run, a new worker), a fresh sampler on a seed drawn from (seed, worker, trials so far), so it
    does not replay the points the first ``seed + worker`` sampler proposed."""
    path = run.root / "samplers" / f"worker{worker}.pkl"
    try:
        with open(path, "rb") as handle:
            sampler = pickle.load(handle)
        adopted = adopt_sampler(sampler, make_sampler(search.sampler, 0, search_population(search)))
        if adopted is not None:
            return adopted
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    return make_sampler(search.sampler, continuation_seed(search.seed, worker, trials_so_far),
                        search_population(search))


def search_sampler(search: SearchConfig, worker: int = 0, given=None):
    """Worker ``worker``'s sampler: ``given`` (a sampler object passed from Python) as is, else the
    search's own, seeded ``seed + worker``."""
    if given is not None:
        return given
    return make_sampler(search.sampler, search.seed + worker, search_population(search))
