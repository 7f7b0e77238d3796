"""Bad input to `repnas search` / `repnas export`: one line, exit 2, existing runs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from repnas.cli import main


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "run"
    assert main(["search", "--space", "quick", "--trials", "2", "--epochs", "1", "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    return out


def _fails(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("repnas: error: "), err
    assert message in err, err
    return err


def test_budget_below_the_smallest_candidate_names_the_minimum(tmp_path, capsys):
    err = _fails(capsys, ["search", "--space", "quick", "--budget", "50", "--out", str(tmp_path / "r")],
                 "below the smallest candidate")
    assert "96 params" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["--space", "quik"], "unknown space 'quik'"),
    (["--space", "quick", "--dataset", "cifar11"], "unknown dataset 'cifar11'"),
    (["--space", "quick", "--trials", "0"], "--trials must be >= 1"),
    (["--space", "quick", "--budget", "lots"], "--budget"),
    (["--space", "quick", "--objectives", "val_accuracy,speed"], "objectives"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    _fails(capsys, ["search", *argv, "--out", str(tmp_path / "r")], message)
    assert not (tmp_path / "r").exists()


def test_unknown_family_and_malformed_space_yaml(tmp_path, capsys):
    bad_family = tmp_path / "family.yaml"
    bad_family.write_text("name: x\nfamily: mobilenet\nwidths: [8, 16]\n")
    _fails(capsys, ["search", "--space", str(bad_family), "--out", str(tmp_path / "r")], "unknown family")
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("name: x\nfamily: vgg\nwidths: [8, 16\n")
    _fails(capsys, ["search", "--space", str(malformed), "--out", str(tmp_path / "r")], "malformed YAML")
    assert not (tmp_path / "r").exists()


def test_existing_run_directory_is_untouched(existing, capsys):
    before = _snapshot(existing)
    _fails(capsys, ["search", "--space", "quick", "--trials", "3", "--out", str(existing)], "already exists")
    _fails(capsys, ["search", "--resume", "--out", str(existing), "--trials", "0"], "--trials must be >= 1")
    _fails(capsys, ["search", "--resume", "--out", str(existing), "--space", "resnet"], "differs")
    assert _snapshot(existing) == before


def test_resume_compares_a_space_file_by_what_it_defines(existing, tmp_path, capsys):
    import yaml

    from repnas.spaces import load_space

    before = _snapshot(existing)
    changed = load_space("quick").to_dict()
    changed["knobs"]["rank"] = {"choices": [1, 2, 3]}
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(changed))  # same name, other knobs
    _fails(capsys, ["search", "--resume", "--out", str(existing), "--space", str(tmp_path / "quick.yaml")],
           "differs from the run's space 'quick'")
    assert _snapshot(existing) == before
    (tmp_path / "same.yaml").write_text(yaml.safe_dump(load_space("quick").to_dict()))
    assert main(["search", "--resume", "--out", str(existing), "--space", str(tmp_path / "same.yaml"),
                 "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    from repnas.runs._rundir import SearchConfig

    assert SearchConfig.from_yaml(existing / "search.yaml").data_dir == str(tmp_path / "data")


def test_storage_holding_another_study(existing, tmp_path, capsys):
    before = _snapshot(existing)
    storage = f"sqlite:///{existing / 'study.db'}"
    _fails(capsys, ["search", "--space", "quick", "--storage", storage, "--study", "other",
                    "--out", str(tmp_path / "new")], "holds study 'run'")
    _fails(capsys, ["search", "--space", "quick", "--storage", storage, "--out", str(tmp_path / "run")],
           "already exists")
    assert _snapshot(existing) == before
    assert not (tmp_path / "new").exists() and not (tmp_path / "run").exists()


def test_export_errors(existing, tmp_path, capsys):
    _fails(capsys, ["export", str(tmp_path), "--top", "1", "--out", str(tmp_path / "x")],
           "not a search run directory")
    _fails(capsys, ["export", str(existing), "--top", "0", "--out", str(tmp_path / "x")], "--top must be >= 1")
