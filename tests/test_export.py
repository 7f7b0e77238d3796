"""`repnas export` writes configs `repnas train` reproduces, and plain materialized weights."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_export_pareto_writes_materialized_plain_weights_and_deployables(run, tmp_path):
    out = tmp_path / "front"
    assert main(["export", str(run), "--pareto", "--out", str(out)]) == 0
    index = yaml.safe_load((out / "exported.yaml").read_text())
    assert index["selection"] == "pareto" and index["trials"]
    assert (out / index["run"]).resolve() == run.resolve()  # paths relative to exported.yaml
    info = dataset_info("digits")
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    for entry in index["trials"]:
        config = yaml.safe_load((out / entry["config"]).read_text())
        assert config["device"] == "auto"
        # how to feed the model: the statistics the trainer normalised its inputs with
        from repnas.train import RunConfig
        from repnas.train._trainer import load_splits

        data = load_splits(RunConfig.from_dict(config))
        assert entry["normalization"] == {"mean": list(data.mean), "std": list(data.std)}
        assert len(data.mean) == 1 and 0 < data.mean[0] < 1 and data.std[0] > 0
        repeated = build_model(config["model"], info.num_classes, info.in_channels).eval()
        state = torch.load(out / entry["checkpoint"], map_location="cpu", weights_only=False)
        repeated.load_state_dict(state["model"])
        plain = build_model({"base": config["model"]["base"], "kwargs": config["model"]["kwargs"]},
                            info.num_classes, info.in_channels).eval()
        plain.load_state_dict(torch.load(out / entry["state_dict"], map_location="cpu"))  # strict
        with torch.no_grad():
            expected = repeated(x)
            assert torch.allclose(plain(x), expected, atol=1e-5)
        assert entry["torchscript"] == f"trial_{entry['trial']}.ts" and entry["torchscript_max_abs_diff"] <= 1e-4
        # the TorchScript file runs where repnas cannot even be imported
        script = ("import sys; sys.modules['repnas'] = None\n"
                  "import torch\n"
                  "try:\n    import repnas\nexcept ImportError:\n    pass\n"
                  "else:\n    raise SystemExit('repnas was importable')\n"
                  f"model = torch.jit.load({str(out / entry['torchscript'])!r})\n"
                  f"torch.save(model(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        got = torch.load(tmp_path / "y.pt")
        assert got.shape == (7, info.num_classes) and (got - expected).abs().max() <= 1e-4
        assert entry["onnx"] == f"trial_{entry['trial']}.onnx"
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out / entry["onnx"]), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"images": x.numpy()})
        assert abs(torch.from_numpy(logits) - expected).max() <= 1e-4
        assert 0 <= entry["onnx_max_abs_diff"] <= 1e-4 and entry["onnx_checked_with"].startswith("onnxruntime")


def test_a_deployable_that_differs_is_refused(tmp_path):
    from repnas.errors import UserError
    from repnas.export._deploy import _check

    expected = torch.zeros(2, 3)
    assert _check("TorchScript", tmp_path / "m.ts", expected + 5e-5, expected) == pytest.approx(5e-5)
    with pytest.raises(UserError, match=r"differ from the repeated model.s by 0\.001"):
        _check("TorchScript", tmp_path / "m.ts", expected + 1e-3, expected)
