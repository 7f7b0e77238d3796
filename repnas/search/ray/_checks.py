"""Checks of a ``--backend ray`` search, made before its run directory is made or changed."""

from __future__ import annotations

from pathlib import Path

from repnas.errors import UserError
from repnas.runs._rundir import SearchConfig


def check_ray_early_stop(search: SearchConfig) -> None:
    """``--early-stop`` under ``--backend ray``: only the rules Tune's scheduler applies."""
    from repnas.search._early_stop import RAY_RULES

    if search.backend == "ray" and search.early_stop not in RAY_RULES:
        raise UserError(f"--early-stop {search.early_stop} is not available with --backend ray "
                        f"(choose {' or '.join(RAY_RULES)}, or the optuna backend)")


def check_ray_origin(search: SearchConfig, out: str | Path) -> None:
    """A Ray run resumed where it did not start: refused. ``Tuner.restore`` unpickles the searcher
    Tune saved, which holds the storage of the run it was saved in; a moved copy would write into
    the study of the run it was copied from. (An Optuna-backend run resumes anywhere: its storage
    path in ``search.yaml`` is relative to it.)"""
    import optuna

    from repnas.runs._rundir import RunDir
    from repnas.runs._start import RUN_DIR_ATTR
    from repnas.runs._storage import open_storage
    from repnas.search.ray._results import experiment_paths, tune_storage

    if not experiment_paths(tune_storage(search, RunDir(out)), search.study):
        return  # no Tune experiment to restore
    summaries = optuna.get_all_study_summaries(open_storage(search.storage, heartbeat=False),
                                               include_best_trial=False)
    origin = next((s.user_attrs.get(RUN_DIR_ATTR) for s in summaries if s.study_name == search.study), None)
    here = str(Path(out).resolve())
    if origin and origin != here:
        raise UserError(f"cannot resume: this Ray run was started in {origin} and moved or copied to {here}; "
                        f"Tune's saved experiment would write to the study there. Resume it in {origin}, "
                        f"or start a new search with --config {Path(out) / 'search.yaml'}")
