"""Recorded tables (issue 28): ``repnas table build`` (killed and resumed) and ``repnas search --replay``.

One tiny table is built once for the module: a two-stage VGG space on digits with 8 points and 6
distinct models, 2 seeds x 2 epochs (12 runs, a few seconds). Its build is SIGKILLed after the
5th finished run (the ``table:row`` fault point) and resumed in this process, counting what the
resume trains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from repnas.errors import UserError

TINY_SPACE = """\
name: tiny
family: vgg
widths: [8, 16]
budget: 12k
dataset: digits
epochs: 2
knobs:
  depth: {low: 1, high: 2, per_stage: true}
  share.1: {choices: [own, borrow]}
  scalar_init: identity
"""
KILL_AFTER = 5  # runs finished before the SIGKILL
RUNS = 12  # 6 distinct models x 2 seeds


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> dict:
    """Build the tiny table: killed after KILL_AFTER runs, then resumed here with a counting trainer."""
    import repnas.search._table_build as build

    root = tmp_path_factory.mktemp("table")
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE)
    out = root / "tiny.parquet"
    env = {**os.environ, "REPNAS_FAULT": f"table:row@{KILL_AFTER}",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    killed = subprocess.run([sys.executable, "-m", "repnas", "table", "build", "--space", str(space), "--out",
                             str(out), "--seeds", "0", "1", "--quiet"], env=env, capture_output=True, text=True,
                            timeout=300)
    journal = build.journal_path(out)
    header, before = build._read_journal(journal)
    trained: list[tuple[str, int]] = []
    real = build.train_row

    def counting(model, config):
        trained.append((model["key"], int(config["seed"])))
        return real(model, config)

    build.train_row = counting
    try:
        result = build.build_table(str(space), out, seeds=(0, 1), progress=False)
    finally:
        build.train_row = real
    return {"out": out, "space": space, "killed": killed, "before": before, "models": header["models"],
            "trained": trained, "result": result, "journal": journal}


def read(path):
    from repnas.search import read_table

    return read_table(path)


def test_killed_build_resumes_without_retraining(tiny_table):
    assert tiny_table["killed"].returncode == -9  # SIGKILLed at the fault point
    before = {(r["model_key"], int(r["seed"])) for r in tiny_table["before"]}
    assert len(tiny_table["before"]) == KILL_AFTER == len(before)
    assert len(tiny_table["models"]) == 6
    trained = tiny_table["trained"]
    assert len(trained) == RUNS - KILL_AFTER and not set(trained) & before  # nothing trained twice
    result = tiny_table["result"]
    assert (result.trained, result.from_journal) == (RUNS - KILL_AFTER, KILL_AFTER)
    assert not tiny_table["journal"].exists()  # the table is whole: the journal is gone
    info, frame = read(tiny_table["out"])
    assert len(frame) == RUNS and len(set(zip(frame.model_key, frame.seed, strict=True))) == RUNS
    assert set(zip(frame.model_key, frame.seed, strict=True)) == before | set(trained)
    assert info.seeds == [0, 1] and info.epochs == 2 and info.dataset["name"] == "digits"
    assert frame["val_accuracy_curve"].map(len).eq(2).all()
    assert (frame["val_accuracy"] == frame["val_accuracy_curve"].map(lambda c: c[-1])).all()
    assert frame["train_seconds"].to_numpy() == pytest.approx(frame["train_seconds_curve"].map(sum).to_numpy())
    assert frame["val_accuracy"].between(0.3, 1.0).all() and (frame["flops"] > 0).all()
    # the key is the search's canonical key of the recorded run config, without its seed
    from repnas.search import table_key

    for row in frame.itertuples():
        config = json.loads(row.config)
        assert table_key(config["model"], info.dataset, info.recipe) == row.model_key
        assert config["seed"] == row.seed and config["threads"] == 1


def test_finished_build_is_not_redone_and_other_options_are_refused(tiny_table):
    from repnas.search import build_table

    again = build_table(str(tiny_table["space"]), tiny_table["out"], seeds=(0, 1), progress=False)
    assert (again.trained, again.from_journal) == (0, 0)
    stamp = tiny_table["out"].stat().st_mtime_ns
    with pytest.raises(UserError, match="holds another table"):
        build_table(str(tiny_table["space"]), tiny_table["out"], seeds=(0, 1), epochs=3, progress=False)
    with pytest.raises(UserError, match="is a range"):
        build_table(str(tiny_table["space"]), tiny_table["out"].with_name("r.parquet"), budget="8k:12k")
    assert tiny_table["out"].stat().st_mtime_ns == stamp


def test_replay_gives_the_table_numbers(tiny_table, tmp_path):
    import optuna

    from repnas.search import run_search

    info, frame = read(tiny_table["out"])
    result = run_search(replay=tiny_table["out"], trials=6, seed=1, sampler="random", out=tmp_path / "run",
                        progress=False)
    assert result.config.space_name == "tiny" and result.config.epochs == 2
    table = result.trials
    rows = {(r.model_key, r.seed): r for r in frame.itertuples()}
    trials = {t.number: t for t in optuna.load_study(study_name=result.config.study,
                                                     storage=result.config.storage).trials}
    own = table[table["duplicate_of"].isna()]
    assert len(own) >= 3
    for trial in own.itertuples():
        config = json.loads(trial.config)
        assert config["seed"] == 1  # the search seed 1 replays the table's seed 1 % 2
        recorded = rows[(table_key_of(config, info), 1)]
        curve = list(recorded.val_accuracy_curve)
        replayed = trials[trial.trial].intermediate_values
        assert [replayed[e] for e in sorted(replayed)] == curve[:len(replayed)]
        assert trial.params == recorded.params and trial.flops == recorded.flops
        assert trial.physical_params == recorded.physical_params
        epochs = len(replayed)
        assert trial.val_accuracy == curve[epochs - 1]
        assert trial.train_seconds == pytest.approx(sum(recorded.train_seconds_curve[:epochs]))
        assert trials[trial.trial].user_attrs["val_loss_curve"] == pytest.approx(
            list(recorded.val_loss_curve[:epochs]))
        # virtual time: a trial lasts its recorded train seconds
        assert (trial.finished - trial.started).total_seconds() == pytest.approx(trial.train_seconds, abs=1e-3)
        if trial.status == "complete":
            assert epochs == 2 and trial.test_accuracy == recorded.test_accuracy
        else:
            assert trial.status == "pruned" and pd.isna(trial.test_accuracy)
    assert set(table["status"]) <= {"complete", "pruned"}
    assert (tmp_path / "run" / "trials" / str(own.trial.iloc[0]) / "config.yaml").is_file()


def table_key_of(config: dict, info) -> str:
    from repnas.search import table_key

    return table_key(config["model"], info.dataset, info.recipe)


def test_replay_of_a_model_missing_from_the_table_names_its_key(tiny_table, tmp_path, capsys):
    import pyarrow.parquet as pq

    from repnas.cli import main

    whole = pq.read_table(tiny_table["out"])
    keys = sorted(set(whole.column("model_key").to_pylist()))
    kept = whole.filter(pq.ParquetFile(tiny_table["out"]).read().column("model_key").to_pandas()
                        .isin(keys[:1]).to_numpy())
    partial = tmp_path / "partial.parquet"
    pq.write_table(kept.replace_schema_metadata(whole.schema.metadata), partial)
    code = main(["search", "--replay", str(partial), "--trials", "4", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert any(f"model {key} " in err[0] for key in keys[1:]) and "is not in table" in err[0]


def test_replay_asked_for_more_trials_than_models_ends_fast_when_the_table_runs_out(tiny_table, tmp_path, capsys):
    # 30 trials asked of 6 models: NSGA-II's population is 10, so the search stops after 20
    # duplicates in a row (repeat_limit), ~40 trials; 200 asked ran ~125 trials (population 50) for
    # the same verdict, 16.6 s of the suite's time on 2 cores
    from repnas.cli import main

    started = time.perf_counter()
    code = main(["search", "--replay", str(tiny_table["out"]), "--trials", "30", "--quiet", "--out",
                 str(tmp_path / "run")])
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0
    table = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    distinct = table[table["duplicate_of"].isna()]
    assert len(distinct) <= 6 and len(table) > len(distinct)  # the dedup answers the rest from the table
    assert "the space looks exhausted" in out
    assert seconds < 120, seconds  # ~10-25 s on 2 loaded cores (a trained search: minutes)


def test_replay_options_must_agree_with_the_table(tiny_table, tmp_path):
    from repnas.search import run_search

    with pytest.raises(UserError, match="drop --epochs"):
        run_search(replay=tiny_table["out"], epochs=5, out=tmp_path / "a", progress=False)
    with pytest.raises(UserError, match="--replay-speed must be > 0"):
        run_search(replay=tiny_table["out"], replay_speed=0, out=tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="not a repnas table"):
        pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "plain.parquet")
        run_search(replay=tmp_path / "plain.parquet", out=tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dataset_subsets_are_seeded_and_kept_out_of_old_configs():
    from repnas.train import RunConfig, load_dataset

    full = load_dataset("digits", seed=3)
    cut = load_dataset("digits", seed=3, train_subset=200, val_subset=50)
    assert (len(cut.train), len(cut.val), len(cut.test)) == (200, 50, len(full.test))
    again = load_dataset("digits", seed=3, train_subset=200, val_subset=50)
    assert bool((cut.train.x == again.train.x).all()) and bool((cut.val.y == again.val.y).all())
    assert "train_subset" not in RunConfig.from_dict({"model": "vgg4"}).to_dict()["dataset"]
    config = RunConfig.from_dict({"model": "vgg4", "dataset": {"name": "digits", "train_subset": 200}})
    assert RunConfig.from_yaml(config.to_yaml()).dataset.train_subset == 200
    with pytest.raises(UserError, match="train_subset must be >= 1"):
        RunConfig.from_dict({"model": "vgg4", "dataset": {"train_subset": 0}})


@pytest.mark.slow
def test_ray_replay_gives_the_table_numbers(tiny_table, tmp_path):
    import ray

    from repnas.cli import main

    info, frame = read(tiny_table["out"])
    out = tmp_path / "ray-run"
    try:
        assert main(["search", "--replay", str(tiny_table["out"]), "--backend", "ray", "--workers", "1",
                     "--trials", "2", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    finally:
        ray.shutdown()
    rows = {(r.model_key, r.seed): r for r in frame.itertuples()}
    table = pd.read_parquet(out / "trials.parquet")
    own = table[table["duplicate_of"].isna()]
    assert len(own) >= 1 and table["worker"].str.startswith("ray:").all()
    for trial in own.itertuples():
        config = json.loads(trial.config)
        assert config["seed"] == 1  # search seed 3 -> the table's seeds[3 % 2]
        recorded = rows[(table_key_of(config, info), 1)]
        epochs = int(trial.epochs)
        assert trial.val_accuracy == recorded.val_accuracy_curve[epochs - 1]
        assert trial.params == recorded.params and trial.flops == recorded.flops
        assert trial.train_seconds == pytest.approx(sum(recorded.train_seconds_curve[:epochs]))
        if trial.status == "complete":
            assert trial.test_accuracy == recorded.test_accuracy


def test_replay_speed_sleeps_the_recorded_seconds_over_speed(tiny_table, tmp_path, monkeypatch):
    import repnas.search._replay as replay
    from repnas.search import run_search

    slept: list[float] = []
    monkeypatch.setattr(replay.time, "sleep", slept.append)
    result = run_search(replay=tiny_table["out"], replay_speed=4, trials=2, early_stop="none", out=tmp_path / "run",
                        progress=False)
    assert result.config.replay["speed"] == 4.0
    table = result.trials
    own = table[table["duplicate_of"].isna()]
    assert sum(slept) == pytest.approx(own["train_seconds"].sum() / 4)
    assert len(slept) == 2 * len(own)  # one sleep per replayed epoch
