"""The small pieces of the multi-machine drivers that need no cluster (docs/scaling.md)."""

from __future__ import annotations

import json
import time

import optuna
import pytest

from repnas.cli import main
from repnas.runs._rundir import RunDir, SearchConfig
from repnas.runs._storage import is_server_storage
from repnas.runs._workers import retried_trials
from repnas.search.ray._driver import parse_resources, trial_resources
from repnas.search.ray._results import number_trials, result_trial_id
from repnas.search.ray._trial import final_metrics


def test_server_storages_are_told_from_files():
    assert is_server_storage("postgresql://me@db/repnas") and is_server_storage("postgresql+psycopg://h/d")
    assert is_server_storage("mysql+pymysql://u@h/d")
    assert not is_server_storage("sqlite:///runs/x/study.db") and not is_server_storage("/runs/x/journal.log")


def test_resources_per_trial_parse_and_override_the_defaults():
    assert parse_resources("cpu=2, GPU=0.5,big_node=1") == {"cpu": 2.0, "gpu": 0.5, "big_node": 1.0}
    search = SearchConfig(space={}, device="cpu", ray={"resources": {"cpu": 2.0, "worker_node": 1.0}})
    assert trial_resources(search, cluster_gpus=4.0) == {"cpu": 2.0, "gpu": 0.0, "worker_node": 1.0}
    for bad in ("cpu", "cpu=-1", "=1", "gpu=half"):
        with pytest.raises(ValueError, match="--resources-per-trial"):
            parse_resources(bad)


@pytest.mark.parametrize(("args", "message"), [
    (["--resources-per-trial", "cpu=two"], "--resources-per-trial: 'cpu=two' is not NAME=AMOUNT"),
    (["--max-failures", "-1"], "--max-failures must be >= 0"),
    (["--early-stop", "sha"], "--early-stop sha is not available with --backend ray"),
])
def test_bad_ray_options_are_one_line_errors(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["search", "--space", "quick", "--backend", "ray", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"repnas: error: {message}") and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--join", "--study", "s"], "--join needs --storage"),
    (["--join", "--storage", "sqlite:///x.db", "--study", "s"], "--join needs a database server --storage"),
    (["--join", "--storage", "postgresql://u@h/d", "--study", "s", "--trials", "4"], "--join takes the search's"),
])
def test_bad_joins_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["search", *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"repnas: error: {message}") and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_retried_trials_do_not_count_towards_the_cap():
    from repnas.search._optuna_driver import counted_trials, progress_counts

    study = optuna.create_study(directions=["maximize"])
    lost = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(dict(lost.params), user_attrs={"retry_of": lost.number})
    retry = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    study.tell(retry, [1.0])
    assert retry.params == lost.params and retried_trials(study.trials) == {lost.number: retry.number}
    assert counted_trials(study) == 1 and progress_counts(study)["failed"] == 0


def test_the_driver_numbers_ray_trials_in_creation_order(tmp_path):
    run = RunDir(tmp_path)
    assert number_trials(run, ["ab_00002", "ab_00000", "ab_00001"]) == {"ab_00002": 2, "ab_00000": 0, "ab_00001": 1}
    # a further experiment (or a restored one) keeps the numbers given and goes on after them
    assert number_trials(run, ["cd_00001", "ab_00001", "cd_00000"]) == {"cd_00001": 4, "ab_00001": 1, "cd_00000": 3}
    assert json.loads((tmp_path / "ray_trials.json").read_text())["cd_00000"] == 3


def test_the_driver_takes_the_searchers_numbers_for_random_trial_ids(tmp_path):
    """Ray's short trial ids (``02fef3ff``) carry no creation counter: the numbers come from the
    order in which the searcher proposed the points, read from the study."""
    from repnas.search.ray._results import searcher_numbers

    study = optuna.create_study()
    for number, trial_id in enumerate(["f53faa32", "02fef3ff", "9c0d1e2f"]):
        trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
        trial.set_user_attr("trial", number)
        trial.set_user_attr("ray_trial_id", trial_id)
    given = searcher_numbers(study)
    assert given == {"f53faa32": 0, "02fef3ff": 1, "9c0d1e2f": 2}
    run = RunDir(tmp_path)
    assert number_trials(run, ["02fef3ff", "f53faa32"], given) == {"02fef3ff": 1, "f53faa32": 0}
    assert number_trials(run, ["9c0d1e2f"], given) == {"9c0d1e2f": 2}


def test_a_result_names_its_trial_without_metrics():
    class Result:
        metrics = None
        path = "s3://bucket/tune/run/trial_ab_00003"

    assert result_trial_id(Result()) == "ab_00003"


def test_the_last_report_carries_the_row_without_non_finite_objectives():
    row = {"status": "failed", "val_accuracy": float("nan"), "params": 100, "config": {"seed": 1}, "error": "x"}
    metrics = final_metrics(row, {"epoch": 2, "val_accuracy": 0.5, "train_loss": 0.1})
    assert metrics["epoch"] == 2 and metrics["train_loss"] == 0.1 and metrics["params"] == 100
    assert "val_accuracy" not in metrics  # not the last epoch's 0.5: OptunaSearch must not see it complete
    assert json.loads(metrics["config_json"]) == {"seed": 1} and "config" not in metrics


def test_tune_experiments_are_listed_in_the_order_they_ran(tmp_path):
    from repnas.search.ray._results import experiment_paths

    for name in ("quick-10", "quick", "quick-2", "other", "quick-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "quick-3").write_text("a file, not an experiment")
    assert experiment_paths(str(tmp_path), "quick") == [f"{tmp_path.resolve()}/{n}" for n in ("quick", "quick-2",
                                                                                              "quick-10")]
    assert experiment_paths(str(tmp_path / "missing"), "quick") == []


def test_ray_trials_claim_models_by_tune_id_and_the_driver_numbers_duplicates(tmp_path):
    from repnas.runs._claims import ModelClaims, TrialModels
    from repnas.runs._workers import storage_lock, storage_reachable
    from repnas.search.ray._results import result_rows

    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = SearchConfig(space="quick", storage=url, study="s")
    assert not storage_reachable(search)  # a node that cannot see the file gets no claims
    study = optuna.create_study(storage=url, study_name="s")
    assert storage_reachable(search)
    claims = ModelClaims(study, lambda: storage_lock(search))
    assert TrialModels(claims, "ab_00000").acquire("k") is None  # the first trial trains it
    TrialModels(claims, "ab_00000").finish("k", {"status": "complete", "val_accuracy": 0.5})
    earlier = TrialModels(claims, "ab_00001").acquire("k")
    assert earlier["trial"] == "ab_00000" and earlier["row"]["val_accuracy"] == 0.5

    class Result:
        def __init__(self, trial_id, metrics):
            self.metrics, self.path, self.config = {"trial_id": trial_id, **metrics}, "x", {}
            self.checkpoint, self.error = None, None

    run = RunDir(tmp_path)
    rows = result_rows(run, [Result("ab_00001", {"status": "complete", "duplicate_of": "ab_00000"}),
                             Result("ab_00000", {"status": "complete"})], [])
    assert rows[1]["duplicate_of"] == 0 and "duplicate_of" not in rows[0]


def test_a_ray_trial_that_failed_for_good_frees_its_model_and_a_stopped_one_leaves_its_result(tmp_path):
    """The driver records on the claims what a gone trial cannot: a later proposal of the model of a
    trial that failed past --max-failures trains it (no 6-hour wait), one of a stopped trial reuses
    its pruned result; the searcher calls ``on_failed`` when Tune gives up on a trial."""
    pytest.importorskip("ray.tune")
    import pickle

    from repnas.runs._claims import ModelClaims, TrialModels
    from repnas.runs._workers import storage_lock
    from repnas.search.ray._driver import DriverClaims
    from repnas.search.ray._searcher import ConstrainedOptunaSearch

    url = f"sqlite:///{tmp_path / 'study.db'}"
    from repnas.spaces import load_space

    search = SearchConfig(space=load_space("quick").to_dict(), storage=url, study="s", budget=12_000)
    study = optuna.create_study(storage=url, study_name="s")
    claims = ModelClaims(study, lambda: storage_lock(search))
    driver = pickle.loads(pickle.dumps(DriverClaims(search.to_dict())))  # as Tune stores it

    assert TrialModels(claims, "ab_00000").acquire("failing") is None
    assert TrialModels(claims, "ab_00001").acquire("stopped") is None
    driver.failed("ab_00000")
    driver.pruned("ab_00001", {"epoch": 1, "val_accuracy": 0.4, "params": 900, "flops": 10, "model_key": "stopped"})
    started = time.monotonic()  # trains it, at once (without the release: after the 5 s timeout)
    assert claims.acquire("failing", "ab_00002", timeout=5.0, poll=0.05) is None
    assert time.monotonic() - started < 2.0
    reused = TrialModels(claims, "ab_00003").acquire("stopped")
    assert reused["trial"] == "ab_00001" and reused["row"] == {"status": "pruned", "epochs": 1, "val_accuracy": 0.4,
                                                               "params": 900, "flops": 10}
    driver.failed("ab_00001")  # a finished claim stays
    assert TrialModels(claims, "ab_00004").acquire("stopped")["row"]["status"] == "pruned"

    gave_up = []
    searcher = ConstrainedOptunaSearch(space={"x": optuna.distributions.IntDistribution(0, 9)}, metric="y",
                                       mode="max", directions=["maximize"], on_failed=gave_up.append)
    searcher.suggest("cd_00000")
    searcher.on_trial_complete("cd_00000", error=True)
    assert gave_up == ["cd_00000"]


def test_join_waits_for_the_study_and_its_config(tmp_path, monkeypatch, capsys):
    """A joiner started with the starter (a job array) exited 2: 'no study ...; start it first'."""
    import threading
    import time

    import optuna

    from repnas.errors import UserError
    from repnas.runs import _server, _storage, _workers
    from repnas.runs._join_wait import SEARCH_ATTR

    url = f"sqlite:///{tmp_path}/db.sqlite"  # stands in for the database server
    for module in (_storage, _workers):
        monkeypatch.setattr(module, "is_server_storage", lambda u: u == url)
    monkeypatch.setattr(_server, "open_server_storage", lambda u, heartbeat=True: optuna.storages.RDBStorage(u))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with pytest.raises(UserError, match=r"no study 's' in .* after waiting 0.3 s"):
        _workers.join_search_config(url, "s", {}, timeout=0.3, poll=0.05)
    capsys.readouterr()
    from repnas.search._api import search_config

    config, _ = search_config("quick", out=tmp_path / "run", trials=3, epochs=1, storage=url, study="s")

    def start():
        time.sleep(0.6)
        study = optuna.create_study(storage=url, study_name="s", directions=config.directions)
        time.sleep(0.6)  # created, config not written yet: the joiner keeps waiting
        study.set_user_attr(SEARCH_ATTR, config.to_dict())

    starter = threading.Thread(target=start)
    began = time.monotonic()
    starter.start()
    joined = _workers.join_search_config(url, "s", {"workers": 2}, timeout=30, poll=0.05)
    waited = time.monotonic() - began
    starter.join()
    assert 1.2 <= waited < 10 and joined.trials == 3 and joined.workers == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("join: waiting up to 30 s for study 's'"), lines
