"""Every worker of a job array started with the same command: the first starts, the others join.

Why: a SLURM job array or a Kubernetes Job runs one command on every worker at the same moment.
``repnas search --storage postgresql://... --study S --space ...`` used to refuse every worker but
the first ("study already exists; use --resume"), so workers had to be ordered by hand. Now the
study's recorded config (``repnas.search``, what the starter wrote) decides: a worker that finds
it, or loses the race to create it (Optuna's ``DuplicatedStudyError``), joins; if its flags make a
different search, it is refused with one line naming the first difference. Machine-local settings
(workers, device, GPU share, data folder, storage URL spelling) may differ per worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repnas.errors import UserError

#: SearchConfig fields each worker may set for itself
LOCAL_FIELDS = ("workers", "device", "gpus_per_trial", "data_dir", "storage", "ray", "max_failures")


def config_difference(mine: dict[str, Any], recorded: dict[str, Any]) -> str | None:
    """The first search-defining field where ``mine`` differs from ``recorded``, as one phrase."""
    for key, value in mine.items():
        if key in LOCAL_FIELDS or key not in recorded:
            continue
        if value != recorded[key]:
            if key == "space":
                return f"space {mine.get('space_name')!r} (the study's is {recorded.get('space_name')!r})"
            return f"{key.replace('_', '-')} {_show(value)} (the study's is {_show(recorded[key])})"
    return None


def _show(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "name" in value[0]:
        return ",".join(str(v["name"]) for v in value)
    return str(value)


def worker_run_dir(out: Path, study: str) -> Path:
    """``out`` if this worker may use it (new, empty, or a free run of the same study), else the first
    free ``<out>-join<k>`` (workers of one machine share a default ``--out``)."""
    from repnas.runs._lock import is_locked
    from repnas.runs._rundir import RunDir, SearchConfig

    for k in range(1000):
        candidate = out if k == 0 else out.with_name(f"{out.name}-join{k}")
        run = RunDir(candidate)
        if not run.is_used():
            return candidate
        if run.search_yaml.is_file() and not is_locked(candidate):
            try:
                if SearchConfig.from_yaml(run.search_yaml).study == study:
                    return candidate
            except UserError:
                pass
    raise UserError(f"no free run directory beside {out} for this worker; pass --out")


def as_array_worker(search, out: Path, join_timeout: float, wait: bool = False):
    """``(search, out)`` of this worker joining ``search``'s study when the study exists already (or,
    ``wait``, when another worker is creating it); None when this worker is to start it."""
    from repnas.runs._join_wait import study_config
    from repnas.runs._storage import is_server_storage
    from repnas.runs._workers import join_search_config

    if not is_server_storage(search.storage):
        return None
    recorded = study_config(search.storage, search.study) if not wait else None
    if recorded is None and not wait:
        return None
    overrides = {"workers": search.workers, "device": search.device, "gpus_per_trial": search.gpus_per_trial,
                 "data_dir": search.data_dir, "max_failures": search.max_failures}
    joined = join_search_config(search.storage, search.study, overrides, timeout=join_timeout)
    different = config_difference(search.to_dict(), joined.to_dict())
    if different:
        raise UserError(f"study {search.study!r} in {search.storage} is a different search: this command gives "
                        f"{different}; give every worker the starter's command, or --join")
    return joined, worker_run_dir(Path(out), search.study)


def lost_the_start(search, exc: BaseException) -> bool:
    """Whether ``exc``, raised while this worker started ``search``, means another worker of the
    array is starting it (the study created first, or the same ``--out`` being started or made)."""
    from repnas.runs._lock import RunInUse
    from repnas.runs._storage import is_server_storage

    if not is_server_storage(search.storage):
        return False
    return (type(exc).__name__ == "DuplicatedStudyError" or isinstance(exc, RunInUse)
            or (isinstance(exc, UserError) and "already exists" in str(exc)))
