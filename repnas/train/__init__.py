"""How one candidate is trained: datasets, batched augmentation, ``RunConfig`` and the GPU-resident trainer.

``repnas.search`` explores candidates and calls :func:`train` for each; experiments and ``repnas train``
use it directly. Nothing here knows about searches, studies or run directories.
"""

from repnas.train._config import DatasetConfig, Recipe, RunConfig
from repnas.train._data import DataSplits, Split, list_datasets, load_dataset
from repnas.train._shape import absolute_dataset, dataset_shape
from repnas.train._step import EagerStep, GraphStep, make_step, mixed_precision
from repnas.train._trainer import TrainResult, channels_last, resolve_device, train

__all__ = [
    "DataSplits",
    "DatasetConfig",
    "EagerStep",
    "GraphStep",
    "Recipe",
    "RunConfig",
    "Split",
    "TrainResult",
    "absolute_dataset",
    "channels_last",
    "dataset_shape",
    "list_datasets",
    "load_dataset",
    "make_step",
    "mixed_precision",
    "resolve_device",
    "train",
]
