"""Searching a user's model end to end on CPU: ``repnas search --model``, export, describe, report.

Searches on digits with tiny epochs: ResNet-18 and MobileNetV2 from torchvision (2 trials here, to
stay near a minute on 2 loaded cores; the 4-trial runs are in docs/your-model.md), and 4 trials of
the small class of ``tests/data/tiny_net.py`` from its file. The
best trial's ONNX file must give the repeated model's logits in onnxruntime.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

DATA = Path(__file__).parent / "data"
TINY = f"{DATA / 'tiny_net.py'}:TinyNet"


def _repnas(*argv: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "repnas", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _search(tmp_path: Path, model: str, budget: str, epochs: int, trials: int = 4) -> pd.DataFrame:
    _repnas("search", "--model", model, "--dataset", "digits", "--budget", budget, "--trials", str(trials),
            "--epochs", str(epochs), "--early-stop", "none", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "run"), cwd=tmp_path)
    table = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert set(table["status"]) == {"complete"}
    trained = table["duplicate_of"].isna() if "duplicate_of" in table else pd.Series(True, index=table.index)
    assert int(trained.sum()) == trials  # distinct models; a proposal of one already trained is reused
    trials = table
    assert (trials["params"] <= int(float(budget[:-1]) * 1000)).all()
    return trials


def _onnx_matches_repeated_model(tmp_path: Path) -> float:
    """Export the best trial; run its ONNX file in onnxruntime against the repeated model rebuilt
    from the trial's config and checkpoint; return the max abs logit difference."""
    import onnxruntime

    from repnas.spaces import build_model

    _repnas("export", str(tmp_path / "run"), "--top", "1", "--out", str(tmp_path / "export"), cwd=tmp_path)
    exported = yaml.safe_load((tmp_path / "export" / "exported.yaml").read_text())["trials"][0]
    config = yaml.safe_load((tmp_path / "export" / exported["config"]).read_text())
    repeated = build_model(config["model"], 10, 1)
    state = torch.load(tmp_path / "export" / exported["checkpoint"], map_location="cpu", weights_only=False)
    repeated.load_state_dict(state["model"])
    repeated.eval()
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = repeated(x).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / exported["onnx"]),
                                           providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"images": x.numpy()})
    diff = float(abs(got - expected).max())
    scale = max(1.0, float(abs(expected).max()))  # float32: ~7 significant digits of the largest logit
    assert diff <= 1e-4 * scale and exported["onnx_max_abs_diff"] <= 1e-4 * scale
    return diff


@pytest.mark.parametrize("model, budget", [("torchvision.models:resnet18", "200k"),
                                           ("torchvision.models:mobilenet_v2", "300k")])
def test_torchvision_model_search_exports_onnx_matching_the_repeated_model(model, budget, tmp_path):
    trials = _search(tmp_path, model, budget, epochs=1, trials=2)  # 4 trials: docs/your-model.md
    assert trials["flops"].nunique() == 1  # the shape is fixed: every candidate has the plain FLOPs
    assert (trials["params"] >= 0.97 * int(budget[:-1]) * 1000).all()
    _onnx_matches_repeated_model(tmp_path)


def test_user_file_model_search_describe_and_report(tmp_path):
    trials = _search(tmp_path, TINY, "15k", epochs=3)
    assert trials["val_accuracy"].max() > 0.3  # 10 classes: chance is 0.1
    _repnas("export", str(tmp_path / "run"), "--top", "1", "--out", str(tmp_path / "export"), cwd=tmp_path)
    exported = yaml.safe_load((tmp_path / "export" / "exported.yaml").read_text())["trials"][0]
    out = _repnas("describe", "--model", TINY, "--plan", str(tmp_path / "export" / exported["config"]),
                  "--json", cwd=tmp_path).stdout
    described = json.loads(out)
    assert described["params"] == exported["params"] and described["physical_params"] == 26_634
    rows = {row["name"]: row for row in described["layers"]}
    assert list(rows)[:2] == ["shortcut", "stem"] and rows["tail"]["shape"] == [32, 32, 3, 3]
    assert rows["unused"]["source"] == "plain"
    _repnas("report", str(tmp_path / "run"), "--out", str(tmp_path / "report.html"), "--plotlyjs", "cdn",
            cwd=tmp_path)
    page = (tmp_path / "report.html").read_text()
    note = re.search(r'data-reference="plain-model">([^<]*)<', page).group(1)
    assert "has 26,634 trainable parameters" in note
    best = re.search(r"has ([\d,]+) parameters, ([\d.]+)% of the plain count", note)
    assert int(best.group(1).replace(",", "")) == int(trials.loc[trials["val_accuracy"].idxmax(), "params"])
    assert best.group(2) == f"{100 * int(best.group(1).replace(',', '')) / 26_634:.1f}"
    assert "plain TinyNet: 26,634 params" in page  # the reference line on the accuracy-vs-params figure


def test_user_file_model_search_runs_under_ray(tmp_path):
    pytest.importorskip("ray")
    _repnas("search", "--model", TINY, "--dataset", "digits", "--budget", "15k", "--trials", "2", "--epochs", "1",
            "--backend", "ray", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run"), cwd=tmp_path)
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert set(trials["status"]) == {"complete"} and len(trials) == 2
    assert trials["flops"].nunique() == 1 and (trials["params"] <= 15_000).all()
    configs = [json.loads(c)["model"] for c in trials["config"]]
    assert {c["base"] for c in configs} == {"external"} and configs[0]["kwargs"]["source"] == TINY
