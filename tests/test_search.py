"""The Optuna search end to end on digits: storage, run directory, front, failures, workers."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest

from repnas.analysis._front import nondominated
from repnas.cli import main
from repnas.runs._rundir import TRIAL_COLUMNS, SearchConfig
from repnas.search._runner import run_trial
from repnas.spaces import load_space

TRIALS = 8


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "quick"
    code = main(["search", "--space", "quick", "--dataset", "digits", "--trials", str(TRIALS), "--epochs", "3",
                 "--early-stop", "none",
                 "--out", str(out), "--seed", "1", "--quiet"])
    assert code == 0
    return out


def test_run_directory_is_filled(quick_run):
    assert (quick_run / "search.yaml").is_file()
    assert (quick_run / "study.db").is_file()
    search = SearchConfig.from_yaml(quick_run / "search.yaml")
    assert search.trials == TRIALS and search.space_name == "quick" and search.dataset == "digits"
    assert search.objective_names == ["val_accuracy", "params", "flops"]
    table = pd.read_parquet(quick_run / "trials.parquet")
    assert list(table.columns[: len(TRIAL_COLUMNS)]) == list(TRIAL_COLUMNS)
    assert {f"knob.{k}" for k in load_space("quick").knobs} <= set(table.columns)
    assert sorted(table["trial"]) == list(range(len(table)))
    trained = table[table["duplicate_of"].isna()]  # --trials counts distinct models, not proposals
    assert len(trained) == TRIALS and trained["config"].map(_model_key).nunique() == TRIALS
    assert set(table["status"]) <= {"complete", "failed", "infeasible", "pruned"}
    complete = trained[trained["status"] == "complete"]
    assert len(complete) >= TRIALS - 1
    # digits has 10 classes: every completed trial learnt something
    assert (complete["val_accuracy"] > 0.5).all()
    for _, row in complete.iterrows():
        config = json.loads(row["config"])
        assert config["dataset"]["name"] == "digits" and config["recipe"]["epochs"] == 3
        trial_dir = quick_run / "trials" / str(row["trial"])
        assert (trial_dir / "log.txt").is_file()


def test_every_completed_trial_is_under_the_budget(quick_run):
    table = pd.read_parquet(quick_run / "trials.parquet")
    complete = table[table["status"] == "complete"]
    assert (complete["params"] <= complete["budget"]).all()
    assert (complete["budget"] == 12_000).all()
    assert (complete["physical_params"] >= complete["params"]).all()


def _model_key(config: str) -> str:
    from repnas.search._canonical import model_key

    return model_key(json.loads(config))


def test_load_study_and_best_trials_match_the_run_directory(quick_run, tmp_path):
    """study.best_trials, the printed front, the export and the report's front: one set, each model once."""
    import yaml

    from repnas.analysis import front_table, load_run
    from repnas.analysis._front import front_rows

    search = SearchConfig.from_yaml(quick_run / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    table = pd.read_parquet(quick_run / "trials.parquet")
    assert len(study.trials) == len(table)
    trained = table[table["duplicate_of"].isna()]
    complete = trained[trained["status"] == "complete"].reset_index(drop=True)
    signs = np.array([-1.0, 1.0, 1.0])
    mask = nondominated(complete[["val_accuracy", "params", "flops"]].to_numpy(float) * signs)
    front = set(complete.loc[mask, "trial"])
    assert {t.number for t in study.best_trials} == front
    assert set(front_rows(table, search)["trial"]) == front
    assert set(front_table(load_run(quick_run))["trial"]) == front
    assert main(["export", str(quick_run), "--pareto", "--out", str(tmp_path / "x")]) == 0
    exported = yaml.safe_load((tmp_path / "x" / "exported.yaml").read_text())["trials"]
    assert {e["trial"] for e in exported} == front and len(exported) == len(front)
    assert complete.loc[mask, "config"].map(_model_key).nunique() == len(front)  # each model once
    for t in study.trials:
        row = table[table["trial"] == t.number].iloc[0]
        if row["status"] == "complete":
            assert t.values == [row["val_accuracy"], row["params"], row["flops"]]
    for _, dup in table[table["duplicate_of"].notna()].iterrows():  # reused: same model, same numbers
        original = table[table["trial"] == dup["duplicate_of"]].iloc[0]
        assert pd.isna(original["duplicate_of"]) and _model_key(dup["config"]) == _model_key(original["config"])
        assert (dup["val_accuracy"], dup["status"]) == (original["val_accuracy"], original["status"])


def test_every_complete_trial_has_one_intermediate_value_per_epoch(quick_run):
    """Learning curves where optuna-dashboard looks: the study holds each epoch's val accuracy."""
    search = SearchConfig.from_yaml(quick_run / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    table = pd.read_parquet(quick_run / "trials.parquet").set_index("trial")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= TRIALS - 1
    for t in complete:
        assert sorted(t.intermediate_values) == [1, 2, 3]
        assert t.intermediate_values[3] == table.loc[t.number, "val_accuracy"]  # the last epoch is the result
        assert len(t.user_attrs["val_loss_curve"]) == 3 and all(v > 0 for v in t.user_attrs["val_loss_curve"])


def _search(tmp_path):
    space = load_space("quick")
    return SearchConfig(space=space.to_dict(), space_name="quick", dataset="digits", budget=12_000,
                        trials=1, epochs=1, device="cpu")


def test_failed_trials_are_recorded_with_their_error(tmp_path, monkeypatch):
    import repnas.train._trainer as trainer

    search = _search(tmp_path)
    point = load_space("quick").sample(0)

    def diverge(*args, **kwargs):
        raise FloatingPointError("training diverged at epoch 1 (loss is not finite); lower lr")

    monkeypatch.setattr(trainer, "train", diverge)
    row = run_trial(search, point, tmp_path / "t0")
    assert row["status"] == "failed" and row["error"].startswith("FloatingPointError: training diverged")
    assert "Traceback" in (tmp_path / "t0" / "log.txt").read_text()

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train", oom)
    row = run_trial(search, point, tmp_path / "t1")
    assert row["status"] == "failed" and row["error"].startswith("CUDA out of memory")
    assert math.isnan(row["val_accuracy"])


def test_infeasible_points_never_train(tmp_path, monkeypatch):
    import repnas.train._trainer as trainer

    search = _search(tmp_path)
    search.budget = 50
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("an infeasible point was trained"))
    row = run_trial(search, load_space("quick").sample(1), tmp_path / "t")
    assert row["status"] == "infeasible" and "needs at least" in row["error"] and row["params"] > 50


def test_four_workers_share_a_journal_storage_and_never_train_one_model_twice(tmp_path):
    out = tmp_path / "four"
    code = main(["search", "--space", "quick", "--trials", "6", "--epochs", "1", "--workers", "4",
                 "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    assert (out / "journal.log").is_file() and not (out / "study.db").exists()
    table = pd.read_parquet(out / "trials.parquet")
    assert sorted(table["trial"]) == list(range(len(table)))
    assert set(table["worker"].str.split(":").str[0]) <= {"w0", "w1", "w2", "w3"}
    trained = table[table["duplicate_of"].isna()]
    assert len(trained) == 6 and trained["config"].map(_model_key).nunique() == 6
    search = SearchConfig.from_yaml(out / "search.yaml")
    from repnas.runs._storage import open_storage

    study = optuna.load_study(study_name=search.study, storage=open_storage(search.storage))
    assert len(study.trials) == len(table)


def test_ray_backend_writes_the_same_run_directory(tmp_path, capsys):
    pytest.importorskip("ray.tune")
    import ray

    out = tmp_path / "ray"
    try:
        code = main(["search", "--space", "quick", "--trials", "2", "--epochs", "2", "--backend", "ray",
                     "--out", str(out), "--quiet", "--device", "cpu"])
        assert code == 0
        # one tune.report per epoch: Tune's learning curves have one row per epoch, the last with the row
        from ray import tune

        from repnas.search.ray._trial import trainable

        grid = tune.Tuner.restore(str(out / "ray" / "ray"), trainable=trainable).get_results()
        assert len(grid) == 2 and not grid.errors
        for result in grid:
            curve = result.metrics_dataframe
            assert list(curve["epoch"]) == [1, 2] and list(curve["training_iteration"]) == [1, 2]
            assert curve["val_accuracy"].notna().all() and result.metrics["status"] == "complete"
    finally:
        ray.shutdown()
    table = pd.read_parquet(out / "trials.parquet")
    assert sorted(table["trial"]) == [0, 1] and (table["status"] == "complete").all()
    assert (table["params"] <= 12_000).all()
    for n in table["trial"]:  # filled by the driver from each trial's last Tune checkpoint
        assert {"checkpoint.pt", "config.yaml", "log.txt"} <= {p.name for p in (out / "trials" / str(n)).iterdir()}
        assert "epoch 2:" in (out / "trials" / str(n) / "log.txt").read_text()
    search = SearchConfig.from_yaml(out / "search.yaml")
    assert search.workers == 0  # no --workers: Ray runs as many trials at once as resources allow
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    assert sorted(t.values[0] for t in study.trials) == sorted(table["val_accuracy"])
    # the study's trials carry the Optuna backend's user attributes (optuna-dashboard shows them)
    for t in study.trials:
        row = table[table["trial"] == int(t.user_attrs["trial_dir"].split("/")[1])].iloc[0]
        assert t.user_attrs["test_accuracy"] == row["test_accuracy"] and t.user_attrs["status"] == "complete"
        assert t.user_attrs["config"] == json.loads(row["config"]) and t.user_attrs["params"] == row["params"]
        assert {"started", "finished", "epochs", "worker", "budget", "seed"} <= set(t.user_attrs)
    printed = capsys.readouterr().out
    assert "2 complete, 0 failed" in printed
    for test_accuracy in table["test_accuracy"]:  # the front shows test accuracy from trials.parquet
        assert f"{test_accuracy:.4f}" in printed

    # a resume may raise --trials: a second Tune experiment continues the same study
    try:
        assert main(["search", "--resume", "--out", str(out), "--trials", "3", "--quiet"]) == 0
    finally:
        ray.shutdown()
    after = pd.read_parquet(out / "trials.parquet")
    assert sorted(after["trial"]) == [0, 1, 2] and (after["status"] == "complete").all()
    assert after[after["trial"] < 2].drop(columns="worker").equals(table.drop(columns="worker"))
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    assert len(study.trials) == 3 and sorted(t.values[0] for t in study.trials) == sorted(after["val_accuracy"])
    knobs = [c for c in after.columns if c.startswith("knob.")]
    points = [tuple(row) for row in after[knobs].itertuples(index=False)]
    assert points[2] not in points[:2], "the second experiment replayed a point of the first"
    # the sampler was told constraints, and best_trials is the printed front (Tune's numbers on the trials)
    from repnas.analysis._front import front_rows

    assert all(set(t.constraints) == {"over_budget", "duplicate"} for t in study.trials)
    assert {t.user_attrs["trial"] for t in study.best_trials} == set(front_rows(after, search)["trial"])


def test_ray_searcher_tells_duplicates_and_infeasible_points_as_constraints():
    pytest.importorskip("ray.tune")
    from repnas.search.ray._searcher import ConstrainedOptunaSearch

    names, directions = ["val_accuracy", "params"], ["maximize", "minimize"]
    searcher = ConstrainedOptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric=names,
                                       mode=["max", "min"], directions=directions)
    row = {"status": "complete", "val_accuracy": 0.9, "params": 900, "budget": 1000, "trial": 0}
    for trial_id, result in (("a", row), ("b", {**row, "trial": 1, "duplicate_of": 0}),
                             ("c", {"status": "infeasible", "params": 2000, "budget": 1000, "trial": 2})):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    study = searcher._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert [t.constraints["duplicate"] for t in study.trials] == [0.0, 1.0, 0.0]
    assert study.trials[2].constraints["over_budget"] == 1.0
    assert [t.user_attrs["trial"] for t in study.best_trials] == [0]


def test_resumed_search_proposes_what_an_uninterrupted_one_would(tmp_path):
    args = ["--epochs", "1", "--quiet", "--device", "cpu"]
    assert main(["search", "--space", "quick", "--trials", "3", "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["search", "--resume", "--out", str(tmp_path / "a"), "--trials", "6", "--quiet"]) == 0
    assert main(["search", "--space", "quick", "--trials", "6", "--out", str(tmp_path / "b"), *args]) == 0
    resumed, straight = (pd.read_parquet(tmp_path / run / "trials.parquet") for run in "ab")
    columns = ["trial", "val_accuracy", "params", *(c for c in resumed.columns if c.startswith("knob."))]
    assert len(resumed) == 6 and resumed[columns].equals(straight[columns])


def test_resume_without_sampler_state_does_not_replay_points(tmp_path):
    import shutil

    out = tmp_path / "run"
    assert main(["search", "--space", "quick", "--trials", "2", "--epochs", "1", "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    shutil.rmtree(out / "samplers")  # e.g. a run made before samplers were saved
    assert main(["search", "--resume", "--out", str(out), "--trials", "3", "--quiet"]) == 0
    table = pd.read_parquet(out / "trials.parquet")
    knobs = [c for c in table.columns if c.startswith("knob.")]
    points = [tuple(row) for row in table[knobs].itertuples(index=False)]
    assert len(points) == 3 and points[2] not in points[:2]


def test_successive_halving_compares_only_peers_of_similar_cost():
    from repnas.search._early_stop import SuccessiveHalving

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for accuracy in (0.9, 0.8, 0.7):  # three finished peers at rung 1, cost ~1M FLOPs
        trial = study.ask()
        SuccessiveHalving(study, trial.number, total_epochs=9)(1, {"val_accuracy": accuracy, "flops": 1e6})
        study.tell(trial, [accuracy, 1.0, 1e6])
    rule = SuccessiveHalving(study, study.ask().number, total_epochs=9)
    assert rule.rungs == {1, 3}
    assert rule(1, {"val_accuracy": 0.75, "flops": 1.1e6})  # not in the top third of its peers
    fast = SuccessiveHalving(study, study.ask().number, total_epochs=9)
    assert not fast(1, {"val_accuracy": 0.95, "flops": 1.2e6})  # the best so far goes on
    cheap = SuccessiveHalving(study, study.ask().number, total_epochs=9)
    assert not cheap(1, {"val_accuracy": 0.5, "flops": 1e5})  # a cheaper model has no peers yet
    assert not cheap(2, {"val_accuracy": 0.5, "flops": 1e5})  # not a rung


def test_early_stopping_search_records_pruned_trials(tmp_path):
    out = tmp_path / "sha"
    assert main(["search", "--space", "quick", "--trials", "8", "--epochs", "3", "--early-stop", "sha",
                 "--out", str(out), "--quiet", "--device", "cpu", "--seed", "5"]) == 0
    table = pd.read_parquet(out / "trials.parquet")
    assert table["duplicate_of"].isna().sum() == 8
    pruned = table[(table["status"] == "pruned") & table["duplicate_of"].isna()]
    assert set(table["status"]) <= {"complete", "pruned", "failed", "infeasible"}
    assert len(pruned) >= 1 and pruned["error"].str.startswith("stopped early after epoch 1").all()
    search = SearchConfig.from_yaml(out / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    assert {t.number for t in study.trials if t.state.name == "PRUNED"} == set(table.loc[table["status"] == "pruned",
                                                                                          "trial"])


@pytest.mark.parametrize(
    ("device", "cuda", "expected"),
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda:1", True, "cuda"),
     ("cuda", False, "cuda")],
)
def test_ray_trials_use_the_gpu_ray_assigned(device, cuda, expected):
    """Inside a Tune trial only the assigned GPU is visible, so cuda:N maps to cuda."""
    from repnas.search.ray._driver import trial_device

    assert trial_device(device, cuda) == expected


def test_ray_gpu_request_follows_the_cluster_not_the_driver():
    from repnas.search.ray._driver import trial_gpus

    assert trial_gpus("auto", 0.25, cluster_gpus=8.0) == 0.25  # a CPU-only driver, GPU workers
    assert trial_gpus("auto", 0.25, cluster_gpus=0.0) == 0.0
    assert trial_gpus("cpu", 0.25, cluster_gpus=8.0) == 0.0
