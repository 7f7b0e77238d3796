"""A search's Optuna study: created with the search's config on it, or loaded and checked."""

from __future__ import annotations

import warnings

from repnas.errors import UserError
from repnas.runs._rundir import SearchConfig
from repnas.runs._storage import open_storage

#: the study user attribute holding the search's config (what ``--join`` and job arrays read)
SEARCH_ATTR = "repnas.search"


def open_study(search: SearchConfig, create: bool = False, sampler=None):
    """Create (``create=True``) or load the study of ``search``, with ``sampler`` (the worker's
    sampler, :func:`repnas.search._samplers.search_sampler`; None, Optuna's default, for a study
    opened only to be created or read)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(search.storage, durable=not getattr(search, "replay", None))
    if create:
        study = optuna.create_study(storage=storage, study_name=search.study, directions=search.directions,
                                    sampler=sampler, load_if_exists=False)
        with warnings.catch_warnings():  # experimental in Optuna, but what readers of the study use
            warnings.simplefilter("ignore")
            study.set_metric_names(search.objective_names)
        study.set_user_attr(SEARCH_ATTR, search.to_dict())
        return study
    study = optuna.load_study(study_name=search.study, storage=storage, sampler=sampler)
    directions = [d.name.lower() for d in study.directions]
    if directions != search.directions:
        raise UserError(f"study {search.study!r} optimises {directions}, not {search.directions}")
    return study


def trial_id_of(study, number: int) -> int:
    """The storage id of trial ``number``: what ``study._storage``'s setters take for a trial this
    process holds no ``optuna.Trial`` of (one left RUNNING by a killed process, a rung record)."""
    storage = study._storage
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
