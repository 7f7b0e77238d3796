"""How candidates are explored: the public API (:func:`run_search`), canonical candidates, the
trial runner, what the sampler is told, early stopping, progress and the Optuna driver; recorded
tables of trained candidates (:func:`build_table`) and searches replayed over them; the Ray Tune
backend is :mod:`repnas.search.ray` (not imported here). Where a search lives (run directory,
storages, locks) is :mod:`repnas.runs`; training one candidate, :mod:`repnas.train`; what a search
delivers (exported configs, weights, TorchScript, ONNX), :mod:`repnas.export`."""

from repnas.analysis._front import front_rows, front_text
from repnas.runs._rundir import OBJECTIVES, RunDir, SearchConfig, trials_frame
from repnas.search._api import SearchResult, run_search, search_config
from repnas.search._canonical import model_key
from repnas.search._early_stop import MultiObjectiveASHA, SuccessiveHalving
from repnas.search._optuna_driver import run_optuna_search
from repnas.search._runner import run_trial
from repnas.search._table import TableInfo, read_table, table_key
from repnas.search._table_build import BuildResult, build_table

__all__ = [
    "OBJECTIVES",
    "BuildResult",
    "MultiObjectiveASHA",
    "RunDir",
    "SearchConfig",
    "SearchResult",
    "SuccessiveHalving",
    "TableInfo",
    "build_table",
    "front_rows",
    "front_text",
    "model_key",
    "read_table",
    "run_optuna_search",
    "run_search",
    "run_trial",
    "search_config",
    "table_key",
    "trials_frame",
]
