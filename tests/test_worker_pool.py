"""WorkerPool (repnas/search/_pool.py): which ended workers are replaced, and how many, without a
search; and ``--max-failures``, the cap, in search.yaml."""

from __future__ import annotations

import multiprocessing
import os
import signal

import yaml

from repnas.cli import main
from repnas.runs import SearchConfig
from repnas.search._pool import WorkerPool

_FORK = multiprocessing.get_context("fork")


def _exit(code: int) -> None:
    os._exit(code)


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pool(lives: dict[int, list], max_failures: int):
    """A pool whose worker k's process of life n runs ``lives[k][n]`` (the last one for later lives)."""
    started, recovered = [], []

    def start(k: int, life: int):
        started.append((k, life))
        target, *args = lives[k][min(life, len(lives[k]) - 1)]
        p = _FORK.Process(target=target, args=tuple(args))
        p.start()
        return p

    def recover(k: int, process) -> str:
        recovered.append((k, process.exitcode))
        return f"worker {k} replaced"

    return WorkerPool(start, recover, max_failures), started, recovered


def test_a_worker_killed_by_a_signal_is_replaced_once_and_the_others_are_left_alone():
    pool, started, recovered = _pool({1: [(_killed,), (_exit, 0)], 2: [(_exit, 0)]}, max_failures=3)
    pool.start([1, 2])
    pool.join()
    assert sorted(started) == [(1, 0), (1, 1), (2, 0)]
    assert recovered == [(1, -signal.SIGKILL)]
    assert pool.replaced == ["worker 1 replaced"] and pool.dead == []


def test_replacements_stop_at_max_failures_in_all_and_the_last_death_ends_the_search():
    pool, started, recovered = _pool({1: [(_killed,)], 2: [(_killed,)]}, max_failures=3)
    pool.start([1, 2])
    pool.join()
    assert len(pool.replaced) == 3 and len(recovered) == 3  # in all, across workers
    assert len(started) == 5 and len(pool.dead) == 2  # every process but the replaced ones
    assert all(p.exitcode == -signal.SIGKILL for _, p in pool.dead)


def test_a_worker_that_exits_with_an_error_is_not_replaced():
    pool, started, recovered = _pool({1: [(_exit, 3)], 2: [(_exit, 1)]}, max_failures=3)
    pool.start([1, 2])
    pool.join()
    assert started == [(1, 0), (2, 0)] and recovered == [] and pool.replaced == []
    assert sorted((k, p.exitcode) for k, p in pool.dead) == [(1, 3), (2, 1)]


def test_max_failures_zero_replaces_nothing():
    pool, started, recovered = _pool({1: [(_killed,), (_exit, 0)]}, max_failures=0)
    pool.start([1])
    pool.join()
    assert started == [(1, 0)] and recovered == [] and [k for k, _ in pool.dead] == [1]


# --------------------------------------------------------------------------------- --max-failures
def test_max_failures_is_kept_in_search_yaml_and_a_resume_may_change_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--space", "quick", "--trials", "1", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--max-failures", "5", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "search.yaml").read_text())
    assert saved["max_failures"] == 5 and "max_failures" not in saved["ray"]
    assert main(["search", "--resume", "--out", str(out), "--quiet", "--max-failures", "1"]) == 0
    assert SearchConfig.from_yaml(out / "search.yaml").max_failures == 1
    assert main(["search", "--resume", "--out", str(out), "--quiet", "--max-failures", "-2"]) == 2
    assert capsys.readouterr().err.startswith("repnas: error: --max-failures must be >= 0, got -2")
    assert SearchConfig.from_yaml(out / "search.yaml").max_failures == 1  # the refused resume changed nothing


def test_a_ray_runs_max_failures_from_before_moves_to_the_top_level():
    old = SearchConfig.from_dict({"space": {}, "budget": 1000, "backend": "ray",
                                  "ray": {"storage": "/x", "max_failures": 7}})
    assert old.max_failures == 7 and old.ray == {"storage": "/x"}
    assert SearchConfig.from_dict({"space": {}, "budget": 1000}).max_failures == 3  # the documented default
