"""Analysis of search results: load trials, Pareto fronts, hypervolume, summary tables, reports.

Reads the run directory described in docs/design.md (and Optuna studies or Ray Tune experiments
directly) into one pandas table shaped like ``trials.parquet``; everything else works on that table.
Does not import ``repnas.search``; plotly and ray are imported only by the functions that need them.
"""

from repnas.analysis._baselines import BASELINE_COLUMNS, load_baselines
from repnas.analysis._curves import learning_curves
from repnas.analysis._hypervolume import hypervolume, hypervolume_history, ideal_point, reference_point
from repnas.analysis._load import (
    DEFAULT_OBJECTIVES,
    TRIAL_COLUMNS,
    Run,
    load_run,
    load_trials,
    normalize_trials,
    parse_objectives,
    trials_from_study,
    trials_from_tune,
)
from repnas.analysis._pareto import feasible_mask, pareto_front, pareto_mask
from repnas.analysis._report import build_report, load_inputs, report_figures, write_images, write_report
from repnas.analysis._tables import front_table, knob_effects, trial_commands

__all__ = [
    "BASELINE_COLUMNS",
    "DEFAULT_OBJECTIVES",
    "TRIAL_COLUMNS",
    "Run",
    "build_report",
    "feasible_mask",
    "front_table",
    "hypervolume",
    "hypervolume_history",
    "ideal_point",
    "knob_effects",
    "learning_curves",
    "load_baselines",
    "load_inputs",
    "load_run",
    "load_trials",
    "normalize_trials",
    "pareto_front",
    "pareto_mask",
    "parse_objectives",
    "reference_point",
    "report_figures",
    "trial_commands",
    "trials_from_study",
    "trials_from_tune",
    "write_images",
    "write_report",
]
