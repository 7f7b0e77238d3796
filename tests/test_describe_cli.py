"""``repnas describe``: the numbers it prints, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from repnas.cli import main


def describe_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["describe", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_rep_vgg6_json_counts(capsys):
    out = describe_json(capsys, "rep_vgg6", "--dataset", "cifar10")
    assert out["params"] == 568_746
    assert out["physical_params"] == 9_416_010
    assert len(out["layers"]) == 10
    # rescaled to VGG11's shape: it computes exactly what VGG11 computes
    assert out["flops"] == describe_json(capsys, "vgg11")["flops"]


@pytest.mark.parametrize(("model", "dataset", "params"), [
    ("vgg6", "cifar10", 559_178),
    ("vgg11", "cifar10", 9_416_010),
    ("rep_vgg6", "cifar100", 614_916),
])
def test_paper_counts_through_the_cli(capsys, model, dataset, params):
    out = describe_json(capsys, model, "--dataset", dataset)
    assert out["params"] == params
    assert out["num_classes"] == (100 if dataset == "cifar100" else 10)


def test_vgg6_flops(capsys):
    # 2 x MACs of the five convs (32x32, 32x32, 16x16, 16x16, 8x8 maps) and the Linear
    macs = 32 * 32 * 9 * (3 * 64 + 64 * 64) + 16 * 16 * 9 * (64 * 128 + 128 * 128) + 8 * 8 * 9 * 128 * 256
    assert describe_json(capsys, "vgg6")["flops"] == 2 * (macs + 256 * 10)


def test_text_output_is_a_table(capsys):
    assert main(["describe", "rep_vgg4"]) == 0
    out = capsys.readouterr().out
    assert "126,534" in out and "9,416,010" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name"))
    assert len(lines) - header - 2 == 10  # header, rule, one row per conv
    assert "borrow:features.7" in out


def test_rot_models_default_to_rotmnist(capsys):
    out = describe_json(capsys, "cnn_rotmnist")
    assert out["dataset"] == "rotmnist" and out["input_shape"] == [1, 29, 29]
    assert out["params"] == 340_309
    # the authors' padding: conv outputs 25, 25, 12, 12, 6, 2 pixels wide on 29x29
    macs = (25 * 25 * 49 * 1 * 22 + 25 * 25 * 25 * 22 * 33 + 12 * 12 * 25 * (33 * 45 + 45 * 45)
            + 6 * 6 * 25 * 45 * 67 + 2 * 2 * 25 * 67 * 90 + 90 * 64 + 64 * 10)
    assert out["flops"] == 2 * macs


@pytest.mark.parametrize(("model", "params"), [
    ("wrn16_1", 175_258), ("wrn16_4", 2_749_786), ("wrn16_10", 17_118_874),  # the authors' plain WRN-16-k
    ("rep_cnn_c4", 352_987), ("rep_cnn_c8", 360_963), ("rep_cnn_c16", 372_179),  # their RepCNN-C_N
])
def test_authors_counts_through_the_cli(capsys, model, params):
    out = describe_json(capsys, model)
    assert out["params"] == params
    if model.startswith("rep_cnn"):  # RepCNN-C8 is 90..362 wide (not the G-CNN's 88..360)
        widths = {"rep_cnn_c4": 256, "rep_cnn_c8": 362, "rep_cnn_c16": 512}
        assert out["layers"][-1]["shape"][0] == widths[model]


def test_run_config_yaml(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"family": "vgg4"}, "dataset": {"name": "cifar100"}}))
    out = describe_json(capsys, str(config))
    assert out["params"] == 125_988


def test_list(capsys):
    assert main(["describe", "--list", "rep_vgg*"]) == 0
    assert capsys.readouterr().out.split() == [f"rep_vgg{n}" for n in range(4, 11)]


@pytest.mark.parametrize("argv", [["vgg6", "--dataset", "cifar1000"], ["nonexistent.yaml"]])
def test_bad_input_is_one_line(capsys, argv):
    assert main(["describe", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repnas: error:") and err.count("\n") == 1


def test_unknown_model_exits_2_without_traceback():
    env = {k: v for k, v in os.environ.items() if k != "REPNAS_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "repnas", "describe", "rep_vgg66"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == ["repnas: error: unknown model 'rep_vgg66'; "
                                        "did you mean rep_vgg6, rep_vgg9, rep_vgg8, rep_vgg7, rep_vgg5?"]


@pytest.mark.parametrize(
    ("layers", "named"),
    [
        ({"features.3": {"own": [128, 8]}}, "'features.3'"),  # source larger than the (64, 64) layer
        ({"features.3": {"borrow": "features.99"}}, "'features.3'"),  # unknown lender
        ({"features.50": {"own": [8, 8]}}, "'features.50'"),  # unknown layer
        ({"features.3": {"borrow": "features.7"}, "features.7": {"borrow": "features.3"}}, "cycle"),
    ],
)
def test_bad_plan_in_a_run_config_is_one_line_naming_the_layer(capsys, tmp_path, layers, named):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": {"base": "vgg11", "plan": {"layers": layers}}}))
    assert main(["describe", str(config), "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repnas: error:") and err.count("\n") == 1 and named in err
