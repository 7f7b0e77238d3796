"""What ``run`` and ``tables`` write for one train experiment: its tables and its figure, from its runs.

Its own module so that the command line and the results page (which rebuilds every experiment) both
call it without importing each other.
"""

from __future__ import annotations

from pathlib import Path

from repnas.experiments._config import Experiment
from repnas.experiments._figures import accuracy_vs_params, write_figure
from repnas.experiments._tables import load_runs, summarize, write_tables

__all__ = ["write_outputs"]


def write_outputs(exp: Experiment, out: Path, plotlyjs: str) -> dict[str, Path]:
    """Rebuild ``exp``'s tables and figure from ``out/runs/*.json``; print and return what was written."""
    written = write_tables(exp, out)
    runs = load_runs(out)
    summary = summarize(runs[runs["model"].isin([e.name for e in exp.models])], [e.name for e in exp.models])
    if len(summary):
        title = f"{exp.name}: {exp.dataset.get('name')}" + (" (smoke)" if exp.smoke else "")
        written["figure"] = write_figure(accuracy_vs_params(summary, title), out / "figure.html", plotlyjs)
    print(f"{exp.name}: wrote {', '.join(str(p) for p in written.values())}")
    return written
