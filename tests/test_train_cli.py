"""``repnas train``: JSON output, run directories, configs round-trip, bad input is one line + exit 2."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from repnas.cli import main
from repnas.train import RunConfig

SMALL_YAML = """\
model: {family: vgg, kwargs: {cfg: [8, M, 16, M]}}
dataset: {name: digits}
recipe: {epochs: 1, batch_size: 256}
device: cpu
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("REPNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPNAS_DATA", raising=False)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_json_out_dir_and_config_round_trip(tmp_path, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_YAML)
    out = tmp_path / "run"
    argv = ["train", str(config), "--out", str(out), "--json", "--quiet", "--seed", "3"]
    code, stdout, _ = _run(capsys, *argv)
    assert code == 0
    metrics = json.loads(stdout.strip().splitlines()[-1])
    for key in ("val_accuracy", "test_accuracy", "params", "flops", "train_seconds", "images_per_second"):
        assert key in metrics
    assert metrics["params"] == 8 * 9 + 8 + 2 * 8 + 16 * 8 * 9 + 16 + 2 * 16 + 16 * 10 + 10
    assert metrics["seed"] == 3 and metrics["epochs"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.json"]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]

    # what --out wrote (the format the search exports) is accepted as is, and reproduces the run
    written = RunConfig.from_yaml(out / "config.yaml")
    assert written.seed == 3 and written.model["kwargs"]["cfg"] == [8, "M", 16, "M"]
    code, stdout, _ = _run(capsys, "train", str(out / "config.yaml"), "--json", "--quiet")
    again = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and again["test_accuracy"] == metrics["test_accuracy"]


def test_family_name_with_flags_prints_a_summary(capsys):
    argv = ["train", "vgg4", "--dataset", "digits", "--steps", "2", "--batch-size", "64", "--device", "cpu"]
    code, stdout, _ = _run(capsys, *argv, "--quiet")
    assert code == 0 and "vgg4 on digits" in stdout and "params 113,226" in stdout


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text(SMALL_YAML.replace("batch_size: 256", "batch_size: 256, epoch: 3"))
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text(SMALL_YAML.replace("epochs: 1", "epochs: ten"))
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("model: [unclosed\n")
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    return {
        "unknown dataset": ["vgg4", "--dataset", "svhn"],
        "missing data": ["vgg4", "--dataset", "mnist", "--data-dir", str(empty_dir)],
        "corrupt data": ["vgg4", "--dataset", f"imagefolder:{corrupt}"],
        "unknown key": [str(unknown_key)],
        "wrong type": [str(wrong_type)],
        "not yaml": [str(not_yaml)],
        "missing config": [str(tmp_path / "absent.yaml")],
        "zero epochs": ["vgg4", "--epochs", "0"],
        "unknown model": ["no_such_net", "--epochs", "1"],
    }


EXPECTED = {
    "unknown dataset": "unknown dataset 'svhn'",
    "missing data": "no mnist data in",
    "corrupt data": "cannot read archive",
    "unknown key": "unknown key 'recipe.epoch'",
    "wrong type": "recipe.epochs: expected int, got str",
    "not yaml": "not valid YAML",
    "missing config": "no such config file",
    "zero epochs": "recipe.epochs must be >= 1",
    "unknown model": "no_such_net",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input_is_one_line_exit_2_and_out_untouched(tmp_path, capsys, case):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    argv = _bad_inputs(tmp_path)[case]
    code, stdout, stderr = _run(capsys, "train", *argv, "--out", str(out), "--quiet", "--device", "cpu")
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("repnas: error: ") and EXPECTED[case] in stderr
    assert stdout == "" and _snapshot(out) == before


def test_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_YAML)
    out = tmp_path / "run"
    assert _run(capsys, "train", str(config), "--out", str(out), "--quiet")[0] == 0
    before = _snapshot(out)
    code, _, stderr = _run(capsys, "train", str(config), "--out", str(out), "--quiet")
    assert code == 2 and "already holds a run" in stderr and _snapshot(out) == before
    # --resume of a finished run trains nothing more and reports the same test accuracy
    first = json.loads((out / "metrics.json").read_text())
    code, stdout, _ = _run(capsys, "train", str(config), "--out", str(out), "--quiet", "--resume", "--json")
    assert code == 0 and json.loads(stdout.splitlines()[-1])["test_accuracy"] == first["test_accuracy"]


def test_to_yaml_from_yaml_is_the_identity_and_types_are_checked():
    config = RunConfig.from_yaml(SMALL_YAML)
    assert RunConfig.from_yaml(config.to_yaml()) == config
    data = yaml.safe_load(config.to_yaml())
    assert data["recipe"]["weight_decay"] == 5e-4 and data["model"] == {"family": "vgg",
                                                                      "kwargs": {"cfg": [8, "M", 16, "M"]}}
    from repnas.errors import UserError

    with pytest.raises(UserError, match=r"recipe\.lr: expected float"):
        RunConfig.from_dict({**data, "recipe": {**data["recipe"], "lr": "fast"}})
    with pytest.raises(UserError, match=r"recipe\.nesterov: expected bool"):
        RunConfig.from_dict({**data, "recipe": {**data["recipe"], "nesterov": 1}})
    with pytest.raises(UserError, match=r"unknown key 'model\.plans'"):
        RunConfig.from_dict({**data, "model": {"base": "vgg", "plans": {}}})
    assert RunConfig.from_dict({**data, "recipe": {"lr": 1}}).recipe.lr == 1.0  # ints widen to float


def test_imagefolder_archive_through_the_cli(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        for c in range(2):
            folder = tmp_path / "two" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(8):
                Image.new("L", (8, 8), 200 * c + i).save(folder / f"{i}.png")
    Image.new("L", (10, 10), 90).save(tmp_path / "two" / "train" / "c0" / "odd.png")
    archive = tmp_path / "two.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "two", arcname="two")
    args = ["train", "vgg4", "--dataset", f"imagefolder:{archive}", "--steps", "1", "--batch-size", "8",
            "--json", "--quiet", "--device", "cpu", "--out", str(tmp_path / "run")]
    code, _, err = _run(capsys, *args)
    assert code == 2 and "two/train/c0/odd.png is 10x10, two/test/c0/0.png is 8x8" in err
    assert not (tmp_path / "run").exists()
    code, stdout, _ = _run(capsys, *args, "--image-size", "12")  # every image resized to 12x12
    assert code == 0 and json.loads(stdout.splitlines()[-1])["dataset"] == f"imagefolder:{archive}"
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["dataset"]["name"] == f"imagefolder:{archive}" and config["dataset"]["image_size"] == 12


def test_train_takes_any_device_runconfig_takes(capsys):
    """``--device cuda:0`` is RunConfig's business (the GPU session's check ran it and argparse refused
    it as "invalid choice"); on a machine without CUDA it is RunConfig's one line."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "vgg4", "--dataset", "digits", "--epochs", "1", "--device", "cuda:0", "--quiet"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["train", "vgg4", "--dataset", "digits", "--epochs", "1", "--device", "gpu", "--quiet"]) == 2
    assert "device must be auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
