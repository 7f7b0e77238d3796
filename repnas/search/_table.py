"""A recorded table of trained candidates: its format, its fingerprint, its model keys, reading it.

NAS research compares search strategies on tables of models trained once with their learning curves
recorded (NAS-Bench-201, JAHS-Bench-201, Syne Tune's blackbox repository): a strategy is then
replayed in seconds over many seeds against a front that is known. :mod:`~repnas.search._table_build`
writes such a table for a repnas space; :mod:`~repnas.search._replay` runs the real search over it.

One parquet file, one row per (model, seed) (``TABLE_COLUMNS``): the canonical ``model_key``, the
knob values of the first point that built it, its budget, params / physical params / FLOPs, final
validation and test accuracy, and per epoch (list columns) validation accuracy, validation loss and
train seconds (of that epoch alone), plus the run config (JSON) that ``repnas train`` reproduces it
with. The parquet's key-value metadata ``repnas.table`` holds what the rows were trained on (space,
dataset options, recipe, budget, seeds) and its ``fingerprint``, a hash of all that plus a hash of
the loaded images of every seed: two tables (or a table and its resumed build) with the same
fingerprint were trained on the same data with the same recipe.

The table's ``model_key`` is :func:`~repnas.search._canonical.model_key` of the run config without
its seed: the search's deduplication key (the same canonical model, dataset options and recipe),
made comparable across the table's seeds. A search's own trials always share one seed, so two of
its points build the same model exactly when their table keys are equal.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repnas.errors import UserError

#: the key of the parquet key-value metadata holding :class:`TableInfo`
METADATA_KEY = b"repnas.table"
TABLE_VERSION = 1
#: one row per (model, seed); ``*_curve`` columns hold one value per epoch
TABLE_COLUMNS: dict[str, str] = {
    "model_key": "string",
    "seed": "int64",
    "point": "string",  # JSON of the knob values (and budget) of the first point that built the model
    "budget": "int64",
    "params": "int64",
    "physical_params": "int64",
    "flops": "int64",
    "epochs": "int64",
    "val_accuracy": "float64",
    "val_loss": "float64",
    "test_accuracy": "float64",
    "train_seconds": "float64",  # all epochs together
    "val_accuracy_curve": "object",
    "val_loss_curve": "object",
    "train_seconds_curve": "object",  # per epoch, not cumulative
    "config": "string",  # the RunConfig (JSON) that trained the row
}


@dataclass
class TableInfo:
    """What a table was trained on; kept in the parquet's metadata (``METADATA_KEY``)."""

    space: dict[str, Any]
    space_name: str
    dataset: dict[str, Any]  # DatasetConfig keys (name, val_fraction, image_size, train_subset, val_subset)
    recipe: dict[str, Any]  # the trainer's recipe, epochs included
    budget: int | str
    seeds: list[int]
    data: dict[str, str] = field(default_factory=dict)  # seed -> sha256 of the loaded splits
    models: int | None = None  # N sampled distinct models, or None: every distinct model of the space
    sample_seed: int = 0
    version: int = TABLE_VERSION

    @property
    def epochs(self) -> int:
        return int(self.recipe["epochs"])

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides the rows' numbers (not the device or the speed)."""
        keys = ("space", "dataset", "recipe", "budget", "seeds", "data", "models", "sample_seed", "version")
        text = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return json.dumps({**data, "fingerprint": self.fingerprint}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "table") -> TableInfo:
        try:
            data = json.loads(text)
            data.pop("fingerprint", None)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where}: unreadable repnas.table metadata ({exc})") from None


def table_key(model_config: dict[str, Any], dataset: dict[str, Any], recipe: dict[str, Any]) -> str:
    """The table's key of a model (see the module doc): the search's canonical key without a seed."""
    from repnas.search._canonical import model_key

    return model_key({"version": 1, "model": model_config, "dataset": dict(dataset), "recipe": dict(recipe)})


def data_digest(data) -> str:
    """sha256 of a :class:`~repnas.train.DataSplits`' images and labels (train, val, test)."""
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for tensor in (split.x, split.y):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def read_table_info(path: str | Path) -> TableInfo:
    """The :class:`TableInfo` of a table file from its footer alone (no row is read), checked as
    :func:`read_table` checks it: what a replayed search's start-up needs (its options, its
    fingerprint), so only the worker that replays the rows reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _existing(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a parquet table ({str(exc).splitlines()[0]})") from None
    return _checked_info(path, schema)


def read_table(path: str | Path):
    """``(TableInfo, DataFrame)`` of a table file; one ``UserError`` line for anything else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _existing(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a parquet table ({str(exc).splitlines()[0]})") from None
    info = _checked_info(path, table.schema)
    return info, table.to_pandas()


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such table: {path}")
    return path


def _checked_info(path: Path, schema) -> TableInfo:
    """The table's metadata, version and columns (an Arrow schema's), or one ``UserError`` line."""
    metadata = schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise UserError(f"{path}: not a repnas table (no {METADATA_KEY.decode()} metadata; "
                        "`repnas table build` writes one)")
    info = TableInfo.from_json(metadata[METADATA_KEY], str(path))
    if info.version != TABLE_VERSION:
        raise UserError(f"{path}: table version {info.version}; this repnas reads version {TABLE_VERSION}")
    missing = [c for c in TABLE_COLUMNS if c not in schema.names]
    if missing:
        raise UserError(f"{path}: table lacks columns {missing}")
    return info
