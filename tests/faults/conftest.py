"""Fixtures of the fault-injection suite: a finished run shared by the table-driven cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fault_helpers import search_argv

from repnas.cli import main


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A completed 2-trial ``quick`` search (1 epoch each). Tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(search_argv(out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run, its storage URL pointing at the copy."""
    from repnas.runs._rundir import RunDir, SearchConfig

    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    search = SearchConfig.from_yaml(out / "search.yaml")
    search.storage = RunDir(out).default_storage(search.workers)
    search.to_yaml(out / "search.yaml")
    return out
