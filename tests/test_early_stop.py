"""Multi-objective ASHA (``--early-stop moasha``): the ranking, the rule, its state kept in an Optuna
study, and a real search with two worker processes."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest

from repnas.cli import main
from repnas.runs._rundir import SearchConfig
from repnas.search._early_stop import (
    CONTINUE,
    STOP,
    MultiObjectiveASHA,
    StudyRungs,
    crowding_distances,
    nondominated_ranks,
    priority_order,
)


def test_nondominated_ranks_peel_fronts():
    points = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [2, 6], [6, 6]], dtype=float)
    assert nondominated_ranks(points).tolist() == [0, 0, 0, 1, 2, 1, 3]
    # ties: equal points do not dominate each other
    assert nondominated_ranks(np.array([[1.0, 1.0], [1.0, 1.0]])).tolist() == [0, 0]


def test_crowding_keeps_extremes_and_spread():
    points = np.array([[0.0, 4.0], [1.0, 3.0], [1.1, 2.9], [4.0, 0.0]])
    distance = crowding_distances(points)
    assert np.isinf(distance[[0, 3]]).all()
    assert distance[1] == pytest.approx((1.1 - 0.0) / 4 + (4.0 - 2.9) / 4)
    assert distance[2] == pytest.approx((4.0 - 1.0) / 4 + (3.0 - 0.0) / 4)
    # front first, then the more isolated of the crowded pair, then the other
    assert priority_order(np.vstack([points, [[5.0, 5.0]]])).tolist() == [0, 3, 2, 1, 4]


def _metrics(accuracy: float, params: int, flops: int) -> dict:
    return {"val_accuracy": accuracy, "params": params, "flops": flops}


def test_a_cheap_slow_model_survives_where_accuracy_alone_would_stop_it():
    rule = MultiObjectiveASHA(max_epochs=9, eta=3)
    assert list(rule.rungs) == [1, 3]
    for key, acc in enumerate((0.60, 0.62, 0.64)):  # three expensive, accurate trials
        assert rule.on_epoch(key, 1, _metrics(acc, 10_000, 4_000_000)) == CONTINUE  # < eta others: go on
    # 4 at the rung, keep ceil(4 / 3) = 2: the cheapest model is on the front, and at its extreme
    assert rule.on_epoch("cheap", 1, _metrics(0.40, 10_000, 500_000)) == CONTINUE
    # same cost as the expensive ones, less accurate than all: dominated, stopped
    assert rule.on_epoch("slow", 1, _metrics(0.50, 10_000, 4_000_000)) == STOP
    # dominated only by the cheap one (as accurate, cheaper) and by the best: also stopped
    assert rule.on_epoch("mid", 1, _metrics(0.40, 10_000, 600_000)) == STOP
    assert rule.on_epoch("best", 1, _metrics(0.70, 10_000, 4_000_000)) == CONTINUE
    assert rule.on_epoch("best", 2, _metrics(0.10, 10_000, 4_000_000)) == CONTINUE  # not a rung
    assert rule.on_epoch("best", 9, _metrics(0.10, 10_000, 4_000_000)) == CONTINUE  # the last epoch
    assert set(rule.rungs[1]) == {0, 1, 2, "cheap", "slow", "mid", "best"}


def test_state_rebuilt_by_record_gives_the_same_decisions():
    rng = np.random.default_rng(0)
    results = [(k, _metrics(float(rng.uniform(0.3, 0.7)), 10_000, int(rng.integers(1e5, 1e6)))) for k in range(12)]
    live = MultiObjectiveASHA(max_epochs=9)
    decisions = [live.on_epoch(k, 1, m) for k, m in results]
    assert STOP in decisions and CONTINUE in decisions
    for i, (key, metrics) in enumerate(results):  # a fresh rule per trial, fed what was stored
        fresh = MultiObjectiveASHA(max_epochs=9)
        for other, seen in results[:i]:
            fresh.record(other, 1, seen)
        assert fresh.on_epoch(key, 1, metrics) == decisions[i], key


def test_rule_rejects_bad_settings_and_missing_metrics():
    with pytest.raises(ValueError, match="eta >= 2"):
        MultiObjectiveASHA(max_epochs=9, eta=1)
    with pytest.raises(ValueError, match="needs flops"):
        MultiObjectiveASHA(max_epochs=9).on_epoch(0, 1, {"val_accuracy": 0.5, "params": 10})


def test_study_rungs_rank_against_what_the_study_stores():
    """The Optuna glue reads other trials' intermediate values and cost attributes, as written by
    other worker processes or before a --resume, and leaves out reused and interrupted trials."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    stored = [(0.60, {}), (0.62, {}), (0.64, {}), (0.99, {"duplicate_of": 0}), (0.99, {"interrupted": True})]
    for acc, extra in stored:
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions=dist, values=[acc, 10_000, 4_000_000],
            intermediate_values={1: acc, 2: acc}, user_attrs={"params": 10_000, "flops": 4_000_000, **extra}))
    slow = StudyRungs(study, study.ask().number, total_epochs=9)
    assert slow(1, _metrics(0.50, 10_000, 4_000_000)) is True
    assert set(slow.rule.rungs[1]) == {0, 1, 2, slow.number}  # not the reused or interrupted trials
    cheap = StudyRungs(study, study.ask().number, total_epochs=9)
    assert cheap(1, _metrics(0.40, 10_000, 500_000)) is False
    assert cheap(2, _metrics(0.40, 10_000, 500_000)) is False  # no rung, no decision


@pytest.fixture(scope="module")
def moasha_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("moasha") / "run"
    assert main(["search", "--space", "quick", "--trials", "8", "--epochs", "3", "--early-stop", "moasha",
                 "--workers", "2", "--out", str(out), "--quiet", "--device", "cpu", "--seed", "5"]) == 0
    return out


def test_moasha_search_with_two_workers_stops_dominated_trials(moasha_run):
    table = pd.read_parquet(moasha_run / "trials.parquet")
    # 8 distinct models (a proposal of a model already trained is reused: duplicate_of, not counted)
    assert table["duplicate_of"].isna().sum() == 8 and set(table["status"]) <= {"complete", "pruned"}
    pruned = table[table["status"] == "pruned"]
    assert len(pruned) >= 1 and pruned["error"].str.startswith("stopped early after epoch 1").all()
    search = SearchConfig.from_yaml(moasha_run / "search.yaml")
    assert search.early_stop == "moasha"
    from repnas.runs._storage import open_storage

    study = optuna.load_study(study_name=search.study, storage=open_storage(search.storage))
    trials = {t.number: t for t in study.trials}
    assert {n for n, t in trials.items() if t.state.name == "PRUNED"} == set(pruned["trial"])
    for number in pruned["trial"]:  # stopped at rung 1 only after eta others had reached it
        others = [t for n, t in trials.items() if n != number and 1 in t.intermediate_values
                  and t.datetime_start < trials[number].datetime_complete]
        assert len(others) >= 3
        assert list(trials[number].intermediate_values) == [1]
    # every front member ran to the end
    assert all(t.state.name == "COMPLETE" and len(t.intermediate_values) == 3 for t in study.best_trials)


def test_every_epoch_is_in_the_study_and_matches_the_trial_history(moasha_run):
    search = SearchConfig.from_yaml(moasha_run / "search.yaml")
    from repnas.runs._storage import open_storage

    study = optuna.load_study(study_name=search.study, storage=open_storage(search.storage))
    for t in study.trials:  # a reused result (same model) carries the curve of the trial that trained it
        trained = t.user_attrs.get("duplicate_of", t.number)
        history = json.loads((moasha_run / "trials" / str(trained) / "metrics.json").read_text())["history"]
        assert sorted(t.intermediate_values) == list(range(1, len(history) + 1))
        assert [t.intermediate_values[h["epoch"]] for h in history] == [h["val_accuracy"] for h in history]
        assert t.user_attrs["val_loss_curve"] == pytest.approx([h["val_loss"] for h in history])
