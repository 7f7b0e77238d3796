"""A dataset's shape (classes, channels, image size) without loading the dataset.

The budget solver sizes candidates from a dataset's shape before any image is loaded: a new search
checks its budget against the smallest candidate, every trial solves its widths, ``repnas export``
and ``repnas describe`` build models. A named dataset's shape is static
(:func:`repnas.spaces.dataset_info`); an ``imagefolder:PATH`` one is read here from the files, by
the loader's own rules (``_data``: which names are images, the ``[prefix/]{train,test}/<class>/``
layout, the first image in natural order deciding grayscale or RGB), so it is the shape
:func:`~repnas.train.load_dataset` gives, or the load refuses the data (mixed sizes, an image that
does not decode) before a search writes anything. This lives in ``train``, which owns the data
formats, and hands ``spaces`` a :class:`~repnas.spaces.DatasetInfo`: ``spaces`` never reads files.

Cost: the class names need every member name, but only ONE image is opened (PIL reads its mode and
size from the header). A folder is listed (names and a stat each); an archive's member list is the
whole gzip stream, since a tar has no index and its order is arbitrary. Where the loader has
already decoded the source (its ``.npz`` cache), the classes and the shape come from that file's
headers instead. Measured on ``cifar10.tar.gz`` (19 MB, 60,000 JPEGs), 2 CPU cores: listed in 1.8 s
(load average 1.3; 5.7-12 s at load 6-11, where the full decode took 52 s), 0.001 s from the cache;
answers are kept per process. ``tarfile`` builds a ``TarInfo`` per member (raw gunzip of the same
archive is 0.16 s); a hand-written header parser was not worth owning for it.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from pathlib import Path

from repnas.errors import UserError
from repnas.spaces import DatasetInfo, dataset_info
from repnas.train._data import (
    archive_images,
    cached_shape,
    folder_images,
    imagefolder_cache_keys,
    imagefolder_cache_name,
    imagefolder_classes,
    imagefolder_path,
    imagefolder_source,
    open_archive,
    pil_channels,
)

_PREFIX = "imagefolder:"


def absolute_dataset(name: str) -> str:
    """``imagefolder:PATH`` with an absolute ``PATH`` (other names as given): what ``search.yaml``
    and the trials' run configs record, so ``--resume``, ``export`` and ``repnas train CONFIG``
    read the same images from any working directory (the data does not move with a run folder)."""
    if not name.lower().startswith(_PREFIX):
        return name
    return f"{name[:len(_PREFIX)]}{os.path.abspath(imagefolder_path(name))}"


def dataset_shape(name: str, data_dir: str | os.PathLike | None = None,
                  image_size: int | None = None) -> DatasetInfo:
    """The :class:`~repnas.spaces.DatasetInfo` models are built for: classes, channels and the
    side of the (square) images, ``image_size`` where images are resized to it on load.

    ``data_dir`` does not change a shape (named datasets have fixed ones); it is taken so callers
    pass a dataset config whole. Images that are not square need ``image_size``: a candidate's
    shape is one side.
    """
    del data_dir
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise UserError(f"--image-size must be an integer >= 1, got {image_size!r}")
    if not isinstance(name, str) or not name.lower().startswith(_PREFIX):
        info = dataset_info(name)
        return info if image_size is None else dataclasses.replace(info, image_size=image_size)
    path = imagefolder_path(name)
    source, cache_name = imagefolder_source(path), imagefolder_cache_name(path)
    stat = path.stat()
    found = _resized_decode(source, cache_name, image_size, stat.st_size, stat.st_mtime_ns) if image_size else None
    classes, channels, (height, width), first = found or _inspect(source, cache_name, stat.st_size,
                                                                  stat.st_mtime_ns)
    if image_size is None and height != width:
        raise UserError(f"{path}: images are {width}x{height} ({first}), not square; pass --image-size N "
                        "to resize every image to NxN")
    return DatasetInfo(num_classes=len(classes), in_channels=channels, image_size=image_size or height)


@functools.lru_cache(maxsize=16)
def _resized_decode(source: str, cache_name: str, image_size: int, size: int,
                    mtime_ns: int) -> tuple[list[str], int, tuple[int, int], str] | None:
    """:func:`_inspect`'s answer from the decode cache of images of mixed sizes, which the loader
    keeps under a key naming ``image_size``; None where there is none. Without it a ``--workers``
    process (or a Ray trial's) listed the whole archive again, though the search had decoded it."""
    cached = cached_shape(cache_name, imagefolder_cache_keys(source, image_size)[-1])
    if cached is None:
        return None
    classes, channels, shape = cached
    return classes, channels, shape, "cached decode"


@functools.lru_cache(maxsize=16)
def _inspect(source: str, cache_name: str, size: int, mtime_ns: int) -> tuple[list[str], int, tuple[int, int], str]:
    """``(classes, channels, (height, width), first image)`` of a source (``imagefolder_source``);
    ``cache_name`` is the loader's for it (:func:`~repnas.train._data.imagefolder_cache_name`: the
    path as given, which may be a link); ``size`` and ``mtime_ns`` (of the path itself) key the
    per-process memo."""
    kind, _, location = source.partition(":")
    path = Path(location)
    cached = cached_shape(cache_name, imagefolder_cache_keys(source)[0])
    if cached is not None:
        classes, channels, shape = cached
        return classes, channels, shape, "cached decode"
    if kind == "archive":
        with open_archive(path) as tar:
            members = {m.name: m for m in archive_images(tar)}
            files, classes, _ = imagefolder_classes(members, str(path))
            handle = tar.extractfile(members[files[0]])
            header = io.BytesIO(handle.read() if handle is not None else b"")
    else:
        names = [p.relative_to(path).as_posix() for p in folder_images(path)]
        files, classes, _ = imagefolder_classes(names, str(path))
        header = path / files[0]
    channels, (width, height) = _probe(header, f"{path}: cannot decode {files[0]}")
    return classes, channels, (height, width), files[0]


def _probe(image: io.BytesIO | Path, failure: str) -> tuple[int, tuple[int, int]]:
    """Channels and ``(width, height)`` from an image's header (Pillow decodes no pixels here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            return pil_channels(im.mode), im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{failure}: {exc}") from None
