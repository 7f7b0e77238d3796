"""``--early-stop moasha`` under Ray: the multi-objective rule as a Tune scheduler.

The scheduler is checked against the rule it wraps, on made-up reports (every decision the same,
the stopped trial's claim recorded), and in a real Ray search: the trials it stopped are exactly
the ones the rule stops when it is replayed on the per-epoch reports Tune stored, each stopped
trial is a ``pruned`` row (its last epoch's accuracy, its folder filled), PRUNED in the study, and
its model's claim carries the pruned result.
"""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

pytest.importorskip("ray.tune")

from repnas.cli import main
from repnas.runs._rundir import SearchConfig
from repnas.search._early_stop import STOP, MultiObjectiveASHA


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def test_scheduler_decides_what_the_rule_decides_and_reports_each_stop():
    from ray.tune.schedulers import TrialScheduler

    from repnas.search.ray._scheduler import MultiObjectiveScheduler

    reports = [  # (trial, epoch, val_accuracy, params, flops): 5 trials at rung 1 of a 3-epoch search
        ("a", 1, 0.80, 100, 1000), ("b", 1, 0.70, 100, 1000), ("c", 1, 0.60, 90, 900),
        ("d", 1, 0.50, 100, 1000),  # dominated by a, b and c: stopped
        ("e", 1, 0.90, 50, 500),  # dominates everything: goes on
        ("a", 2, 0.85, 100, 1000),  # epoch 2 is no rung (rungs at 1 * 3**k < 3)
    ]
    stopped: list[tuple[str, dict]] = []
    scheduler = MultiObjectiveScheduler(MultiObjectiveASHA(3), on_stop=lambda t, r: stopped.append((t, r)))
    replay = MultiObjectiveASHA(3)
    decisions = []
    for trial, epoch, accuracy, params, flops in reports:
        metrics = {"epoch": epoch, "val_accuracy": accuracy, "params": params, "flops": flops, "model_key": trial * 4}
        decision = scheduler.on_trial_result(None, _Trial(trial), metrics)
        decisions.append(decision)
        want = replay.on_epoch(trial, epoch, metrics)
        assert decision == (TrialScheduler.STOP if want == STOP else TrialScheduler.CONTINUE)
    assert decisions == ["CONTINUE", "CONTINUE", "CONTINUE", "STOP", "CONTINUE", "CONTINUE"]
    assert [t for t, _ in stopped] == ["d"] == scheduler.stopped and stopped[0][1]["model_key"] == "dddd"
    # a final report (the trial's row) and a report without costs are never ranked
    assert scheduler.on_trial_result(None, _Trial("f"), {"epoch": 1, "val_accuracy": 0.1, "params": 1e9,
                                                         "flops": 1e9, "status": "complete"}) == "CONTINUE"
    assert scheduler.on_trial_result(None, _Trial("g"), {"epoch": 1, "val_accuracy": 0.1}) == "CONTINUE"
    assert "stopped 1" in scheduler.debug_string()


def test_a_restored_scheduler_learns_the_reports_stored_before_the_crash(tmp_path):
    """Tune unpickles the scheduler an experiment started with (empty rungs) on Tuner.restore: it
    must learn the stored reports before it ranks, or a poor trial after a crash runs on."""
    import pickle

    from ray.tune.schedulers import TrialScheduler

    from repnas.search.ray._scheduler import MultiObjectiveScheduler

    def write(experiment: str, trial: str, *lines: str) -> None:
        folder = tmp_path / experiment / f"trial_{trial}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text("".join(line + "\n" for line in lines))

    def report(trial: str, epoch: int, accuracy: float, **extra) -> str:
        return json.dumps({"trial_id": trial, "epoch": epoch, "val_accuracy": accuracy, "params": 100,
                           "flops": 1000, **extra})

    write("s", "a", report("a", 1, 0.8), report("a", 2, 0.85), report("a", 3, 0.9, status="complete"))
    write("s", "b", report("b", 1, 0.7), '{"trial_id": "b", "epo')  # a line cut by the crash
    write("s-2", "c", report("c", 1, 0.6))  # a top-up experiment of the same search
    write("other", "z", report("z", 1, 0.99))  # another study's experiment: not learned
    scheduler = MultiObjectiveScheduler(MultiObjectiveASHA(3), history=(str(tmp_path), "s"))
    restored = pickle.loads(pickle.dumps(scheduler))
    poor = {"epoch": 1, "val_accuracy": 0.5, "params": 100, "flops": 1000}
    assert restored.on_trial_result(None, _Trial("d"), poor) == TrialScheduler.STOP
    assert set(restored.rule.rungs[1]) == {"a", "b", "c", "d"}
    assert restored.rule.rungs[1]["a"] == (-0.8, 100, 1000)
    blank = MultiObjectiveScheduler(MultiObjectiveASHA(3))  # what the driver had before: runs it on
    assert blank.on_trial_result(None, _Trial("d"), poor) == TrialScheduler.CONTINUE


@pytest.mark.slow
def test_ray_search_stops_what_the_rule_stops(tmp_path, capsys):
    import ray

    out = tmp_path / "run"
    try:  # one trial at a time: the rule sees the reports in one order, so its verdicts are known
        assert main(["search", "--space", "quick", "--trials", "5", "--epochs", "3", "--backend", "ray",
                     "--workers", "1", "--early-stop", "moasha", "--device", "cpu", "--seed", "0",
                     "--out", str(out), "--quiet"]) == 0
    finally:
        ray.shutdown()
    table = pd.read_parquet(out / "trials.parquet")
    numbers = json.loads((out / "ray_trials.json").read_text())
    # every epoch report Tune stored, in the order the trials sent them
    curves = []
    for path in sorted((out / "ray").glob("*/trial_*/progress.csv")):
        frame = pd.read_csv(path, dtype={"trial_id": str})  # an all-digit id ("83339119") stays a string
        curves.append(frame[frame["status"].isna()] if "status" in frame.columns else frame)
    epochs = pd.concat(curves).sort_values("timestamp", kind="stable")
    rule = MultiObjectiveASHA(3)
    stopped_by_rule = {numbers[r.trial_id] for r in epochs.itertuples()
                       if rule.on_epoch(r.trial_id, int(r.epoch), r._asdict()) == STOP}
    pruned = table[table["status"] == "pruned"]
    assert set(pruned["trial"]) == stopped_by_rule and len(stopped_by_rule) >= 1
    # what a restored driver's scheduler learns from Tune's result.json files is what the rule saw
    from repnas.search.ray._scheduler import MultiObjectiveScheduler

    learner = MultiObjectiveScheduler(MultiObjectiveASHA(3), history=(str(out / "ray"), out.name))
    assert learner.learn_history() >= len(rule.rungs[1])  # progress.csv also holds the final reports
    assert learner.rule.rungs.keys() == rule.rungs.keys()
    for epoch, recorded in rule.rungs.items():
        assert learner.rule.rungs[epoch].keys() == recorded.keys()
        for trial_id, vector in recorded.items():
            assert learner.rule.rungs[epoch][trial_id] == pytest.approx(vector)
    assert (table[table["duplicate_of"].isna()]["status"].isin(["complete", "pruned"])).sum() == 5

    search = SearchConfig.from_yaml(out / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=search.storage)
    by_number = {t.user_attrs["trial"]: t for t in study.trials}
    claims = {k: v for k, v in study.user_attrs.items() if k.startswith("model.") and v}
    for row in pruned.itertuples():
        assert row.epochs == 1 and 0.1 < row.val_accuracy < 1 and row.params <= 12_000 and row.flops > 0
        curve = epochs[epochs["trial_id"] == next(k for k, v in numbers.items() if v == row.trial)]
        assert list(curve["epoch"]) == [1] and curve["val_accuracy"].iloc[0] == pytest.approx(row.val_accuracy)
        assert json.loads(row.config)["model"]["base"]  # the run config, from the checkpoint's config.yaml
        assert (out / "trials" / str(row.trial) / "checkpoint.pt").is_file()
        trial = by_number[row.trial]
        assert trial.state.name == "PRUNED" and trial.user_attrs["status"] == "pruned"
        claim = next(v for v in claims.values() if v["trial"] == curve["trial_id"].iloc[0])
        assert claim["row"]["status"] == "pruned" and claim["row"]["epochs"] == 1

    # a copy of a Ray run is not resumed: Tune's saved searcher would write into this run's study
    import hashlib
    import shutil

    def snapshot(root):
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file()}

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before, original = snapshot(copy), snapshot(out)
    capsys.readouterr()
    assert main(["search", "--resume", "--out", str(copy), "--trials", "6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "moved or copied" in err and str(out.resolve()) in err, err
    assert snapshot(copy) == before and snapshot(out) == original
