"""The driver's side of a Ray search: trial numbers, ``trials/<n>/`` and rows, from Tune's results.

Only the driver writes the run directory. It numbers the trials of each Tune experiment in the
order Tune created them (Tune's trial ids end in a creation counter, ``<exp>_00003``), which is the
order ``OptunaSearch`` asked its study, and keeps the mapping in ``ray_trials.json`` so a restored
experiment keeps its numbers. Each trial's last checkpoint (``result.checkpoint``, wherever Tune's
storage is: a local path, NFS, ``s3://``) becomes ``trials/<n>/`` on the driver, and its last
report becomes its row of ``trials.parquet``; a duplicate's ``duplicate_of`` (the Tune trial id of
the trial whose model it reused) becomes that trial's number.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from repnas._io import atomic_write_text
from repnas.runs._rundir import TRIAL_COLUMNS, RunDir


def tune_storage(search, run: RunDir) -> str:
    """Where Tune keeps experiment state and trial checkpoints: ``--ray-storage`` (a path every node
    reaches, or a pyarrow URI such as ``s3://``), else ``<run>/ray`` (one node)."""
    return search.ray.get("storage") or str((run.root / "ray").resolve())


def trial_dirname(trial) -> str:
    """Tune's folder name for a trial: its id, so a result without metrics still names its trial."""
    return f"trial_{trial.trial_id}"


def result_trial_id(result) -> str:
    """The Tune trial id of a ``ray.tune.Result`` (from its metrics, else from its folder's name)."""
    metrics = result.metrics or {}
    if metrics.get("trial_id"):
        return str(metrics["trial_id"])
    return str(result.path).rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")


def _creation_key(trial_id: str) -> tuple[int, str]:
    head, _, counter = trial_id.rpartition("_")
    return (int(counter), head) if counter.isdigit() else (1 << 62, trial_id)


def number_trials(run: RunDir, trial_ids: list[str], given: dict[str, int] | None = None) -> dict[str, int]:
    """``{Tune trial id: trial number}``: numbers already given are kept; a new id takes the number
    the searcher gave it (``given``, read from the study by :func:`searcher_numbers`: the order in
    which ``OptunaSearch`` asked the study), else the next free number in Tune's creation order
    (ids ending in a counter, ``<exp>_00003``; Ray's short random ids have none). No ids: every
    number given so far. Written to ``ray_trials.json`` by the driver alone."""
    path = run.root / "ray_trials.json"
    numbers: dict[str, int] = json.loads(path.read_text()) if path.is_file() else {}
    given = given or {}
    new = [t for t in set(trial_ids) if t not in numbers]
    for trial_id in sorted((t for t in new if t in given), key=given.__getitem__):
        numbers[trial_id] = int(given[trial_id])
    for trial_id in sorted((t for t in new if t not in given), key=_creation_key):
        numbers[trial_id] = max(numbers.values(), default=-1) + 1
    if new:
        atomic_write_text(path, json.dumps(numbers, indent=1))
    return {t: int(numbers[t]) for t in (trial_ids or numbers)}


def searcher_numbers(study) -> dict[str, int]:
    """``{Tune trial id: trial number}`` as the searcher gave them when it proposed each point
    (user attributes ``ray_trial_id`` and ``trial`` of the study's trials,
    :class:`~repnas.search.ray._searcher.ConstrainedOptunaSearch`)."""
    return {str(t.user_attrs["ray_trial_id"]): int(t.user_attrs["trial"]) for t in study.get_trials(deepcopy=False)
            if "ray_trial_id" in t.user_attrs and "trial" in t.user_attrs}


def fill_trial_dir(run: RunDir, number: int, checkpoint) -> bool:
    """Copy a trial's last Tune checkpoint into ``trials/<number>/`` (complete or not at all: into a
    temporary sibling first, then renamed over any older copy). False when it has none."""
    if checkpoint is None:
        return False
    target = run.trial_dir(number)
    tmp = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.to_directory(str(tmp))
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return True


def stopped_early(metrics: dict[str, Any] | None, failed: bool) -> bool:
    """Whether a Tune trial ended because the early-stopping scheduler stopped it: its last report
    is an epoch's, without the final row (``status``), and it did not fail. A trial that ends by
    itself always sends its final report; one that crashed has an error."""
    return bool(metrics) and not failed and "status" not in metrics and bool(metrics.get("epoch"))


def result_rows(run: RunDir, results, knobs: list[str],
                given: dict[str, int] | None = None) -> dict[int, dict[str, Any]]:
    """``trials.parquet`` rows of a Tune ``ResultGrid``, by trial number (``given``: the searcher's,
    see :func:`number_trials`), with ``trials/<n>/`` filled from each trial's last checkpoint; a
    trial that ended without its final report (it failed more often than ``--max-failures``
    allows) is a failed row with its error's last line."""
    results = list(results)
    numbers = number_trials(run, [result_trial_id(r) for r in results], given)
    known = number_trials(run, [])  # every number given so far: a duplicate may reuse an earlier experiment's trial
    rows = {}
    for result in results:
        number = numbers[result_trial_id(result)]
        fill_trial_dir(run, number, result.checkpoint)
        metrics = dict(result.metrics or {})
        if stopped_early(metrics, failed=result.error is not None):
            metrics.update(status="pruned", epochs=int(metrics["epoch"]),
                           config_json=metrics.get("config_json") or _config_json(run.trial_dir(number)))
        elif "status" not in metrics:
            lines = [ln for ln in str(result.error or "no final report").splitlines() if ln.strip()]
            metrics.update(status="failed", error=lines[-1][:300] if lines else "no final report")
        row = {k: metrics[k] for k in TRIAL_COLUMNS if k in metrics}
        if isinstance(row.get("duplicate_of"), str):  # the Tune trial id of the trial it reused
            row["duplicate_of"] = known.get(row["duplicate_of"], -1)
        row["trial"] = number
        row["config"] = metrics.get("config_json", "")  # Tune's own "config" is the point
        row.update({f"knob.{k}": v for k, v in dict(result.config or {}).items() if k in knobs})
        rows[number] = row
    return rows


def _config_json(trial_dir: Path) -> str:
    """The run config of a trial folder filled from its checkpoint (``config.yaml``), as JSON."""
    path = trial_dir / "config.yaml"
    if not path.is_file():
        return ""
    import yaml

    return json.dumps(yaml.safe_load(path.read_text()))


def experiment_paths(storage: str, study: str) -> list[str]:
    """The Tune experiments of a run in the order they ran (``<study>``, ``<study>-2``, ...), as
    paths or URIs under ``storage`` (a local folder or any pyarrow filesystem URI)."""
    import pyarrow.fs as pafs

    if "://" in storage:
        fs, root = pafs.FileSystem.from_uri(storage)
        base = storage.rstrip("/")
    else:
        fs, root, base = pafs.LocalFileSystem(), str(Path(storage).resolve()), str(Path(storage).resolve())
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        name = info.base_name
        if info.type != pafs.FileType.Directory:
            continue
        if name == study:
            found[1] = f"{base}/{name}"
        elif name.startswith(f"{study}-") and name[len(study) + 1:].isdigit():
            found[int(name[len(study) + 1:])] = f"{base}/{name}"
    return [found[k] for k in sorted(found)]


def epoch_reports(experiment: str):
    """``(trial_id, report)`` for every per-epoch report Tune stored in ``experiment`` (a path or a
    pyarrow filesystem URI): the ``result.json`` lines of each ``trial_*`` folder, in file order.
    What the early-stopping rule saw before the driver died can be learned again from them."""
    import pyarrow.fs as pafs

    if "://" in experiment:
        fs, root = pafs.FileSystem.from_uri(experiment)
    else:
        fs, root = pafs.LocalFileSystem(), str(Path(experiment).resolve())
    folders = [info for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
               if info.type == pafs.FileType.Directory and info.base_name.startswith("trial_")]
    for folder in sorted(folders, key=lambda info: info.base_name):
        try:
            with fs.open_input_stream(f"{folder.path}/result.json") as stream:
                text = stream.read().decode("utf-8", errors="replace")
        except (FileNotFoundError, OSError):
            continue  # a trial that never reported
        for line in text.splitlines():
            try:
                report = json.loads(line)
            except ValueError:  # a line cut by the crash
                continue
            if isinstance(report, dict) and "epoch" in report:
                yield str(report.get("trial_id") or folder.base_name.removeprefix("trial_")), report
