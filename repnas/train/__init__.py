"""How one candidate is trained: datasets, batched augmentation, ``RunConfig`` and the GPU-resident trainer.

``repnas.search`` explores candidates and calls :func:`train` for each; experiments and ``repnas train``
use it directly. Nothing here knows about searches, studies or run directories.
"""

from repnas.train._config import DatasetConfig, Recipe, RunConfig
from repnas.train._data import DataSplits, Split, list_datasets, load_dataset
from repnas.train._shape import absolute_dataset, dataset_shape
from repnas.train._trainer import TrainResult, resolve_device, train

__all__ = [
    "DataSplits",
    "DatasetConfig",
    "Recipe",
    "RunConfig",
    "Split",
    "TrainResult",
    "absolute_dataset",
    "dataset_shape",
    "list_datasets",
    "load_dataset",
    "resolve_device",
    "train",
]
