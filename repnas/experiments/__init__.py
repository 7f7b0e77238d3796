"""Experiments that test the paper's claims: one YAML per experiment, one command per experiment.

``python -m repnas.experiments run experiments/c1c2_vgg_depth.yaml`` trains every (model, seed) of
the file with one shared recipe (skipping runs that already have a result file), then rebuilds the
tables (CSV + Markdown, mean ± std over seeds) and a Plotly figure under ``results/<name>/``.
``--smoke`` runs the file's tiny variant (CPU, seconds). See experiments/README.md.
"""

from repnas.experiments._config import Experiment, ModelEntry, load_experiment
from repnas.experiments._figures import accuracy_vs_params, front_vs_handmade, write_figure
from repnas.experiments._frontier import dominance_table, load_handmade, load_search, run_compare
from repnas.experiments._runner import RunOutcome, run_experiment, run_path
from repnas.experiments._tables import (
    compare_table,
    load_runs,
    markdown_table,
    relative_gain,
    relative_gain_table,
    summarize,
    write_tables,
)

__all__ = [
    "Experiment",
    "ModelEntry",
    "RunOutcome",
    "accuracy_vs_params",
    "compare_table",
    "dominance_table",
    "front_vs_handmade",
    "load_experiment",
    "load_handmade",
    "load_runs",
    "load_search",
    "markdown_table",
    "relative_gain",
    "relative_gain_table",
    "run_compare",
    "run_experiment",
    "run_path",
    "summarize",
    "write_figure",
    "write_tables",
]
