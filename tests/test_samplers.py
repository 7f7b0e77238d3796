"""The search's samplers survive a pickle (a resume, Ray's Tuner) under every Optuna it admits."""

import pickle

import optuna
import pytest

from repnas.search._samplers import NSGAIISampler, adopt_sampler, make_sampler


def _objective(trial: optuna.Trial) -> tuple[float, float]:
    x, y = trial.suggest_float("x", 0, 1), trial.suggest_int("y", 0, 9)
    return x + y, x * y


def _proposals(study: optuna.Study, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, _objective(trial))
        out.append(trial.params)
    return out


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random"])
def test_a_pickled_sampler_proposes_what_the_original_would(name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make = lambda sampler: optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)  # noqa: E731
    original = make_sampler(name, 3, 4)
    study = make(original)
    _proposals(study, 6)
    copy = pickle.loads(pickle.dumps(original))
    twin = make(copy)
    for trial in study.get_trials():
        twin.add_trial(trial)
    assert _proposals(study, 6) == _proposals(twin, 6)


def test_a_pickle_of_plain_optuna_nsga2_resumes_as_the_picklable_one():
    plain = optuna.samplers.NSGAIISampler(seed=5, population_size=4)
    plain.__dict__.pop("_thread_lock", None)  # what an Optuna 5.0 pickle holds
    fresh = make_sampler("nsga2", 0, 4)
    adopted = adopt_sampler(plain, fresh)
    assert type(adopted) is NSGAIISampler and adopted._rng is plain._rng
    assert pickle.loads(pickle.dumps(adopted))._population_size == 4
    assert adopt_sampler(optuna.samplers.RandomSampler(seed=1), fresh) is None  # another sampler: not adopted
