"""Everything a search will need, checked before its run directory is made or changed.

What used to be found out by the first trial (and then by every trial: a bogus ``--device``, a
recipe key the trainer does not know, ``--device cuda`` on a machine without CUDA) made a search
that "succeeded" with every candidate failed. Here each is one line and exit code 2, before
anything is written: the device, the trainer's recipe (the very ``RunConfig`` check ``repnas
train`` applies), the dataset (loaded, and kept for the search's first worker), the space, and the
storage (read-only, :func:`repnas.runs._storage.inspect_storage`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.runs._rundir import SearchConfig

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")

#: (dataset, data_dir, seed, image_size) -> splits loaded by the check; the search's first worker reuses them.
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
                             "dataset": {"name": search.dataset, "data_dir": search.data_dir,
                                         "image_size": search.image_size},
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
    _loaded.clear()
    data = load_dataset(search.dataset, data_dir=search.data_dir, seed=search.seed, image_size=search.image_size)
    if search.dataset.lower().startswith("imagefolder:"):  # the solver's shape is read without loading
        shape, loaded = search.dataset_shape(), (data.num_classes, data.in_channels, *data.image_size)
        if (shape.num_classes, shape.in_channels, shape.image_size, shape.image_size) != loaded:
            raise UserError(f"--dataset {search.dataset}: its files were read as {shape} but loaded as "
                            f"{loaded} (classes, channels, height, width); has it changed?")
    _loaded[_data_key(search)] = data


def _data_key(search: SearchConfig) -> tuple:
    return search.dataset, search.data_dir, search.seed, search.image_size


def loaded_data(search: SearchConfig):
    """The splits :func:`check_data` loaded for ``search`` (None if it loaded other ones)."""
    return _loaded.get(_data_key(search))


def forget_data() -> None:
    _loaded.clear()


def validate_search(search: SearchConfig, out: str | Path, resume: bool) -> None:
    """Every check above, cheapest first; nothing is written."""
    from repnas.runs import check_storage
    from repnas.search.ray._checks import check_ray_early_stop, check_ray_origin

    check_ray_early_stop(search)
    if search.replay:  # nothing is trained or loaded: the table must be the one the search started with
        from repnas.search._replay import check_replay

        check_replay(search)
    else:
        check_device(search.device)
    check_recipe(search)
    check_storage(search, resume, out)
    if resume and search.backend == "ray":
        check_ray_origin(search, out)
    if resume and search.backend == "optuna":
        from repnas.runs._rundir import RunDir
        from repnas.search._samplers import check_sampler_pickles

        check_sampler_pickles(search, RunDir(out))
    if not search.replay:
        check_data(search)
