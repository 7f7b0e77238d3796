"""What a resume after a kill proposes, per kill moment (docs/design.md, "Resuming").

A search killed during trial 0, during a later trial, or between training and ``tell`` is resumed;
its counted trials' points are compared, in order, with one run straight through. The interrupted
point comes back first (it is re-enqueued) and, with TPE, every later point is the one the
uninterrupted run proposed (the sampler is pickled after every ask), with NSGA-II as with TPE:
the retry of the interrupted point is a member of the generation it was asked in.
"""

from __future__ import annotations

import subprocess

import pytest
from fault_helpers import repnas_cmd, subprocess_env

from repnas.cli import main
from repnas.runs._rundir import SearchConfig

TRIALS = 5


def _argv(out, sampler: str) -> list[str]:
    return ["search", "--space", "quick", "--trials", str(TRIALS), "--epochs", "1", "--out", str(out),
            "--device", "cpu", "--quiet", "--seed", "3", "--sampler", sampler]


def _trials(out) -> list:
    import optuna

    search = SearchConfig.from_yaml(out / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    return [t for t in sorted(study.trials, key=lambda t: t.number) if not t.user_attrs.get("interrupted")]


def _points(out) -> list[dict]:
    return [t.params for t in _trials(out)]


def _distinct_models(out) -> int:
    """Trials that trained their own model (not a reused duplicate): what ``--trials`` counts."""
    return sum(1 for t in _trials(out) if t.user_attrs.get("duplicate_of") is None)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    runs = {}
    for sampler in ("tpe", "nsga2"):
        out = tmp_path_factory.mktemp("straight") / sampler
        assert main(_argv(out, sampler)) == 0
        runs[sampler] = {"points": _points(out), "distinct": _distinct_models(out)}
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
@pytest.mark.parametrize("moment, killed_trial", [
    ("trial:asked@1", 0),
    ("trial:trained@3", 2),
], ids=["during-trial-0", "between-training-and-tell"])
def test_resume_after_a_kill_proposes_the_same_points(tmp_path, straight, sampler, moment, killed_trial):
    out = tmp_path / "run"
    proc = subprocess.run(repnas_cmd(*_argv(out, sampler)), env=subprocess_env(REPNAS_FAULT=moment),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-1000:]
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    got, want = _points(out), straight[sampler]["points"]
    assert _distinct_models(out) == straight[sampler]["distinct"] == TRIALS  # --trials counts distinct models
    assert got[: killed_trial + 1] == want[: killed_trial + 1]  # the interrupted point comes back first
    # reused proposals included: the same rows in the same order. NSGA-II too, now that the retry
    # keeps its generation (it had none: generation 0 lacked a member, the next one differed)
    assert got == want


def test_a_retried_trial_keeps_its_nsga2_generation():
    """The retry of a killed trial is the same proposal: it belongs to the generation the killed
    trial was asked in. Left to Optuna it got the generation current at the resume, so a point drawn
    for generation 0 filled a place of generation 1 (and pushed one of its children out)."""
    import optuna

    from repnas.runs._workers import recover_interrupted
    from repnas.search._samplers import NSGAIISampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=NSGAIISampler(seed=0, population_size=2))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    first, killed, third = (study.ask(dist) for _ in range(3))  # asked together: three workers
    study.tell(first, [0.5, 1.0])
    study.tell(third, [0.6, 2.0])  # generation 0 holds 2 complete trials = its population
    key = "NSGAIISampler:generation"
    assert [study.trials[n].system_attrs[key] for n in range(3)] == [0, 0, 0]
    assert recover_interrupted(study) == [killed.number]
    retry = study.ask(dist)
    assert retry.params == killed.params and retry.user_attrs["retry_of"] == killed.number
    assert study.trials[retry.number].system_attrs[key] == 0
    assert study.ask(dist).number == 4 and study.trials[4].system_attrs[key] == 1  # a fresh ask: the next one


@pytest.mark.slow
def test_a_kill_during_trial_0_counts_models_as_the_straight_run(tmp_path):
    """A kill during trial 0 made the resumed 16-trial search stop at 10 models with a 'space looks
    exhausted' note that the uninterrupted run did not give: the resume must count trained models as
    the straight run does, note included."""
    argv = ["search", "--space", "quick", "--trials", "16", "--epochs", "1", "--device", "cpu", "--quiet"]
    straight = subprocess.run(repnas_cmd(*argv, "--out", str(tmp_path / "straight")), env=subprocess_env(),
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = subprocess.run(repnas_cmd(*argv, "--out", str(tmp_path / "run")),
                            env=subprocess_env(REPNAS_FAULT="trial:asked@1"), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-1000:]
    resumed = subprocess.run(repnas_cmd("search", "--resume", "--out", str(tmp_path / "run"), "--quiet"),
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    note = [line for line in straight.stdout.splitlines() if line.startswith("note:")]
    assert [line for line in resumed.stdout.splitlines() if line.startswith("note:")] == note
    assert _distinct_models(tmp_path / "run") == _distinct_models(tmp_path / "straight")
    assert _points(tmp_path / "run") == _points(tmp_path / "straight")
