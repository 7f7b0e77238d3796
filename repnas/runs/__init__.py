"""Where a search lives and who owns it: the run directory, its config, its study's storage.

A search is a run directory (:class:`RunDir`: ``search.yaml``, the study, ``trials.parquet``, one
folder per trial) plus an Optuna study in a storage: SQLite or a journal file inside the run
directory, or a database server shared by many machines. This package knows nothing of samplers,
training or Ray: it opens and checks storages (:func:`open_storage`, :func:`check_storage`,
:func:`storage_file`), creates and loads studies (:func:`open_study`), starts a run atomically and
holds its owner lock (:func:`new_run`, :func:`existing_run`), records which trial trains which
model (:class:`ModelClaims`), and keeps many workers honest (heartbeats, the study lock, lost and
interrupted trials). :mod:`repnas.search` explores; it calls down here for all of that.
"""

from repnas.runs._claims import ModelClaims, TrialModels
from repnas.runs._lock import OwnerLock, RunInUse
from repnas.runs._rundir import (
                                 DEFAULT_OBJECTIVES,
                                 OBJECTIVES,
                                 SAMPLERS,
                                 STATUSES,
                                 TRIAL_COLUMNS,
                                 RunDir,
                                 SearchConfig,
                                 objectives_from_names,
                                 rows_frame,
                                 trials_frame,
)
from repnas.runs._start import check_storage, existing_run, new_run
from repnas.runs._storage import (
                                 absolute_storage,
                                 inspect_storage,
                                 is_server_storage,
                                 open_storage,
                                 portable_storage,
                                 sqlite_url,
                                 storage_exists,
                                 storage_file,
)
from repnas.runs._study import open_study
from repnas.runs._workers import (
                                 count_replacement,
                                 join_search_config,
                                 recover_interrupted,
                                 retried_trials,
                                 study_lock,
                                 workers_replaced,
)

__all__ = [
    "DEFAULT_OBJECTIVES",
    "OBJECTIVES",
    "SAMPLERS",
    "STATUSES",
    "TRIAL_COLUMNS",
    "ModelClaims",
    "OwnerLock",
    "RunDir",
    "RunInUse",
    "SearchConfig",
    "TrialModels",
    "absolute_storage",
    "check_storage",
    "count_replacement",
    "existing_run",
    "inspect_storage",
    "is_server_storage",
    "join_search_config",
    "new_run",
    "objectives_from_names",
    "open_storage",
    "open_study",
    "portable_storage",
    "recover_interrupted",
    "retried_trials",
    "rows_frame",
    "sqlite_url",
    "storage_exists",
    "storage_file",
    "study_lock",
    "trials_frame",
    "workers_replaced",
]
