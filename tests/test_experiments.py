"""The experiments runner: every experiment's --smoke variant end to end on CPU, resumability,
chunking, and the table arithmetic (relative gain recovered, paired differences, dominance) on
hand-made numbers with exact expected values."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from repnas.errors import UserError
from repnas.experiments import (
    compare_table,
    dominance_table,
    load_experiment,
    relative_gain,
    relative_gain_table,
    run_experiment,
    summarize,
)
from repnas.experiments.__main__ import main

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
HAS_E2CNN = importlib.util.find_spec("e2cnn") is not None


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["run", *map(str, args), "--quiet"])
    out = capsys.readouterr()
    return code, out.out + out.err


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}


def _check_tables(out: Path, models: list[str], seeds: int) -> pd.DataFrame:
    table = pd.read_csv(out / "table.csv")
    assert list(table["model"]) == models
    assert (table["seeds"] == seeds).all()
    assert (table["params"] > 0).all() and (table["flops"] > 0).all()
    assert table["test_acc_mean"].between(0, 1).all()
    assert len(pd.read_csv(out / "runs.csv")) == len(models) * seeds
    markdown = (out / "table.md").read_text()
    assert all(f"| {m} |" in markdown for m in models)
    assert "CPU" in markdown  # the hardware is recorded
    assert (out / "figure.html").stat().st_size > 1000
    return table


# --------------------------------------------------------------------------- smoke, end to end
def test_c1c2_smoke_runs_tables_and_resumes(tmp_path, capsys):
    out = tmp_path / "c1c2"
    code, text = _run(capsys, EXPERIMENTS / "c1c2_vgg_depth.yaml", "--smoke", "--out", out)
    assert code == 0, text
    exp = load_experiment(EXPERIMENTS / "c1c2_vgg_depth.yaml", smoke=True)
    models = [e.name for e in exp.models]
    table = _check_tables(out, models, seeds=2)
    assert table["test_acc_std"].notna().all()  # two seeds -> a std
    compare = pd.read_csv(out / "compare.csv")
    assert {("rep_vgg4", "vgg4"), ("rep_vgg4", "vgg11")} <= set(zip(compare["a"], compare["b"], strict=True))
    record = json.loads(next((out / "runs").glob("vgg4__seed0.json")).read_text())
    assert record["wall_seconds"] > 0 and record["hardware"].startswith("CPU") and record["smoke"] is True
    assert record["config"]["dataset"]["data_dir"] is None  # no machine-specific path in a committed file

    before = _mtimes(out)
    code, text = _run(capsys, EXPERIMENTS / "c1c2_vgg_depth.yaml", "--smoke", "--out", out)
    assert code == 0 and "trained 0, skipped 6" in text, text
    assert _mtimes(out) == before  # nothing retrained, nothing rewritten


def test_c2_smoke(tmp_path, capsys):
    out = tmp_path / "c2"
    code, text = _run(capsys, EXPERIMENTS / "c2_wrn_width.yaml", "--smoke", "--out", out)
    assert code == 0 and "trained 2, skipped 0" in text, text
    _check_tables(out, ["wrn16_1", "rep_wrn16_2"], seeds=1)
    table = pd.read_csv(out / "table.csv").set_index("model")
    # repetition: about WRN-16-1's trainable params, physically twice as wide
    assert table.loc["rep_wrn16_2", "physical_params"] > 3 * table.loc["rep_wrn16_2", "params"]


def test_c3_smoke_in_chunks(tmp_path, capsys):
    """A time limit too short for any run runs exactly one per invocation; repeating the command finishes."""
    out = tmp_path / "c3"
    config = EXPERIMENTS / "c3_rotmnist.yaml"
    models = ["cnn_rotmnist", "rep_cnn_c4", *(["gcnn_c4"] if HAS_E2CNN else [])]
    select = ["--models", ",".join(models)]
    code, text = _run(capsys, config, "--smoke", "--out", out, *select, "--time-limit", "0.001")
    assert code == 0 and "trained 1" in text and f"left {len(models) - 1}" in text, text
    code, text = _run(capsys, config, "--smoke", "--out", out, *select)
    assert code == 0 and f"trained {len(models) - 1}, skipped 1" in text, text
    _check_tables(out, models, seeds=1)
    if HAS_E2CNN:
        gain = pd.read_csv(out / "gain.csv")
        assert list(gain["group"]) == ["C4"]
        row = gain.iloc[0]
        expected = relative_gain(row["err_cnn"], row["err_rep"], row["err_gcnn"])
        assert row["gain_recovered"] == pytest.approx(expected, nan_ok=True)
        assert "Relative gain recovered" in (out / "table.md").read_text() or math.isnan(expected)

    before = _mtimes(out)
    main(["status", str(config), "--smoke", "--out", str(out), *select])
    assert f"{len(models)} done, 0 pending" in capsys.readouterr().out
    assert _mtimes(out) == before


def test_search_vs_handmade_smoke(tmp_path, capsys):
    out = tmp_path / "svh"
    code, text = _run(capsys, EXPERIMENTS / "search_vs_handmade.yaml", "--smoke", "--out", out)
    assert code == 0, text
    table = pd.read_csv(out / "table.csv")
    assert list(table["model"]) == ["vgg6", "rep_vgg6", "vgg11"]
    assert "SYNTHETIC" in (out / "table.md").read_text()
    front = pd.read_csv(out / "front.csv")
    assert len(front) >= 1 and front["params"].is_monotonic_increasing
    assert front["test_accuracy"].is_monotonic_increasing  # a 2-objective front: more params, more accuracy
    assert (out / "figure.html").stat().st_size > 1000


def test_all_configs_parse_and_name_registered_models():
    from repnas.spaces import list_models

    known = set(list_models())
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        if path.name == "gpu_queue.yaml":  # the GPU session's queue, not an experiment (test_gpu_session.py)
            continue
        for smoke in (False, True):
            exp = load_experiment(path, smoke=smoke)
            assert {e.name for e in exp.models} <= known, path
            if exp.kind == "train" and not smoke:
                assert len(exp.seeds) >= 2 and exp.dataset["name"] in ("cifar10", "rotmnist")


# ---------------------------------------------------------------------- arithmetic, exact values
def _runs(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
    params = {"cnn": 340_309, "rep4": 352_123, "g4": 304_154, "a": 100, "b": 200}
    return pd.DataFrame([{"model": m, "group": "g", "seed": s, "test_accuracy": acc, "val_accuracy": acc,
                          "params": params[m], "physical_params": params[m], "flops": 1, "epochs": 30,
                          "wall_seconds": 2.0, "hardware": "X"} for m, s, acc in rows])


def test_relative_gain_exact():
    assert relative_gain(0.10, 0.08, 0.05) == pytest.approx(0.4)
    assert relative_gain(0.10, 0.10, 0.05) == 0.0
    assert math.isnan(relative_gain(0.05, 0.04, 0.05))  # G-CNN no better: nothing to recover
    runs = _runs([("cnn", 0, 0.90), ("rep4", 0, 0.92), ("g4", 0, 0.95),
                  ("cnn", 1, 0.88), ("rep4", 1, 0.91), ("g4", 1, 0.94)])
    spec = {"cnn": "cnn", "groups": {"C4": {"rep": "rep4", "gcnn": "g4"}}}
    row = relative_gain_table(runs, spec).iloc[0]
    # means: err_cnn 0.11, err_rep 0.085, err_gcnn 0.055 -> 0.025 / 0.055
    assert row["gain_recovered"] == pytest.approx(0.025 / 0.055)
    # per seed: 0.02/0.05 = 0.4 and 0.03/0.06 = 0.5
    assert row["gain_per_seed_mean"] == pytest.approx(0.45)
    assert row["gain_per_seed_std"] == pytest.approx(math.sqrt(0.005))
    assert row["seeds"] == 2


def test_summary_and_paired_comparison_exact():
    runs = _runs([("a", 0, 0.80), ("a", 1, 0.84), ("b", 0, 0.79), ("b", 1, 0.80), ("b", 2, 0.99)])
    summary = summarize(runs, ["b", "a"]).set_index("model")
    assert list(summary.index) == ["b", "a"]
    assert summary.loc["a", "test_acc_mean"] == pytest.approx(0.82)
    assert summary.loc["a", "test_acc_std"] == pytest.approx(math.sqrt(0.0008))
    row = compare_table(runs, [{"a": "a", "b": "b", "claim": "C2"}]).iloc[0]
    assert row["seeds"] == 2  # seed 2 has no partner and is left out of the pairing
    assert row["diff_mean"] == pytest.approx((0.01 + 0.04) / 2)
    assert row["a_wins"] == 2 and row["params_ratio"] == pytest.approx(0.5)


def test_dominance_exact():
    trials = pd.DataFrame({"trial": [0, 1, 2], "params": [500_000, 560_000, 9_000_000],
                           "test_accuracy": [0.84, 0.86, 0.90]})
    handmade = pd.DataFrame({"model": ["rep_vgg6", "vgg11", "vgg4"], "group": ["repeated", "plain", "plain"],
                             "params": [568_746, 9_416_010, 114_378], "test_acc_mean": [0.85, 0.91, 0.70],
                             "test_acc_std": [0.01, 0.01, 0.01]})
    table = dominance_table(trials, handmade, "test_accuracy").set_index("model")
    assert table.loc["rep_vgg6", "dominated"] and table.loc["rep_vgg6", "best_trial"] == 1
    assert table.loc["rep_vgg6", "margin"] == pytest.approx(0.01)
    assert not table.loc["vgg11", "dominated"] and table.loc["vgg11", "best_trial"] == 2
    assert not table.loc["vgg4", "dominated"] and pd.isna(table.loc["vgg4", "best_trial_acc"])


# ----------------------------------------------------------------------------------- bad input
def test_changed_recipe_is_not_mixed_into_old_results(tmp_path):
    exp = load_experiment(EXPERIMENTS / "c2_wrn_width.yaml", smoke=True)
    quiet = {"progress": False, "log": lambda _: None}
    outcome = run_experiment(exp, tmp_path, models=["wrn16_1"], **quiet)
    assert outcome.trained == [("wrn16_1", 0)]
    exp.recipe["lr"] = 0.01
    with pytest.raises(UserError, match="different model/dataset/recipe"):
        run_experiment(exp, tmp_path, models=["wrn16_1"], **quiet)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [vgg4]\nrecipe: {epoch: 3}\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repnas: error:") and "recipe.epoch" in err and err.count("\n") == 1
    assert main(["run", str(EXPERIMENTS / "c2_wrn_width.yaml"), "--smoke", "--models", "nope",
                 "--out", str(tmp_path / "x")]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.parametrize("command", ["run", "status"])
@pytest.mark.parametrize("limit", ["-5", "0", "nan"])
def test_time_limit_not_positive_is_refused(tmp_path, capsys, command, limit):
    """``--time-limit -5`` exited 0 and trained (start_one runs one run whatever is left)."""
    out = tmp_path / "x"
    code = main([command, str(EXPERIMENTS / "c2_wrn_width.yaml"), "--smoke", "--out", str(out), "--time-limit",
                 limit, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("repnas: error: --time-limit must be > 0") and err.count("\n") == 1, err
    assert not out.exists()


def test_several_configs_share_one_time_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # --smoke writes to runs/experiments-smoke/<name>
    configs = [str(EXPERIMENTS / "c2_wrn_width.yaml"), str(EXPERIMENTS / "c1c2_vgg_depth.yaml")]
    smoke = tmp_path / "runs" / "experiments-smoke"
    # no time left: the first experiment still makes progress (one run), the second starts nothing
    code, text = _run(capsys, *configs, "--smoke", "--time-limit", "0.001")
    assert code == 0, text
    assert len(list((smoke / "c2_wrn_width" / "runs").glob("*.json"))) == 1
    assert not list(smoke.glob("c1c2_vgg_depth/runs/*.json"))
    assert "run the same command again" in text
    # time enough: both finish, and the first one's finished run is skipped, not redone
    code, text = _run(capsys, *configs, "--smoke", "--time-limit", "600")
    assert code == 0, text
    for name in ("c2_wrn_width", "c1c2_vgg_depth"):
        exp = load_experiment(EXPERIMENTS / f"{name}.yaml", smoke=True)
        assert len(list((smoke / name / "runs").glob("*.json"))) == len(exp.models) * len(exp.seeds)
    assert main(["run", *configs, "--smoke", "--out", str(tmp_path / "x")]) == 2
    assert "--out takes one experiment config" in capsys.readouterr().err


# --------------------------------------------------------------------------- verdicts (issue 19)
def _accuracies(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
    params = {"vgg6": 559_178, "rep_vgg6": 568_746, "vgg11": 9_416_010, "wrn16_1": 175_258, "rep_wrn16_4": 183_498}
    return pd.DataFrame([{"model": m, "seed": s, "test_accuracy": a, "params": params.get(m, 1)} for m, s, a in rows])


def test_c1_and_c2_verdicts_exact():
    from repnas.experiments._verdicts import c1_rows, c2_rows

    depth = _accuracies([("vgg6", 0, 0.86), ("vgg6", 1, 0.87), ("rep_vgg6", 0, 0.88), ("rep_vgg6", 1, 0.875),
                   ("vgg11", 0, 0.89), ("vgg11", 1, 0.89)])
    six = next(r for r in c1_rows(depth) if r["N"] == 6)
    assert six["seeds"] == 2 and six["fractions"] == pytest.approx([2 / 3, 0.25])
    assert six["verdict"] == "closes part of the gap"  # 0.25 < 0.5 in seed 1
    assert six["rep_minus_vgg11"] == pytest.approx([-0.01, -0.015])
    assert all(r["verdict"] == "not measured" for r in c1_rows(depth) if r["N"] != 6)  # never extrapolated
    better = _accuracies([("vgg6", 0, 0.86), ("rep_vgg6", 0, 0.90), ("vgg11", 0, 0.89)])
    assert next(r for r in c1_rows(better) if r["N"] == 6)["verdict"] == "comparable to VGG11 or better"

    width = _accuracies([("wrn16_1", 0, 0.85), ("wrn16_1", 1, 0.86), ("rep_wrn16_4", 0, 0.86),
                         ("rep_wrn16_4", 1, 0.85)])
    rows = {r["rep"]: r for r in c2_rows(depth, width)}
    assert rows["rep_vgg6"]["diffs"] == pytest.approx([0.02, 0.005])
    assert rows["rep_vgg6"]["verdict"] == "repetition better in 2/2 seeds"
    assert rows["rep_wrn16_4"]["diffs"] == pytest.approx([0.01, -0.01])
    assert rows["rep_wrn16_4"]["verdict"] == "mixed: better in 1/2 seeds"
    assert rows["rep_wrn16_4"]["params_rep"] == 183_498 and rows["rep_vgg4"]["verdict"] == "not measured"


def test_c3_verdict_exact():
    from repnas.experiments._verdicts import c3_rows

    runs = pd.DataFrame([{"model": m, "seed": 0, "test_accuracy": a, "params": 1} for m, a in
                         (("cnn_rotmnist", 0.90), ("rep_cnn_c4", 0.92), ("gcnn_c4", 0.95))])
    c4 = c3_rows(runs)[0]
    assert c4["of_means"] == pytest.approx(0.4) and c4["per_seed"] == pytest.approx([0.4])
    assert c4["verdict"] == "repetition recovers 40% of the G-CNN's gain"
    assert c3_rows(runs)[1]["verdict"] == "not measured"


def test_search_verdict_dominance_and_hypervolume_exact():
    from repnas.experiments._verdicts import search_verdict

    hand = pd.DataFrame({"model": ["a", "b", "too_big"], "params": [100_000, 500_000, 900_000],
                         "test_acc_mean": [0.80, 0.85, 0.99]})
    trials = pd.DataFrame({"trial": [0, 1, 2, 3], "status": ["complete", "complete", "complete", "pruned"],
                           "val_accuracy": [0.90, 0.85, 0.70, 0.99], "test_accuracy": [0.86, 0.81, 0.70, 0.99],
                           "params": [400_000, 90_000, 95_000, 10_000]})
    v = search_verdict(trials, hand, 600_000)
    assert v["handmade"] == ["a", "b"] and v["trials"] == 3  # over the budget / not complete: left out
    assert [p["trial"] for p in v["front"]] == [0, 1]  # trial 2 is dominated by trial 1 in (val, params)
    assert v["verdict"] == "the search dominates"
    assert v["hv_search"] == pytest.approx((0.81 * 510_000 + 0.05 * 200_000) / 600_000)
    assert v["hv_handmade"] == pytest.approx((0.80 * 500_000 + 0.05 * 100_000) / 600_000)
    trials.loc[0, "test_accuracy"] = 0.84  # now b beats trial 0 on test accuracy, a is still beaten
    assert search_verdict(trials, hand, 600_000)["verdict"] == "the fronts cross"
    trials["test_accuracy"] = [0.50, 0.60, 0.55, 0.99]
    trials["params"] = [400_000, 150_000, 200_000, 10_000]  # every front trial now has a better hand-made one
    assert search_verdict(trials, hand, 600_000)["verdict"] == "the search is dominated"
    assert search_verdict(trials.iloc[:0], hand, 600_000)["verdict"] == "not measured"
