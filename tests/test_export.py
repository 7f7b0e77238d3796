"""`repnas export` writes configs `repnas train` reproduces, and plain materialized weights."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from repnas.cli import main
from repnas.search._optuna_driver import cpu_threads
from repnas.spaces import build_model, dataset_info


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["search", "--space", "quick", "--trials", "4", "--epochs", "3", "--seed", "2",
                 "--early-stop", "none", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_export_top_then_train_reproduces_the_trial(run, tmp_path, capsys):
    out = tmp_path / "top"
    assert main(["export", str(run), "--top", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    index = yaml.safe_load((out / "exported.yaml").read_text())
    (entry,) = index["trials"]
    table = pd.read_parquet(run / "trials.parquet")
    best = table[table["status"] == "complete"].sort_values("val_accuracy", ascending=False).iloc[0]
    assert entry["val_accuracy"] == best["val_accuracy"]
    config = out / entry["config"]
    # CPU results depend on the torch thread count: train with the search worker's
    torch.set_num_threads(cpu_threads(1))
    assert main(["train", str(config), "--json", "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["val_accuracy"] == pytest.approx(entry["val_accuracy"], abs=1e-9)
    assert metrics["test_accuracy"] == pytest.approx(entry["test_accuracy"], abs=1e-9)
    assert metrics["params"] == entry["params"]


def test_export_pareto_writes_materialized_plain_weights(run, tmp_path):
    out = tmp_path / "front"
    assert main(["export", str(run), "--pareto", "--out", str(out)]) == 0
    index = yaml.safe_load((out / "exported.yaml").read_text())
    assert index["selection"] == "pareto" and index["trials"]
    info = dataset_info("digits")
    x = torch.randn(4, 1, 8, 8)
    for entry in index["trials"]:
        config = yaml.safe_load((out / entry["config"]).read_text())
        assert config["device"] == "auto"
        repeated = build_model(config["model"], info.num_classes, info.in_channels).eval()
        state = torch.load(entry["checkpoint"], map_location="cpu", weights_only=False)
        repeated.load_state_dict(state["model"])
        plain = build_model({"base": config["model"]["base"], "kwargs": config["model"]["kwargs"]},
                            info.num_classes, info.in_channels).eval()
        plain.load_state_dict(torch.load(out / entry["state_dict"], map_location="cpu"))  # strict
        with torch.no_grad():
            assert torch.allclose(plain(x), repeated(x), atol=1e-5)
