"""``repnas table build``: train every distinct model of a space (or N of them) once per seed, record it.

Which models: the points of the space (every knob value, every budget level) go through the budget
solver, as a search's points do, and are told apart by :func:`~repnas.search._table.table_key`, the
search's deduplication key: a grid of up to ``GRID_LIMIT`` points is enumerated whole, a larger
one is sampled (seeded) until enough distinct models turn up. ``models=N`` keeps a seeded random N
of the distinct models. A budget range is refused: a search over it solves a new budget for every
point, so almost none of its models would be in the table.

How: each (model, seed) is one :func:`repnas.train.train` run of the table's recipe; ``workers``
processes (spawned, one data load each) run them. Every finished run is appended as one JSON line
to the journal ``<out>.journal`` (its first line, written atomically, holds the table's metadata
and the list of models); a build that is killed goes on from the journal with the same command and
trains only the runs it lacks (a torn last line is one run trained again). The table itself, one
parquet file with the metadata inside, is written atomically at the end and the journal removed.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repnas import _faults
from repnas.errors import UserError
from repnas.search._table import METADATA_KEY, TABLE_COLUMNS, TableInfo, data_digest, read_table_info, table_key

#: a space with at most this many points (knob values x budget levels) is enumerated whole
GRID_LIMIT = 20_000
#: sampling a larger space stops after this many points per wanted model (it may have fewer)
_TRIES_PER_MODEL = 50


@dataclass
class BuildResult:
    """What :func:`build_table` did: the table's path, runs trained now and taken from the journal."""

    path: Path
    info: TableInfo
    trained: int
    from_journal: int
    seconds: float


# --------------------------------------------------------------------------- which models
def table_models(space, budget_spec, dataset: dict[str, Any], recipe: dict[str, Any], models: int | None,
                 sample_seed: int = 0) -> list[dict[str, Any]]:
    """The distinct models of ``space`` (``[{key, point, budget, model}]``, in a stable order),
    solved for the dataset's shape with its ``image_size``, as a search replaying the table solves
    them (``SearchConfig.dataset_shape``): a model space traces its model at that size."""
    from repnas.spaces import BUDGET_PARAM, InfeasibleError
    from repnas.train import dataset_shape

    shape = dataset_shape(dataset["name"], None, dataset.get("image_size"))
    budgets = list(budget_spec.levels) if budget_spec.levels else [budget_spec.low]
    grids = {name: knob.grid() for name, knob in space.knobs.items()}
    size = math.prod(len(g) for g in grids.values() if g is not None) * len(budgets)
    found: dict[str, dict[str, Any]] = {}

    def add(point: dict[str, Any], budget: int) -> None:
        try:
            solution = space.solve(point, budget, shape)
        except InfeasibleError:
            return
        key = table_key(solution.model_config, dataset, recipe)
        if key not in found:
            full = {**point, BUDGET_PARAM: budget} if budget_spec.searched else dict(point)
            found[key] = {"key": key, "point": full, "budget": int(budget), "model": solution.model_config}

    if all(g is not None for g in grids.values()) and size <= GRID_LIMIT:
        for budget in budgets:
            for values in itertools.product(*grids.values()):
                add(dict(zip(grids, values, strict=True)), budget)
        distinct = list(found.values())
        if models is not None and models < len(distinct):
            distinct = random.Random(sample_seed).sample(distinct, models)
        return distinct
    if models is None:
        raise UserError(f"space {space.name!r} has {size:g} points (more than {GRID_LIMIT:,}): give --models N "
                        "to sample N distinct models of it")
    rng = random.Random(sample_seed)
    for _ in range(models * _TRIES_PER_MODEL):
        if len(found) >= models:
            break
        add(space.sample(rng), rng.choice(budgets))
    return list(found.values())


# --------------------------------------------------------------------------- the journal
def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def _read_journal(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, rows) of a journal; lines that do not parse (a torn last write) are left out."""
    if not path.is_file():
        return None, []
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or "info" not in header:
        raise UserError(f"{path}: not a table build journal; remove it to start the build again")
    rows = []
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "model_key" in row:
            rows.append(row)
    return header, rows


def _start_journal(path: Path, info: TableInfo, models: list[dict[str, Any]]) -> None:
    from repnas._io import atomic_write_text

    atomic_write_text(path, json.dumps({"info": json.loads(info.to_json()), "models": models}) + "\n")


def _append(path: Path, row: dict[str, Any]) -> None:
    """One row as one ``write`` of one line (O_APPEND), flushed to disk before the next run."""
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- one run
def run_config(model: dict[str, Any], info: TableInfo, seed: int, device: str, data_dir: str | None,
               threads: int | None) -> dict[str, Any]:
    """The RunConfig (dict) of one (model, seed) of the table: what ``repnas train`` reproduces it with."""
    return {"version": 1, "model": model["model"], "dataset": {**info.dataset, "data_dir": data_dir},
            "recipe": dict(info.recipe), "seed": int(seed), "device": device, "threads": threads}


def train_row(model: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Train one (model, seed) with the repnas trainer; its table row (``TABLE_COLUMNS``)."""
    from repnas.train import train

    result = train(config, progress=False)
    history = result.history
    cumulative = [float(h["train_seconds"]) for h in history]
    per_epoch = [b - a for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True)]
    return {
        "model_key": model["key"], "seed": int(config["seed"]), "point": json.dumps(model["point"], sort_keys=True),
        "budget": int(model["budget"]), "params": int(result["params"]),
        "physical_params": int(result["physical_params"]), "flops": int(result["flops"]),
        "epochs": len(history), "val_accuracy": float(result["val_accuracy"]),
        "val_loss": float(result["val_loss"]), "test_accuracy": float(result["test_accuracy"]),
        "train_seconds": float(result["train_seconds"]),
        "val_accuracy_curve": [float(h["val_accuracy"]) for h in history],
        "val_loss_curve": [float(h["val_loss"]) for h in history],
        "train_seconds_curve": per_epoch,
        "config": json.dumps(config, sort_keys=True),
    }


def _worker_init(parent: int) -> None:
    """A pool worker's start (its torch threads are each run config's ``threads``: the trainer sets them)."""
    from repnas._procs import die_with_parent

    die_with_parent(parent)  # a killed build leaves no worker training on


def _worker_job(job: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return train_row(*job)


# --------------------------------------------------------------------------- the build
def build_table(space: Any, out: str | Path, *, dataset: str | None = None, data_dir: str | None = None,
                image_size: int | None = None, train_subset: int | None = None, val_subset: int | None = None,
                val_fraction: float = 0.1, budget: int | str | None = None, epochs: int | None = None,
                recipe: dict[str, Any] | None = None, seeds: Iterable[int] = (0, 1), models: int | None = None,
                sample_seed: int = 0, workers: int = 1, device: str = "cpu", threads: int | None = None,
                progress: bool = True) -> BuildResult:
    """Train the distinct models of ``space`` (every one, or a seeded ``models``) for each seed and
    write the table ``out`` (parquet); resumes from ``<out>.journal`` (module doc).

    ``dataset``, ``budget``, ``epochs`` default to the space's; ``recipe`` overrides the space's
    recipe. ``image_size``, ``train_subset``, ``val_subset``: the dataset options of
    :class:`~repnas.train.DatasetConfig`. ``threads``: torch threads per CPU worker (default 1: the
    models are small, a step is per-operation overhead). ``device`` is any the trainer takes
    (``cuda`` for a GPU): it is recorded in each row's config, not in the fingerprint.
    """
    from repnas.search._api import _space_of
    from repnas.spaces import dataset_info, parse_budget
    from repnas.train import RunConfig, load_dataset, resolve_device

    started = time.time()
    out = Path(out)
    space = _space_of(space)
    seeds = [int(s) for s in seeds]
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must be distinct seeds, got {seeds}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if models is not None and models < 1:
        raise UserError(f"--models must be >= 1 (or all), got {models}")
    budget_spec = parse_budget(budget if budget is not None else space.budget, "--budget")
    if budget_spec.searched and not budget_spec.levels:
        raise UserError(f"budget {budget_spec.describe()} is a range: a table needs models a search can propose "
                        "again, so give one budget or levels (e.g. 4k,8k,12k)")
    name = dataset or space.dataset
    dataset_info(name)  # unknown name -> UserError
    full_recipe = {**space.recipe, **(recipe or {}), "epochs": int(epochs or space.epochs)}
    dataset_options = {"name": name, "val_fraction": float(val_fraction), "image_size": image_size,
                       "train_subset": train_subset, "val_subset": val_subset}
    # the trainer's own checks of the recipe and dataset options, before anything is loaded or written
    RunConfig.from_dict({"model": {"family": "vgg4"}, "dataset": dataset_options, "recipe": full_recipe,
                         "device": device})
    resolve_device(device)  # --device cuda without CUDA: one line now, not a failed run each
    dataset_options = {k: v for k, v in dataset_options.items() if v is not None}
    if threads is None and device == "cpu":
        threads = 1
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} is not a file")
    digests = {}
    for seed in seeds:  # the data each seed trains on, as the trainer will load it
        data = load_dataset(name, data_dir, val_fraction, seed, image_size, train_subset=train_subset,
                            val_subset=val_subset)
        digests[str(seed)] = data_digest(data)
    info = TableInfo(space=space.to_dict(), space_name=space.name, dataset=dataset_options, recipe=full_recipe,
                     budget=budget_spec.to_value(), seeds=seeds, data=digests, models=models,
                     sample_seed=int(sample_seed))
    if out.exists():
        done = read_table_info(out)
        if done.fingerprint != info.fingerprint:
            raise UserError(f"{out} exists and holds another table (fingerprint {done.fingerprint}, this build's "
                            f"{info.fingerprint}); choose another --out")
        journal_path(out).unlink(missing_ok=True)  # killed between writing the table and removing it
        if progress:
            print(f"{out} is complete (fingerprint {info.fingerprint})", flush=True)
        return BuildResult(out, info, 0, 0, time.time() - started)

    journal = journal_path(out)
    header, rows = _read_journal(journal)
    if header is not None:
        saved = TableInfo.from_json(json.dumps(header["info"]), str(journal))
        if saved.fingerprint != info.fingerprint:
            raise UserError(f"{journal} belongs to another build (fingerprint {saved.fingerprint}, this build's "
                            f"{info.fingerprint}); run that build's command, or remove the journal")
        chosen = header["models"]
    else:
        chosen = table_models(space, budget_spec, dataset_options, full_recipe, models, sample_seed)
        if not chosen:
            raise UserError(f"no point of space {space.name!r} fits budget {budget_spec.describe()}")
        out.parent.mkdir(parents=True, exist_ok=True)
        _start_journal(journal, info, chosen)
    done_runs = {(r["model_key"], int(r["seed"])) for r in rows}
    jobs = [(m, run_config(m, info, seed, device, data_dir, threads))
            for m in chosen for seed in seeds if (m["key"], seed) not in done_runs]
    if progress:
        print(f"table {out}: space {space.name}, {len(chosen)} distinct models x {len(seeds)} seeds, "
              f"{info.epochs} epochs on {name}; {len(done_runs)} runs in the journal, {len(jobs)} to train "
              f"({workers} worker(s) on {device})", flush=True)
    trained = 0
    from tqdm.auto import tqdm

    with tqdm(total=len(chosen) * len(seeds), initial=len(done_runs), disable=not progress, unit="run",
              desc="table", dynamic_ncols=True) as bar:
        for row in _run_jobs(jobs, workers):
            _append(journal, row)
            _faults.point("table:row")  # the fault tests kill the build here, between two runs
            rows.append(row)
            trained += 1
            bar.update(1)
    _write_table(out, info, rows, chosen, seeds)
    journal.unlink()
    result = BuildResult(out, info, trained, len(done_runs), time.time() - started)
    if progress:
        print(f"wrote {out}: {len(chosen)} models x {len(seeds)} seeds, trained {trained} runs in "
              f"{result.seconds:.1f}s (fingerprint {info.fingerprint})", flush=True)
    return result


def _run_jobs(jobs: list, workers: int) -> Iterator[dict[str, Any]]:
    """Rows of ``jobs`` as they finish: in this process for one worker, else in spawned workers."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(_worker_job, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        yield from pool.imap_unordered(_worker_job, jobs)


def _write_table(out: Path, info: TableInfo, rows: list[dict[str, Any]], chosen: list[dict[str, Any]],
                 seeds: list[int]) -> None:
    """The parquet (rows in the models' order, then by seed; the metadata inside), atomically."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from repnas._io import atomic_path

    latest = {(r["model_key"], int(r["seed"])): r for r in rows}  # a run trained twice: its last row
    order = [latest[(m["key"], s)] for m in chosen for s in seeds]
    frame = pd.DataFrame(order, columns=list(TABLE_COLUMNS))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: info.to_json().encode()})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
