"""Ray workers import the installed repnas whatever folder the search is started from.

Issue 27.6: installed with ``pip install -e .`` (setuptools' editable finder), a Ray search started
from the folder that holds the checkout (a folder named ``repnas``, with the run output folder
``runs/`` inside) failed in every worker: Ray puts the driver's folder first on the workers'
``sys.path``, where the checkout is a namespace package that wins over the editable finder, and
``repnas.runs`` became ``runs/``. The test builds that install without pip: a virtual environment
whose ``site-packages`` reaches this one's packages through a ``.pth`` path (torch, ray, optuna)
and holds setuptools' own editable finder (``editable_wheel._finder_template``, the code ``pip
install -e .`` writes) mapping ``repnas`` to this checkout. ``PYTHONPATH`` is left out: a
``repnas`` package on a path entry is a regular package and would hide the bug. Without the fix
the search exits 2 with "no trial completed"; with it, 0.

A worker that cannot import the trials' module stops the search before any trial, in one line.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray.tune")

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "repnas"
FINDER = "__editable___repnas_test_finder"
#: what `pip install -e .` puts in bin/repnas: a script, so the driver's sys.path[0] is bin/, not
#: the folder it runs in (as with the real command)
CONSOLE_SCRIPT = "import sys\nfrom repnas.cli import main\nsys.exit(main())\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def editable_install(tmp_path_factory) -> tuple[str, Path]:
    """``(python, console script)`` of a venv where repnas (this checkout) is an editable install
    (one for the module's tests: they only run it)."""
    tmp_path = tmp_path_factory.mktemp("editable")
    editable_wheel = pytest.importorskip("setuptools.command.editable_wheel")
    if not hasattr(editable_wheel, "_finder_template"):
        pytest.skip("this setuptools has no editable finder template")
    user_site = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    outer = [p for p in [*site.getsitepackages(), *user_site] if Path(p).is_dir()]
    if any((Path(p) / "repnas" / "__init__.py").is_file() for p in outer):
        pytest.skip("repnas is installed as a regular package here: an editable install cannot be imitated")
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot make a virtual environment: {(made.stderr or made.stdout).strip()[-160:]}")
    python = venv / "bin" / "python"
    inner = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (inner / "outer.pth").write_text("".join(f"{p}\n" for p in outer))
    namespaces = {".".join(d.relative_to(REPO_ROOT).parts): [str(d)] for d in PACKAGE.rglob("*")
                  if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()}
    (inner / f"{FINDER}.py").write_text(editable_wheel._finder_template(FINDER, {"repnas": str(PACKAGE)}, namespaces))
    (inner / "__editable__.repnas-test.pth").write_text(f"import {FINDER}; {FINDER}.install()\n")
    script = venv / "bin" / "repnas"
    script.write_text(CONSOLE_SCRIPT)
    where = subprocess.run([str(python), "-c", "import repnas; print(repnas.__file__)"], capture_output=True,
                           text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert where.stdout.strip() == str(PACKAGE / "__init__.py"), where.stdout + where.stderr
    return str(python), script


@pytest.mark.slow
def test_ray_search_from_the_folder_that_holds_the_checkout(editable_install, tmp_path):
    python, script = editable_install
    parent = tmp_path / "work"
    checkout = parent / "repnas"  # what `git clone .../repnas` makes, after README command 1
    (checkout / "runs" / "quick" / "trials" / "0").mkdir(parents=True)
    (checkout / "runs" / "quick" / "search.yaml").write_text("space: quick\n")
    (checkout / "pyproject.toml").write_text("[project]\nname = 'repnas'\n")
    # the checkout shadows the install here, as it does in every Ray worker (Ray puts the driver's
    # folder first on their sys.path): repnas.runs is the run output folder
    shadowed = subprocess.run([python, "-c", "import repnas.runs; print(list(repnas.runs.__path__))"],
                              capture_output=True, text=True, env=_env(), cwd=parent, timeout=120)
    assert shadowed.stdout.strip() == repr([str(checkout / "runs")]), shadowed.stdout + shadowed.stderr

    started = time.time()
    # item 6's command; one epoch each (the workers' imports failed before the first one)
    result = subprocess.run([python, str(script), "search", "--space", "quick", "--dataset", "digits", "--backend",
                             "ray", "--trials", "2", "--out", "ray-test", "--epochs", "1", "--early-stop", "none",
                             "--device", "cpu"],
                            capture_output=True, text=True, env=_env(), cwd=parent, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "ModuleNotFoundError" not in output, output[-3000:]
    table = pd.read_parquet(parent / "ray-test" / "trials.parquet")
    assert sorted(table["trial"]) == [0, 1] and (table["status"] == "complete").all()
    assert (table["val_accuracy"] > 0.3).all()  # 10 digit classes: trained, not guessing
    print(f"ray search from the checkout's parent folder: {time.time() - started:.1f} s")


@pytest.mark.slow
def test_a_worker_that_cannot_import_repnas_stops_the_search_in_one_line(editable_install, tmp_path):
    """The driver's folder holds an old repnas as a regular package (``__init__.py``), without the
    Ray backend: first on the workers' path, it wins over any install (the editable finder supplies
    only modules the shadowing package's folders lack, and ``repnas.search`` is there). The import
    check reports it before any trial starts: one line, exit 3, saying how to continue."""
    python, script = editable_install
    parent = tmp_path / "work"
    stray = parent / "repnas"
    (stray / "search").mkdir(parents=True)
    (stray / "__init__.py").write_text("")
    (stray / "search" / "__init__.py").write_text("")  # no repnas.search.ray in it
    result = subprocess.run([python, str(script), "search", "--space", "quick", "--dataset", "digits", "--backend",
                             "ray", "--trials", "1", "--epochs", "1", "--early-stop", "none", "--device", "cpu",
                             "--out", "ray-test", "--quiet"],
                            capture_output=True, text=True, env=_env(), cwd=parent, timeout=420)
    err = result.stderr.strip()
    assert result.returncode == 3, (result.stdout + result.stderr)[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in result.stdout + result.stderr, err
    assert err.startswith("repnas: error: Ray workers could not import repnas (ModuleNotFoundError: No module "
                          "named 'repnas.search.ray'"), err
    assert f"their repnas was {stray / '__init__.py'}" in err and f"({parent})" in err, err
    assert "--resume --out ray-test" in err, err
    assert not (parent / "ray-test" / "trials.parquet").exists()


def test_worker_runtime_env_puts_an_editable_install_first(tmp_path, monkeypatch):
    """Found on a path entry (site-packages, PYTHONPATH): Ray's default environment. Found only by a
    meta-path finder: the package's folder first on the workers' PYTHONPATH, the node's own after it
    where it may have one (never an empty entry: Python reads that as the working directory)."""
    from ray._private.utils import update_envs

    from repnas.search.ray import _imports

    root = _imports.package_root()
    assert root == PACKAGE.parent
    shadow = tmp_path / "repnas"  # a checkout named repnas: a namespace package for the path search
    (shadow / "runs").mkdir(parents=True)
    assert _imports.found_on_path(root, [str(root)])
    assert not _imports.found_on_path(root, [str(tmp_path)])
    assert not _imports.found_on_path(root, [str(tmp_path / "elsewhere")])
    assert _imports.found_on_path(root, [str(tmp_path), str(root)])  # a regular package beats the namespace

    monkeypatch.setattr(_imports, "found_on_path", lambda root, path=None: True)
    assert _imports.worker_runtime_env(None) is None and _imports.worker_runtime_env("auto") is None
    monkeypatch.setattr(_imports, "found_on_path", lambda root, path=None: False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert _imports.worker_runtime_env(None) == {"env_vars": {"PYTHONPATH": str(root)}}
    joined = _imports.worker_runtime_env("10.0.0.1:6379")["env_vars"]["PYTHONPATH"]
    assert joined == f"{root}{os.pathsep}${{PYTHONPATH}}"
    monkeypatch.setenv("PYTHONPATH", "/node/lib")  # what a node's worker sees (Ray's update_envs)
    update_envs({"PYTHONPATH": joined})
    assert os.environ["PYTHONPATH"] == f"{root}{os.pathsep}/node/lib"
    monkeypatch.setenv("PYTHONPATH", "/driver/lib")
    assert _imports.worker_runtime_env(None)["env_vars"]["PYTHONPATH"] == f"{root}{os.pathsep}${{PYTHONPATH}}"


def test_the_import_check_runs_only_where_a_worker_may_import_differently(tmp_path, monkeypatch):
    """The check (a worker's start and the trials' imports, ~4.5 s) runs on a cluster joined, or where
    a folder first on the workers' path holds something named like a module this process imported;
    on a local cluster started from any other folder it is skipped without a Ray call."""
    import ray

    from repnas.search.ray import _imports

    (tmp_path / "repnas" / "runs").mkdir(parents=True)  # a checkout named repnas: not this process's
    (tmp_path / "json.py").write_text("")  # a module file named like one imported here
    (tmp_path / "runs").mkdir()
    (tmp_path / "notes.py").write_text("")  # named like nothing imported here
    assert sorted(_imports.shadowing_modules([str(tmp_path)])) == ["json", "repnas"]
    assert "repnas" not in _imports.shadowing_modules([str(_imports.package_root())])  # this repnas itself
    assert _imports.shadowing_modules([str(tmp_path / "missing")]) == []

    class Probed(Exception):
        pass

    def probe(*args, **kwargs):
        raise Probed

    monkeypatch.setattr(ray, "remote", probe)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    quiet = tmp_path / "elsewhere"
    quiet.mkdir()
    monkeypatch.setattr(_imports, "worker_path_folders", lambda: [str(quiet)])
    assert _imports.check_worker_imports("repnas.search.ray._trial", tmp_path / "run") is None
    with pytest.raises(Probed):
        _imports.check_worker_imports("repnas.search.ray._trial", tmp_path / "run", "10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(Probed):
        _imports.check_worker_imports("repnas.search.ray._trial", tmp_path / "run")
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(_imports, "worker_path_folders", lambda: [str(quiet), str(tmp_path)])
    with pytest.raises(Probed):
        _imports.check_worker_imports("repnas.search.ray._trial", tmp_path / "run")
