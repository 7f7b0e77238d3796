"""Helpers of the fault-injection suite: byte snapshots, one-line checks, subprocess commands."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> sha256 of its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(err: str) -> str:
    """The single ``repnas: error:`` line of ``err``; fails on tracebacks or several lines."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def search_argv(out: Path, *extra: str, trials: int = 2, epochs: int = 1) -> list[str]:
    return ["search", "--space", "quick", "--trials", str(trials), "--epochs", str(epochs), "--out", str(out),
            "--device", "cpu", "--quiet", *extra]


def repnas_cmd(*argv: str) -> list[str]:
    """The command line of a ``repnas`` subprocess (this checkout first on the path)."""
    return [sys.executable, "-m", "repnas", *argv]


def subprocess_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}
