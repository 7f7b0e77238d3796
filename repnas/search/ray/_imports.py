"""How Ray workers import repnas: the installed package, whatever folder the search was started in.

A Ray driver sends its working directory (and its script's folder) to every worker of the job,
which puts them first on its ``sys.path`` (``ray._private.worker.connect`` fills
``JobConfig._py_driver_sys_path`` with ``os.path.abspath(os.curdir)``; the worker's
``maybe_initialize_job_config`` does ``sys.path.insert(0, p)`` for each, Ray 2.x). Started from
the folder that holds a checkout named ``repnas`` (what ``git clone .../repnas`` makes), that
folder holds ``repnas/``, a directory without ``__init__.py``: a namespace package for Python's
path search. setuptools' editable install (``pip install -e .``) finds the real package through a
finder appended to ``sys.meta_path``, which Python asks only after the path search has found
nothing, and a namespace portion counts as found: the workers' ``repnas`` became the checkout
folder and ``repnas.runs`` its run output folder ``runs/`` (``No module named
'repnas.runs._rundir'``, every trial an "internal error").

A regular package (a folder with ``__init__.py``) wins over namespace portions wherever it is on
``sys.path``. So where the driver's repnas is not on a ``sys.path`` entry (it came through such a
finder), the workers get the folder that holds it on their ``PYTHONPATH``: the entry setuptools'
``compat`` editable mode and a plain install would give them. It goes through the job's
``runtime_env`` ``env_vars`` (Ray's documented way to set a job's worker environment; a
``${PYTHONPATH}`` in the value is the node's own, expanded by ``ray._private.utils.update_envs``).
The driver's folder stays on the workers' path, where Ray puts it: a user's own ``--model
module:Net`` next to the driver keeps importing.

Before any trial starts, :func:`check_worker_imports` imports the trials' module in one task on
the driver's node: a worker that cannot import it stops the search with one line that says where
the worker found ``repnas`` and what to do, instead of every trial failing with Ray's "unexpected
internal error" and a traceback per retry. That task costs a worker's start and the trials'
imports (~4.5 s measured), so it runs only where a worker may import differently from this
process: a cluster not started by it (``--ray-address``, ``RAY_ADDRESS``), or a folder Ray puts
first on the workers' path that holds something named like a module this process imported
(:func:`shadowing_modules`). Elsewhere a local cluster's workers have this process's Python,
environment and path (its raylet inherits them) plus those folders, so they import what it did.
"""

from __future__ import annotations

import inspect
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from repnas._infra import InfrastructureError

#: how long the import check waits for its worker (one process start and the imports of a trial);
#: past that the search goes on unchecked: Tune would wait for workers just the same.
CHECK_TIMEOUT_S = 300.0


def package_root() -> Path:
    """The folder that holds the repnas package this process imported."""
    import repnas

    return Path(repnas.__file__).resolve().parent.parent


def found_on_path(root: Path, path: list[str] | None = None) -> bool:
    """Whether a plain ``sys.path`` search (no meta-path finders) finds the package under ``root``:
    false for setuptools' editable finder, true for site-packages, ``PYTHONPATH`` and ``.pth`` paths."""
    spec = PathFinder.find_spec("repnas", sys.path if path is None else path)
    origin = getattr(spec, "origin", None) if spec is not None else None
    return bool(origin) and Path(origin).resolve().parent.parent == root


def worker_runtime_env(address: str | None) -> dict[str, Any] | None:
    """The ``runtime_env`` of a search's Ray job: the package's folder first on the workers'
    ``PYTHONPATH`` where this process found repnas through a meta-path finder, else None (Ray's
    default environment: the workers find repnas as this process did).

    The node's own ``PYTHONPATH`` follows where it may have one: always on a cluster joined
    (``address``), and on the local cluster when this process has one (its raylet inherits this
    environment). Without one Ray would leave an empty entry, which Python reads as the worker's
    working directory."""
    root = package_root()
    if found_on_path(root):
        return None
    keep_node_path = address is not None or bool(os.environ.get("PYTHONPATH"))
    value = os.pathsep.join([str(root), "${PYTHONPATH}"]) if keep_node_path else str(root)
    return {"env_vars": {"PYTHONPATH": value}}


def worker_path_folders() -> list[str]:
    """The folders Ray puts first on this driver's workers' ``sys.path`` (``ray._private.worker.connect``,
    Ray 2.x): the script's folder where it is on this process's path, and the working directory."""
    script = os.path.dirname(os.path.realpath(sys.argv[0])) if sys.argv and sys.argv[0] else ""
    return [*([script] if script and script in sys.path else []), os.path.abspath(os.curdir)]


def shadowing_modules(folders: list[str]) -> list[str]:
    """Top-level modules this process imported of which ``folders`` hold something else by that name
    (a folder, or a module file): what a worker with ``folders`` first on its path may import in its
    place. By name, so it errs towards checking: a folder without ``__init__.py`` only shadows a
    package that a meta-path finder supplies (the checkout named ``repnas``), yet is listed."""
    found = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name if entry.is_dir() else inspect.getmodulename(entry.name)
            module = sys.modules.get(name) if name and name.isidentifier() else None
            if module is None:
                continue
            origin = getattr(module, "__file__", None)
            ours = ({Path(origin).resolve(), Path(origin).resolve().parent} if origin else
                    {Path(p).resolve() for p in getattr(module, "__path__", None) or []})
            if Path(entry.path).resolve() not in ours:
                found.append(name)
    return found


def _import_in_worker(module: str) -> tuple[str, str] | None:
    """Runs in a Ray worker, shipped by value (it must not need repnas to be unpickled): imports
    ``module``; None, or what failed and where the worker's ``repnas`` came from."""
    import importlib
    import sys

    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure at import time: the trials would hit the same one
        found = sys.modules.get("repnas")
        where = getattr(found, "__file__", None)
        if found is not None and where is None:  # a namespace package: folders without __init__.py
            where = f"{', '.join(getattr(found, '__path__', None) or [])} (a folder without __init__.py)"
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {first}", where or "not found"
    return None


def check_worker_imports(module: str, run_dir: str | Path, address: str | None = None) -> None:
    """Import ``module`` (the trials' module) in one Ray task on the driver's node; raise
    :class:`InfrastructureError` with one line if it fails. Needs ``ray.init`` done. Skipped where
    the workers are certain to import as this process did (the module docstring): on a local
    cluster (``address`` None, no ``RAY_ADDRESS``) whose workers' first folders shadow nothing.

    The task is pinned to this node (``NodeAffinitySchedulingStrategy``): its workers see this
    machine's files and installation, so a failure is certain to hit the trials placed here; other
    nodes of a cluster are not checked. ``num_cpus=0``: it waits for no trial's slot."""
    if address is None and not os.environ.get("RAY_ADDRESS") and not shadowing_modules(worker_path_folders()):
        return
    import ray
    from ray import cloudpickle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = sys.modules[__name__]
    probe = ray.remote(num_cpus=0, max_retries=0)(_import_in_worker).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
    # cloudpickle's documented switch for code the remote side may lack: the function travels as
    # code, so the check runs even where the worker's ``import repnas`` is what fails
    cloudpickle.register_pickle_by_value(here)
    try:
        ref = probe.remote(module)
    finally:
        cloudpickle.unregister_pickle_by_value(here)
    try:
        failed = ray.get(ref, timeout=CHECK_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        return
    except ray.exceptions.RayError as exc:  # no worker could run it (its runtime env, a crash)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InfrastructureError(f"Ray could not start a worker on this node ({type(exc).__name__}: "
                                  f"{first[:200]}); then `repnas search --resume --out {run_dir}` continues") from None
    if failed is None:
        return
    error, where = failed
    cwd = os.getcwd()
    raise InfrastructureError(
        f"Ray workers could not import repnas ({error}; their repnas was {where}): a Ray worker searches "
        f"the folder the search was started in ({cwd}) before the installed packages; start the search "
        f"from another folder, or check that `cd {cwd} && {sys.executable} -c 'import {module}'` works; "
        f"then `repnas search --resume --out {run_dir}` continues")
