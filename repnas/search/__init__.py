"""How candidates are explored: Optuna and Ray Tune drivers, the run directory, the trial runner,
export and early stopping. Training one candidate lives in :mod:`repnas.train`."""

from repnas.search._canonical import model_key
from repnas.search._early_stop import MultiObjectiveASHA, SuccessiveHalving
from repnas.search._export import export_trials
from repnas.search._front import front_rows, front_text
from repnas.search._optuna_driver import run_optuna_search
from repnas.search._rundir import OBJECTIVES, RunDir, SearchConfig, trials_frame
from repnas.search._runner import run_trial

__all__ = [
    "OBJECTIVES",
    "MultiObjectiveASHA",
    "RunDir",
    "SearchConfig",
    "SuccessiveHalving",
    "export_trials",
    "front_rows",
    "front_text",
    "model_key",
    "run_optuna_search",
    "run_trial",
    "trials_frame",
]
