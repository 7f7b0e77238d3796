"""How architectures are explored: datasets, the fast trainer, run configs, search drivers."""

from repnas.search._config import RunConfig
from repnas.search._data import DataSplits, list_datasets, load_dataset
from repnas.search._early_stop import SuccessiveHalving
from repnas.search._export import export_trials
from repnas.search._front import front_rows, front_text
from repnas.search._optuna_driver import run_optuna_search
from repnas.search._rundir import OBJECTIVES, RunDir, SearchConfig, trials_frame
from repnas.search._runner import run_trial
from repnas.search._trainer import TrainResult, train

__all__ = [
    "OBJECTIVES",
    "DataSplits",
    "RunConfig",
    "RunDir",
    "SearchConfig",
    "SuccessiveHalving",
    "TrainResult",
    "export_trials",
    "front_rows",
    "front_text",
    "list_datasets",
    "load_dataset",
    "run_optuna_search",
    "run_trial",
    "train",
    "trials_frame",
]
