"""Canonical candidates, budget forms and what the sampler is told: a point's identity is its model."""

from __future__ import annotations

import math

import optuna
import pytest

from repnas.cli import main
from repnas.errors import UserError
from repnas.runs._claims import ModelClaims, TrialModels
from repnas.runs._rundir import RunDir, SearchConfig
from repnas.search._canonical import model_key
from repnas.search._runner import run_trial, trial_run_config
from repnas.search._tell import optuna_answer
from repnas.spaces import load_space, parse_budget

PLAIN = {"depth.0": 1, "depth.1": 2, "width_rep.0": 1, "width_rep.1": 1, "share.0": "own", "share.1": "own",
         "rank": 1, "map": "swish"}


def _search(**kw) -> SearchConfig:
    space = load_space("quick")
    return SearchConfig(space=space.to_dict(), space_name="quick", dataset="digits", budget=12_000,
                        trials=2, epochs=1, device="cpu", **kw)


def _config(search: SearchConfig, point: dict, device: str = "cpu") -> dict:
    space = search.search_space()
    return trial_run_config(search, space.to_model_config(point, search.budget, "digits"), device, space)


def test_knobs_that_change_nothing_give_the_same_key():
    search = _search()
    base = _config(search, PLAIN)
    # no layer tiles: the map, the rank of absent banks and sharing in a one-layer stage change nothing
    for change in ({"map": "linear"}, {"rank": 2}, {"share.0": "borrow"}, {"share.0": "bank"}):
        assert model_key(_config(search, {**PLAIN, **change})) == model_key(base), change
    assert model_key(_config(search, PLAIN, device="cuda:1")) == model_key(base)  # where, not what
    assert model_key({**base, "threads": 7, "dataset": {**base["dataset"], "data_dir": "/x"}}) == model_key(base)
    # what changes the model or its training changes the key
    tiled = {**PLAIN, "width_rep.1": 2}
    assert model_key(_config(search, tiled)) != model_key(base)
    assert model_key(_config(search, {**tiled, "map": "linear"})) != model_key(_config(search, tiled))
    assert model_key({**base, "seed": 1}) != model_key(base)
    assert model_key({**base, "recipe": {**base["recipe"], "lr": 0.01}}) != model_key(base)


def test_plan_options_that_change_training_change_the_key():
    """Plan version 2's remainder rule, source init and bias init start or build another model."""
    search = _search()
    tiled = _config(search, {**PLAIN, "width_rep.1": 2})
    plan = tiled["model"]["plan"]

    def with_plan(**options) -> dict:
        return {**tiled, "model": {**tiled["model"], "plan": {**plan, **options}}}

    base = model_key(with_plan(remainder="paper", source_init="small_xavier", bias_init="zeros"))
    for option, other in (("source_init", "physical"), ("bias_init", "default"), ("remainder", "source")):
        key = model_key(with_plan(**{"remainder": "paper", "source_init": "small_xavier", "bias_init": "zeros",
                                     option: other}))
        assert key != base, option


def test_a_duplicate_is_reused_without_training_and_training_it_gives_the_same_numbers(tmp_path, monkeypatch):
    import repnas.train._trainer as trainer
    from repnas.train._data import load_dataset

    search, data = _search(), load_dataset("digits", seed=0)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    claims = ModelClaims(study, RunDir(tmp_path / "run").lock)
    trained = run_trial(search, PLAIN, tmp_path / "0", models=TrialModels(claims, 0), data=data)
    other = {**PLAIN, "map": "linear", "rank": 2, "share.0": "borrow"}  # the same model
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a known model was trained again"))
    reused = run_trial(search, other, tmp_path / "1", models=TrialModels(claims, 1), data=data)
    assert trained["status"] == "complete" and reused["duplicate_of"] == 0 and "duplicate_of" not in trained
    assert reused["val_accuracy"] == trained["val_accuracy"] and reused["params"] == trained["params"]
    assert not (tmp_path / "1" / "checkpoint.pt").exists() and (tmp_path / "0" / "checkpoint.pt").exists()
    # what reuse assumes: training the other point for real gives the very same numbers
    monkeypatch.setattr(trainer, "train", real_train)
    again = run_trial(search, other, tmp_path / "2", data=data)
    assert (again["val_accuracy"], again["test_accuracy"]) == (trained["val_accuracy"], trained["test_accuracy"])


def test_a_claim_held_by_a_running_trial_is_waited_for_and_a_dead_one_taken_over(tmp_path):
    study = optuna.create_study()
    claims = ModelClaims(study, RunDir(tmp_path).lock)
    assert claims.acquire("k", 3) is None  # trial 3 trains it
    assert claims.acquire("k", 3) is None  # a restored trial 3 (Ray) keeps its own claim
    assert claims.acquire("k", 4, alive=lambda n: False) is None  # holder gone: trial 4 trains it
    claims.finish("k", 4, {"status": "complete", "val_accuracy": 0.9, "test_accuracy": math.nan})
    held = claims.acquire("k", 5, alive=lambda n: True)
    assert held == {"trial": 4, "row": {"status": "complete", "val_accuracy": 0.9}}


def test_the_sampler_is_told_constraints_and_best_trials_lists_each_model_once():
    names, directions = ["val_accuracy", "params", "flops"], ["maximize", "minimize", "minimize"]
    row = {"status": "complete", "val_accuracy": 0.9, "params": 9_000, "flops": 1e5, "budget": 10_000}
    assert optuna_answer(row, names, directions) == ("COMPLETE", [0.9, 9000.0, 1e5],
                                                     {"over_budget": pytest.approx(-0.1), "duplicate": 0.0})
    state, values, constraints = optuna_answer({**row, "duplicate_of": 0}, names, directions)
    assert (state, values, constraints["duplicate"]) == ("COMPLETE", [0.9, 9000.0, 1e5], 1.0)
    infeasible = {"status": "infeasible", "params": 15_000, "flops": 2e5, "budget": 10_000}
    state, values, constraints = optuna_answer(infeasible, names, directions)
    assert state == "COMPLETE" and values == [0.0, 15_000.0, 2e5] and constraints["over_budget"] == 0.5
    assert optuna_answer({"status": "failed"}, names, directions) == ("FAIL", None, {})

    from repnas.search._tell import tell

    study = optuna.create_study(directions=directions, sampler=optuna.samplers.NSGAIISampler(seed=0))
    for r in (row, {**row, "duplicate_of": 0}, infeasible):
        tell(study, study.ask(), r, names, directions)
    assert [t.number for t in study.best_trials] == [0]
    for sampler in (optuna.samplers.NSGAIISampler(seed=0, population_size=2), optuna.samplers.TPESampler(seed=0)):
        study.sampler = sampler  # both read the constraints without a constraints_func
        study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})


@pytest.mark.parametrize(("text", "low", "high", "levels", "value"), [
    ("12k", 12_000, 12_000, (), 12_000), ("12,000", 12_000, 12_000, (), 12_000),
    ("4k:40k", 4_000, 40_000, (), "4000:40000"),
    ("1M,100k,300k", 100_000, 1_000_000, (100_000, 300_000, 1_000_000), "100000,300000,1000000"),
])
def test_budget_forms(text, low, high, levels, value):
    spec = parse_budget(text)
    assert (spec.low, spec.high, spec.levels, spec.to_value()) == (low, high, levels, value)
    assert parse_budget(spec.to_value()) == spec


@pytest.mark.parametrize("text", ["40k:4k", "1:2:3", "4k:x", "0"])
def test_bad_budgets_are_one_line_errors(text):
    with pytest.raises(UserError, match="budget"):
        parse_budget(text, "--budget")


def test_space_yaml_accepts_a_budget_range():
    from repnas.spaces import SearchSpace

    space = SearchSpace.from_dict({**load_space("quick").to_dict(), "budget": "4k:40k"})
    assert space.budget == "4000:40000" and SearchSpace.from_dict(space.to_dict()).budget == "4000:40000"
    search = SearchConfig(space=space.to_dict(), budget=space.budget)
    budget = search.distributions()["budget"]
    assert (budget.low, budget.high, budget.log) == (4_000, 40_000, True)


def test_budget_range_search_spans_parameters_and_resume_keeps_it(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "range"
    args = ["--epochs", "1", "--quiet", "--device", "cpu", "--out", str(out)]
    assert main(["search", "--space", "quick", "--budget", "4k:40k", "--trials", "4", *args]) == 0
    assert SearchConfig.from_yaml(out / "search.yaml").budget == "4000:40000"
    assert main(["search", "--resume", "--budget", "4k", *args[-2:]]) == 2  # a resume keeps its budget
    assert "differs from the run's 4,000 to 40,000" in capsys.readouterr().err
    assert main(["search", "--resume", "--trials", "6", *args[-2:], "--quiet"]) == 0
    table = pd.read_parquet(out / "trials.parquet")
    trained = table[table["duplicate_of"].isna()]
    assert len(trained) == 6 and table["budget"].between(4_000, 40_000).all()
    assert (table["budget"] == table["knob.budget"]).all()
    complete = trained[trained["status"] == "complete"]
    assert (complete["params"] <= complete["budget"]).all() and (complete["params"] > 0.8 * complete["budget"]).all()
    assert complete["params"].max() / complete["params"].min() > 2


def test_a_search_where_every_point_is_over_budget_exits_2_naming_the_budget_that_fits(tmp_path, capsys):
    from repnas.search import run_search

    # 96 params is the smallest candidate of quick, so the search starts; only a few points fit it.
    # From Python the run stays (the caller reads it): every trial is told as a constraint violation
    kept = run_search("quick", budget=96, trials=3, epochs=1, device="cpu", out=tmp_path / "kept", seed=0,
                      progress=False)
    table = kept.trials
    assert (table["status"] == "infeasible").all() and len(table) == 3
    needed = int(table["params"].min())
    assert all(t.constraints["over_budget"] > 0 for t in kept.study.trials) and kept.study.best_trials == []
    # the command line: one line with the advice, and its run directory taken back so the advice works
    out = tmp_path / "tight"
    argv = ["search", "--space", "quick", "--trials", "3", "--epochs", "1", "--quiet", "--device", "cpu",
            "--out", str(out), "--seed", "0"]
    code = main([*argv, "--budget", "96"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert needed > 96 and err[0].startswith("repnas: error: no trial completed: all 3 were over the budget 96;")
    assert err[0].endswith(f"the smallest budget that fits one of them is {needed:,} (--budget {needed}); "
                           f"{out} was removed")
    assert not out.exists()
    assert main([*argv, "--budget", str(needed)]) == 0, capsys.readouterr().err
    import pandas as pd

    assert pd.read_parquet(out / "trials.parquet")["status"].eq("complete").any()


PLAIN_SPACE = """
name: plain
family: vgg
widths: [8, 16]
budget: 2k,5k
dataset: digits
knobs: {depth: 1, width_rep: 1, share: own}
"""


def test_an_exhausted_space_stops_and_says_so_and_its_run_draws_a_baseline_curve(tmp_path, capsys):
    """A plain space at two budget levels has two models: --trials 3 stops (bounded) and says so; the
    run then serves as the plain family's scaling curve beside another run's front."""
    import pandas as pd

    from repnas.analysis import load_baselines, load_run, report_figures

    (tmp_path / "plain.yaml").write_text(PLAIN_SPACE)
    out = tmp_path / "plain"
    assert main(["search", "--space", str(tmp_path / "plain.yaml"), "--trials", "3", "--epochs", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the space looks exhausted" in printed and "stopped at 2 distinct trial(s) of the 3 asked" in printed
    table = pd.read_parquet(out / "trials.parquet")
    assert table["duplicate_of"].isna().sum() == 2 and table["duplicate_of"].notna().sum() >= 10
    baselines = load_baselines(out)
    assert list(baselines["name"]) == ["plain:" + str(t) for t in table[table["duplicate_of"].isna()]
                                       .sort_values("params")["trial"]]
    figure = dict((d, f) for d, f, _ in report_figures([load_run(out)], baselines))["fig-accuracy-params"]
    curve = next(trace for trace in figure.data if trace.name == "baselines")
    assert curve.mode == "lines+markers+text" and list(curve.x) == sorted(baselines["params"])
