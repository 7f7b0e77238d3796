"""A run directory is self-contained: moved or copied, it resumes on its own study, and a copy never
writes into the study of the run it was copied from (search.yaml names its storage relative to it)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from repnas.cli import main
from repnas.runs._rundir import SearchConfig
from repnas.runs._storage import absolute_storage, open_storage, portable_storage, sqlite_url


def _argv(out: Path, *extra: str, trials: int = 2) -> list[str]:
    return ["search", "--space", "quick", "--trials", str(trials), "--epochs", "1", "--out", str(out),
            "--device", "cpu", "--seed", "5", "--early-stop", "none", "--quiet", *extra]


def _complete(run: Path) -> list[tuple[int, tuple[float, ...]]]:
    search = SearchConfig.from_yaml(run / "search.yaml")
    study = optuna.load_study(study_name=search.study, storage=open_storage(search.storage))
    return [(t.number, tuple(t.values)) for t in study.trials if t.state.name == "COMPLETE"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_storage_paths_round_trip(tmp_path):
    run = tmp_path / "odd ?%# name"
    url = sqlite_url(run / "study.db")
    assert portable_storage(url, run) == "sqlite:///study.db"
    assert absolute_storage("sqlite:///study.db", run) == url
    journal = str((run / "journal.log").resolve())
    assert portable_storage(journal, run) == "journal.log"
    assert absolute_storage("journal.log", run) == journal
    outside = sqlite_url(tmp_path / "elsewhere.db")  # --storage outside the run: kept as it is
    assert portable_storage(outside, run) == outside
    for server in ("postgresql://u@h/db", "sqlite://", "sqlite:///:memory:"):
        assert portable_storage(server, run) == server and absolute_storage(server, run) == server


@pytest.mark.parametrize("workers", ["1", "2"], ids=["sqlite", "journal"])
def test_a_copied_run_resumes_on_its_own_study(tmp_path, workers, capsys):
    first = tmp_path / "first"
    assert main(_argv(first, "--workers", workers)) == 0, capsys.readouterr().err
    stored = "study.db" if workers == "1" else "journal.log"
    saved = yaml.safe_load((first / "search.yaml").read_text())["storage"]
    assert saved == ("sqlite:///study.db" if workers == "1" else "journal.log")
    before = _complete(first)
    assert len(before) == 2
    original = _digest(first / stored)

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, copy)
    assert main(["search", "--resume", "--out", str(copy), "--trials", "3", "--quiet"]) == 0, capsys.readouterr().err
    after = _complete(copy)
    assert after[:2] == before and len(after) == 3  # the copy went on from the same two trials
    assert _digest(first / stored) == original  # and never wrote into the study it was copied from
    assert _complete(first) == before

    moved = tmp_path / "moved"
    first.rename(moved)  # a moved run resumes where it lies
    assert main(["search", "--resume", "--out", str(moved), "--trials", "3", "--quiet"]) == 0, capsys.readouterr().err
    assert len(_complete(moved)) == 3
    assert not first.exists()
