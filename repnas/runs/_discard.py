"""Take back a new search that trained nothing usable because every candidate was over its budget.

Why: such a search ends with exit 2 and advice (``--budget N``, the smallest budget that fits one
of its points); were its run directory left behind, the very command it advises would be refused on
the same ``--out`` ("already exists"). Nothing of value is lost: every trial stopped at the solver,
before training, and the advice line says what they needed. A resumed or joined search is never
discarded (its directory and study hold earlier work).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from repnas.runs._rundir import SearchConfig


def discard_infeasible_start(search: SearchConfig, out: str | Path) -> bool:
    """Remove the run directory ``out`` a new, all-infeasible search made, and its study where it
    lives outside the run directory; True when it did. A run another process owns is left alone."""
    from repnas.runs._lock import OwnerLock, RunInUse
    from repnas.runs._storage import storage_file

    out = Path(out)
    if not (out / "search.yaml").is_file():
        return False
    try:
        lock = OwnerLock(out).acquire()
    except RunInUse:
        return False
    try:
        path = storage_file(search.storage)
        inside = path is not None and path.resolve().is_relative_to(out.resolve())
        if not inside:
            _delete_study(search)
        shutil.rmtree(out)
    finally:
        lock.release()
    return True


def _delete_study(search: SearchConfig) -> None:
    import optuna

    from repnas.runs._storage import open_storage

    storage = open_storage(search.storage, heartbeat=False)
    study = optuna.load_study(study_name=search.study, storage=storage)
    if all(t.user_attrs.get("status") == "infeasible" for t in study.get_trials(deepcopy=False)):
        optuna.delete_study(study_name=search.study, storage=storage)
