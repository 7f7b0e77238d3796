"""The replay trainer: a search whose trials read their epochs from a recorded table instead of training.

``repnas search --replay TABLE`` (``run_search(replay=TABLE)``) runs the real search: the sampler
asks, the budget solver builds the point's model, the deduplication claims its canonical key, the
early-stopping rule sees every epoch, the sampler is told, ``trials.parquet`` and the report are
written. Only :func:`repnas.train.train` is replaced, by :class:`ReplayTrainer`, which hands the
trial runner the table's epochs one by one (validation accuracy and loss, params, FLOPs) through
the same callback, so a rule that stops the trial stops the replay there.

* The space, the dataset (with its options), the recipe, the epochs and the budget come from the
  table (:func:`replay_options`); a trial's run config is the table row's own (``repnas train``
  reproduces it).
* Which seed's curve: the table's seed ``seeds[search_seed % len(seeds)]``, the same for every trial
  of a search. So searches with seeds 0 and 1 over a two-seed table replay different training
  noise, and a search's duplicate proposals reuse the same curve, as training again would.
* Time is virtual: a per-process clock starts at the search's real start and advances by each
  replayed epoch's recorded train seconds, nothing sleeps. ``started``/``finished`` and
  ``train_seconds`` in ``trials.parquet`` are that clock's and the table's numbers. ``speed``
  (``--replay-speed X``) sleeps the recorded seconds / X as well, for orchestration tests. (With
  several ``--workers`` each process keeps its own clock; a simulator that orders asynchronous
  workers by virtual time is Syne Tune's, not this.)
* A trial stopped early has no test accuracy (the table records it after the last epoch only).
* A point whose model is not in the table stops the search with one line naming its key
  (:class:`ReplayMiss`, exit 2): a table of N sampled models cannot answer every proposal.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repnas.errors import UserError
from repnas.search._table import TableInfo, read_table, read_table_info, table_key


class ReplayMiss(UserError):
    """A proposed model is not in the table: the search cannot go on (not a candidate's failure)."""


@dataclass
class VirtualClock:
    """Seconds since the epoch, advanced by recorded train seconds (``speed``: also sleep s / speed)."""

    start: float = field(default_factory=time.time)
    elapsed: float = 0.0
    speed: float = 0.0

    def now(self) -> float:
        return self.start + self.elapsed

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds
        if self.speed > 0:
            time.sleep(seconds / self.speed)


class ReplayTable:
    """A table indexed by (table key, seed), with the clock of this process's replayed trials."""

    def __init__(self, path: str | Path, speed: float = 0.0):
        self.path = Path(path)
        self.info, frame = read_table(self.path)
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        for row in frame.to_dict("records"):
            self.rows[(str(row["model_key"]), int(row["seed"]))] = row
        self.models = len({key for key, _ in self.rows})
        self.clock = VirtualClock(speed=float(speed or 0.0))

    def seed_for(self, search_seed: int) -> int:
        """The table seed whose curves a search with ``search_seed`` replays (module doc)."""
        return int(self.info.seeds[int(search_seed) % len(self.info.seeds)])

    def key_of(self, model_config: dict[str, Any]) -> str:
        return table_key(model_config, self.info.dataset, self.info.recipe)

    def row(self, model_config: dict[str, Any], seed: int, point: dict[str, Any] | None = None) -> dict[str, Any]:
        """The recorded run of a model and seed; :class:`ReplayMiss` naming its key where there is none."""
        key = self.key_of(model_config)
        found = self.rows.get((key, int(seed)))
        if found is None:
            where = f" (point {point})" if point is not None else ""
            raise ReplayMiss(f"model {key}{where} is not in table {self.path} ({self.models} models, seed "
                             f"{seed}); replay a table built with every model of the space (--models all)")
        return found

    def run_config(self, model_config: dict[str, Any], seed: int, point: dict[str, Any] | None = None) -> dict:
        """The run config that trained the recorded run (the trial's ``config.yaml``)."""
        return json.loads(self.row(model_config, seed, point)["config"])

    def train(self, config, out_dir=None, callback=None, progress: bool = False, *, data=None,
              resume: bool = False, **_: Any):
        """:func:`repnas.train.train`'s stand-in: the recorded epochs, told to ``callback`` one by one."""
        from repnas.train import RunConfig, TrainResult

        cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))
        row = self.row(cfg.model, cfg.seed)
        if out_dir is not None:  # what the trainer leaves in a trial folder: the config (no weights)
            from repnas._io import atomic_write_text

            Path(out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out_dir) / "config.yaml", cfg.to_yaml())
        history: list[dict[str, Any]] = []
        stopped, seconds = False, 0.0
        costs = {"params": int(row["params"]), "flops": int(row["flops"])}
        for epoch, (accuracy, loss, spent) in enumerate(zip(row["val_accuracy_curve"], row["val_loss_curve"],
                                                            row["train_seconds_curve"], strict=True), start=1):
            self.clock.advance(float(spent))
            seconds += float(spent)
            metrics = {"epoch": epoch, "val_loss": float(loss), "val_accuracy": float(accuracy),
                       "train_seconds": seconds, **costs}
            history.append(metrics)
            if callback is not None and callback(epoch, dict(metrics)):
                stopped = True
                break
        last = history[-1]
        metrics = {
            "val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"],
            "test_accuracy": math.nan if stopped else float(row["test_accuracy"]),
            "params": int(row["params"]), "physical_params": int(row["physical_params"]), "flops": int(row["flops"]),
            "train_seconds": seconds, "epochs": len(history), "stopped_early": stopped, "seed": cfg.seed,
            "replayed": True,
        }
        return TrainResult(metrics=metrics, history=history)


#: (path, speed) -> the table this process replays (each worker process reads it once)
_OPEN: dict[tuple[str, float], ReplayTable] = {}


def replay_of(search) -> ReplayTable | None:
    """The table ``search`` replays (``search.replay``), opened once per process; None if it trains."""
    if not search.replay:
        return None
    key = (str(search.replay["table"]), float(search.replay.get("speed") or 0.0))
    if key not in _OPEN:
        _OPEN.clear()
        _OPEN[key] = ReplayTable(*key)
    return _OPEN[key]


def replay_options(table: str | Path, speed: float | None = None) -> tuple[TableInfo, dict[str, Any]]:
    """``(info, SearchConfig.replay)`` of a table to replay: its path (absolute), speed, fingerprint."""
    if speed is not None and not speed > 0:
        raise UserError(f"--replay-speed must be > 0 (recorded seconds / speed are slept), got {speed}")
    path = Path(table).expanduser().resolve()
    info = read_table_info(path)
    return info, {"table": str(path), "speed": float(speed or 0.0), "fingerprint": info.fingerprint}


def check_replay(search) -> None:
    """A replayed search's table is still the one it started with (a resume over a rebuilt table is refused)."""
    info = read_table_info(search.replay["table"])
    if info.fingerprint != search.replay.get("fingerprint"):
        raise UserError(f"table {search.replay['table']} has fingerprint {info.fingerprint}, the search replayed "
                        f"{search.replay.get('fingerprint')}; it was rebuilt or replaced")
