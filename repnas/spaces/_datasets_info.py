"""Static shapes of the datasets that repnas knows by name.

Only what a model needs to be built and counted (classes, channels, image size), so that
``spaces`` (and ``repnas describe``) never import the data loaders in ``repnas.train``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from repnas.errors import UserError


@dataclass(frozen=True)
class DatasetInfo:
    """The shape of one dataset: what a classifier for it must accept and emit."""

    num_classes: int
    in_channels: int
    image_size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, as ``repnas.rescale.describe`` wants it."""
        return (self.in_channels, self.image_size, self.image_size)


DATASET_INFO: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(num_classes=10, in_channels=3, image_size=32),
    "cifar100": DatasetInfo(num_classes=100, in_channels=3, image_size=32),
    "mnist": DatasetInfo(num_classes=10, in_channels=1, image_size=28),
    "fashionmnist": DatasetInfo(num_classes=10, in_channels=1, image_size=28),
    "rotmnist": DatasetInfo(num_classes=10, in_channels=1, image_size=29),
    "digits": DatasetInfo(num_classes=10, in_channels=1, image_size=8),
}


def dataset_info(name: str | DatasetInfo) -> DatasetInfo:
    """The :class:`DatasetInfo` of a named dataset (a ``DatasetInfo`` is its own); ``UserError``
    listing close names otherwise.

    Every function of this package that takes a ``dataset`` takes either: a name, or the shape
    of a user's image folder, which ``repnas.train.dataset_shape`` reads from its files (this
    package reads no files).
    """
    if isinstance(name, DatasetInfo):
        return name
    key = name.lower()
    if key in DATASET_INFO:
        return DATASET_INFO[key]
    if key.startswith("imagefolder:"):
        raise UserError(f"the shape of {name!r} is read from its files: pass "
                        "repnas.train.dataset_shape(name) instead of the name")
    close = difflib.get_close_matches(key, DATASET_INFO, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"unknown dataset {name!r}{hint}; known: {', '.join(DATASET_INFO)}")
