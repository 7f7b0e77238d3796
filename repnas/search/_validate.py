"""Everything a search will need, checked before its run directory is made or changed.

What used to be found out by the first trial (and then by every trial: a bogus ``--device``, a
recipe key the trainer does not know, ``--device cuda`` on a machine without CUDA) made a search
that "succeeded" with every candidate failed. Here each is one line and exit code 2, before
anything is written: the device, the trainer's recipe (the very ``RunConfig`` check ``repnas
train`` applies), the dataset (loaded, and kept for the search's first worker), the space, and the
storage (read-only, :func:`repnas.search._storage.inspect_storage`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.search._rundir import SearchConfig

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")

#: (dataset, data_dir, seed) -> splits loaded by the check; the search's first worker reuses them.
_loaded: dict[tuple, Any] = {}


def check_device(device: str) -> None:
    """``--device``: a name torch knows, and hardware this machine has."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise UserError(f"--device {device}: CUDA is not available on this machine (torch "
                            f"{torch.__version__}, {build}); use --device cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available on this machine")


def check_recipe(search: SearchConfig) -> None:
    """The trial's recipe (space recipe + search recipe + epochs) as the trainer will check it."""
    from repnas.train._config import RunConfig

    space = search.search_space()
    recipe = {**space.recipe, **search.recipe, "epochs": search.epochs}
    try:
        RunConfig.from_dict({"model": {"family": "vgg4"}, "recipe": recipe,
                             "dataset": {"name": search.dataset, "data_dir": search.data_dir},
                             "seed": search.seed, "device": "cpu"})
    except UserError as exc:
        raise UserError(f"space {search.space_name or 'of search.yaml'}: {exc}") from None


def check_data(search: SearchConfig) -> None:
    """Load the dataset once (the first worker reuses it): a missing ``--data-dir`` or archive is
    one line now, not a failed trial each."""
    from repnas.train._data import load_dataset

    if search.data_dir is not None:
        where = Path(search.data_dir)
        if where.exists() and not where.is_dir():
            raise UserError(f"--data-dir {where} is not a folder")
        for parent in where.parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"--data-dir {where}: {parent} is not a folder")
    key = (search.dataset, search.data_dir, search.seed)
    _loaded.clear()
    _loaded[key] = load_dataset(search.dataset, data_dir=search.data_dir, seed=search.seed)


def loaded_data(search: SearchConfig):
    """The splits :func:`check_data` loaded for ``search`` (None if it loaded other ones)."""
    return _loaded.get((search.dataset, search.data_dir, search.seed))


def forget_data() -> None:
    _loaded.clear()


def check_storage(search: SearchConfig, out: str | Path, resume: bool) -> None:
    """The storage, read-only first (foreign data, 0 bytes, damage), then the study it must (resume)
    or must not (new search) hold."""
    from repnas.search._optuna_driver import check_storage as check_study
    from repnas.search._start import abandoned_study
    from repnas.search._storage import inspect_storage

    inspect_storage(search.storage, resume)
    if not resume and abandoned_study(search, out):
        return  # an empty study of a start killed before its rename: the new start replaces it
    try:
        check_study(search, resume)
    except UserError:
        raise
    except Exception as exc:  # a storage that opens but cannot be read
        text = str(exc).strip().splitlines()
        raise UserError(f"storage {search.storage} is unreadable ({type(exc).__name__}: "
                        f"{text[0] if text else ''})") from None


def check_ray_origin(search: SearchConfig, out: str | Path) -> None:
    """A Ray run resumed where it did not start: refused. ``Tuner.restore`` unpickles the searcher
    Tune saved, which holds the storage of the run it was saved in; a moved copy would write into
    the study of the run it was copied from. (An Optuna-backend run resumes anywhere: its storage
    path in ``search.yaml`` is relative to it.)"""
    import optuna

    from repnas.search._optuna_driver import open_storage
    from repnas.search._ray_driver import tune_storage
    from repnas.search._ray_results import experiment_paths
    from repnas.search._rundir import RunDir
    from repnas.search._start import RUN_DIR_ATTR

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


def check_ray_early_stop(search: SearchConfig) -> None:
    """``--early-stop`` under ``--backend ray``: only the rules Tune's scheduler applies."""
    from repnas.search._early_stop import RAY_RULES

    if search.backend == "ray" and search.early_stop not in RAY_RULES:
        raise UserError(f"--early-stop {search.early_stop} is not available with --backend ray "
                        f"(choose {' or '.join(RAY_RULES)}, or the optuna backend)")


def validate_search(search: SearchConfig, out: str | Path, resume: bool) -> None:
    """Every check above, cheapest first; nothing is written."""
    check_ray_early_stop(search)
    check_device(search.device)
    check_recipe(search)
    check_storage(search, out, resume)
    if resume and search.backend == "ray":
        check_ray_origin(search, out)
    if resume and search.backend == "optuna":
        from repnas.search._optuna_driver import check_sampler_pickles
        from repnas.search._rundir import RunDir

        check_sampler_pickles(search, RunDir(out))
    check_data(search)
