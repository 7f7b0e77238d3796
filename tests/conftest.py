"""Shared fixtures: where the real datasets are, and a quiet, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(os.environ.get("REPNAS_SHARED", REPO_ROOT.parent / "shared")) / "datasets"


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch on the 2 CI cores and deterministic."""
    torch.set_num_threads(2)
    yield


@pytest.fixture
def shared_datasets() -> Path:
    """The folder holding cifar10.tar.gz and mnist.tar.gz; skips the test where it is absent."""
    if not (SHARED_DATASETS / "mnist.tar.gz").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
