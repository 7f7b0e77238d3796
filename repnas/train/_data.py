"""Datasets by name, as whole uint8 tensors ready to be put on a device.

The trainer keeps a whole dataset resident on the device (airbench's trick), so a dataset here is
not a ``torch.utils.data.Dataset`` but three pairs of tensors: images ``(N, C, H, W)`` uint8 and
labels ``(N,)`` int64 for train / val / test. Sources:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (real data, no download). sklearn has no
  test split, so a fixed 20% (360 images, permutation seeded with 0 whatever the run seed) is the
  test set; the run seed only moves the train/val boundary.
- ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``: an ImageFolder archive ``<name>.tar.gz``
  (or an unpacked ``<name>/`` folder) in ``data_dir`` if one is there (the offline copies in
  ``../shared/datasets``), else a torchvision root (``torchvision.datasets.MNIST(root)`` etc.).
  torchvision downloads only when no ``data_dir`` was given (neither argument nor ``$REPNAS_DATA``)
  or ``download=True``: an explicit folder means "use what is there", so a typo fails fast.
- ``rotmnist``: MNIST rotated by angles drawn uniformly in [0, 2pi) from a fixed seed, padded to
  29x29 (an odd size has a centre pixel to rotate about, as the authors do). The classic MNIST-rot
  split: 12,000 train (from MNIST train) and 50,000 test (all 10,000 MNIST test + 40,000 further
  MNIST train images, disjoint from the 12,000).
- ``imagefolder:PATH``: a folder or ``.tar.gz`` in ImageFolder layout, ``[prefix/]{train,test}/
  <class>/<image>``; without train/test folders (``<class>/<image>`` only), a fixed 20% is the test.

Decoding archives is the slow part (60,000 JPEGs ~15 s), so decoded arrays are cached as one
``.npz`` per dataset+source in ``$REPNAS_CACHE`` (default ``~/.cache/repnas``), keyed by the
source's path, size and modification time: touching the archive invalidates the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from repnas._io import atomic_path
from repnas._sorting import natural_key
from repnas.errors import UserError

__all__ = ["DataSplits", "Split", "list_datasets", "load_dataset"]

#: bump when the decoding or the derived splits change, so stale caches are not reused.
_CACHE_VERSION = 1
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
_TEST_FRACTION = 0.2  # held-out test share where a source has no test split of its own
_SPLIT_SEED = 0  # fixed: test sets must not move with the run seed

#: name -> torchvision class name, for the datasets torchvision can provide.
_TORCHVISION = {
    "mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100",
}
_ROTMNIST_TRAIN, _ROTMNIST_TEST = 12_000, 50_000


class Split(NamedTuple):
    """One split: ``x`` uint8 ``(N, C, H, W)`` and ``y`` int64 ``(N,)`` (unpacks as ``x, y``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:  # type: ignore[override]  # len(split) = number of images
        return int(self.y.shape[0])


@dataclass
class DataSplits:
    """A dataset as resident tensors; ``mean``/``std`` are per channel, of train, in [0, 1] units."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])

    def __repr__(self) -> str:
        return (
            f"DataSplits({self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, classes={self.num_classes}, shape={tuple(self.train.x.shape[1:])})"
        )


def list_datasets() -> list[str]:
    """The dataset names :func:`load_dataset` accepts (``imagefolder:PATH`` takes a path)."""
    return ["digits", "mnist", "fashionmnist", "cifar10", "cifar100", "rotmnist", "imagefolder:PATH"]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    download: bool | None = None,
    train_subset: int | None = None,
    val_subset: int | None = None,
) -> DataSplits:
    """Load a dataset by name; a seeded ``val_fraction`` of train becomes the validation split.

    ``train_subset`` / ``val_subset`` then keep a random ``N`` of the training / validation images
    (seeded with ``seed``, in their original order; all of them where the split is smaller): a
    few thousand CIFAR-10 images keep accuracy far from saturated for tables of many small models.
    The test split is kept whole: it is evaluated once per model.

    ``image_size`` resizes every image to a square of that side (bilinear), for families whose
    pooling needs larger inputs than the data has (8x8 digits into a VGG11). ``download`` defaults to
    "only when no ``data_dir`` was given"; see the module docstring.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name must be a non-empty string, got {name!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    for what, count in (("train_subset", train_subset), ("val_subset", val_subset)):
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise UserError(f"{what} must be a positive integer, got {count!r}")
    explicit_dir = data_dir is not None or bool(os.environ.get("REPNAS_DATA"))
    root = Path(data_dir or os.environ.get("REPNAS_DATA") or _cache_dir() / "data").expanduser()
    if download is None:
        download = not explicit_dir

    key = name.lower()
    if key == "digits":
        raw = _load_digits()
    elif key in _TORCHVISION:
        raw = _load_named(key, root, download, image_size)
    elif key == "rotmnist":
        raw = _load_rotmnist(root, download)
    elif key.startswith("imagefolder:"):
        path = imagefolder_path(name)
        raw = _load_imagefolder(path, imagefolder_cache_name(path), image_size)
    else:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")

    train_x, train_y, test_x, test_y, classes, source = raw
    if image_size is not None:
        train_x, test_x = _resize(train_x, image_size), _resize(test_x, image_size)
    train, val = _carve_val(train_x, train_y, val_fraction, seed)
    train, val = _subset(train, train_subset, seed), _subset(val, val_subset, seed + 1)
    mean, std = _channel_stats(train.x)
    return DataSplits(
        name=key if not key.startswith("imagefolder:") else name,
        train=train,
        val=val,
        test=Split(test_x, test_y),
        num_classes=len(classes),
        classes=list(classes),
        mean=mean,
        std=std,
        source=source,
    )


# --------------------------------------------------------------------------------------- splits
_Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str], str]


def _carve_val(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded permutation of train: the first ``fraction`` is val (model selection), the rest train."""
    n_val = round(len(y) * fraction)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def _subset(split: Split, count: int | None, seed: int) -> Split:
    """A seeded random ``count`` images of ``split`` (kept in order); the whole split for None."""
    if count is None or count >= len(split):
        return split
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(int(seed)))[:count].sort().values
    return Split(split.x[pick].clone(), split.y[pick].clone())


def _fixed_test_split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
    n_test = round(len(y) * _TEST_FRACTION)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return x[train], y[train], x[test], y[test]


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images in [0, 1] units, in float64 chunks (no big float copy)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(8192):
        f = chunk.to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += f.sum(1)
        sq += (f * f).sum(1)
    n = x.numel() / c
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[2:]) == (size, size):
        return x
    out = [
        torch.nn.functional.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True)
        for c in x.split(4096)
    ]
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


def _as_raw(train_x, train_y, test_x, test_y, classes, source: str) -> _Raw:
    def t(a, dtype):
        return torch.as_tensor(np.ascontiguousarray(a)).to(dtype)

    return t(train_x, torch.uint8), t(train_y, torch.int64), t(test_x, torch.uint8), t(test_y, torch.int64), [
        str(c) for c in classes
    ], source


# -------------------------------------------------------------------------------------- sources
def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # values are 0..16 counts of set pixels in 4x4 blocks; scale to the usual uint8 range
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    tr_x, tr_y, te_x, te_y = _fixed_test_split(x, bunch.target.astype(np.int64))
    return _as_raw(tr_x, tr_y, te_x, te_y, [str(i) for i in range(10)], "sklearn.datasets.load_digits")


def _load_named(name: str, root: Path, download: bool, image_size: int | None = None) -> _Raw:
    """``<name>.tar.gz`` or ``<name>/`` (ImageFolder) in root, else a torchvision root."""
    archive = root / f"{name}.tar.gz"
    if archive.is_file():
        return _load_imagefolder(archive, name, image_size)
    folder = root / name
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return _load_imagefolder(folder, name, image_size)
    return _load_torchvision(name, root, download)


def _load_torchvision(name: str, root: Path, download: bool) -> _Raw:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION[name])
    try:
        parts = [cls(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise UserError(
                f"no {name} data in {root} (looked for {name}.tar.gz, an ImageFolder {name}/ and a "
                f"torchvision root: {exc}); point --data-dir/REPNAS_DATA at one, "
                "or leave both unset to let torchvision download it"
            ) from None
        try:
            parts = [cls(str(root), train=train, download=True) for train in (True, False)]
        except Exception as exc2:  # network errors come in many types
            raise UserError(f"could not download {name} into {root}: {exc2}") from None
    arrays = []
    for ds in parts:
        x = np.asarray(ds.data)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # MNIST (N,H,W), CIFAR (N,H,W,C)
        arrays += [x, np.asarray(ds.targets, dtype=np.int64)]
    return _as_raw(*arrays, parts[0].classes, f"torchvision:{root}")


def _load_rotmnist(root: Path, download: bool) -> _Raw:
    """MNIST-rot rebuilt deterministically from MNIST (see the module docstring); cached."""
    mnist_x, mnist_y, mtest_x, mtest_y, classes, source = _load_named("mnist", root, download)
    key = _key(f"rotmnist|{source}|{_source_fingerprint(source)}")
    cached = _cache_load("rotmnist", key)
    if cached is not None:
        return cached
    rng = np.random.default_rng(_SPLIT_SEED)
    order = torch.as_tensor(rng.permutation(len(mnist_y)))
    n_extra = _ROTMNIST_TEST - len(mtest_y)
    train_idx = order[:_ROTMNIST_TRAIN]
    extra_idx = order[_ROTMNIST_TRAIN : _ROTMNIST_TRAIN + n_extra]
    train_x, train_y = mnist_x[train_idx], mnist_y[train_idx]
    test_x = torch.cat([mtest_x, mnist_x[extra_idx]])
    test_y = torch.cat([mtest_y, mnist_y[extra_idx]])
    angles = torch.as_tensor(rng.uniform(0.0, 2 * math.pi, len(train_y) + len(test_y)), dtype=torch.float32)
    train_x = _pad_rotate(train_x, angles[: len(train_y)])
    test_x = _pad_rotate(test_x, angles[len(train_y) :])
    raw = (train_x, train_y, test_x, test_y, classes, f"rotmnist<-{source}")
    _cache_save("rotmnist", key, raw)
    return raw


def _pad_rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Pad 28x28 to 29x29 (zero row/column at the bottom/right), then rotate about the centre pixel."""
    from repnas.train._augment import rotate

    x = torch.nn.functional.pad(x, (0, 1, 0, 1))
    out = [rotate(c.float(), a).round_().clamp_(0, 255).to(torch.uint8) for c, a in
           zip(x.split(4096), angles.split(4096), strict=True)]
    return torch.cat(out)


# ---------------------------------------------------------------------------------- imagefolder
def imagefolder_path(name: str) -> Path:
    """The folder or archive of ``imagefolder:PATH`` (``~`` expanded; not checked to exist)."""
    location = name.split(":", 1)[1]
    if not location:
        raise UserError("imagefolder needs a path: imagefolder:PATH (a folder or a .tar.gz)")
    return Path(location).expanduser()


def imagefolder_source(path: Path) -> str:
    """``archive:ABS`` or ``folder:ABS``: what the cache keys on; one line if ``path`` cannot be one."""
    if not path.exists():
        raise UserError(f"no such dataset folder or archive: {path}")
    is_archive = path.is_file()
    if is_archive and not path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise UserError(f"{path} is a file but not a .tar.gz/.tar archive")
    return f"{'archive' if is_archive else 'folder'}:{path.resolve()}"


def _load_imagefolder(path: Path, cache_name: str, image_size: int | None = None) -> _Raw:
    """Decoded (or cached) images of a folder or archive. Images of one size are cached as they
    are (``load_dataset`` resizes afterwards); images of mixed sizes only load with ``image_size``,
    each resized on its own, and are cached under a key that names the size."""
    source = imagefolder_source(path)
    keys = imagefolder_cache_keys(source, image_size)
    for key in keys:
        cached = _cache_load(cache_name, key)
        if cached is not None:
            return cached
    files = _read_archive(path) if source.startswith("archive:") else _read_folder(path)
    *decoded, resized = _decode_imagefolder(files, str(path), image_size)
    raw = _as_raw(*decoded, source)
    _cache_save(cache_name, keys[-1] if resized else keys[0], raw)  # resized: image_size was given
    return raw


def imagefolder_cache_name(path: Path) -> str:
    """The decode cache's file name prefix of ``imagefolder:PATH`` (the path as given, not resolved)."""
    return f"imagefolder-{path.name}"


def imagefolder_cache_keys(source: str, image_size: int | None = None) -> list[str]:
    """The decode cache's keys of a source, in lookup order: its path and fingerprint, then, with
    ``image_size``, the same naming the size its images of mixed sizes were resized to. The
    fingerprint is taken once (a folder's means a stat of every file)."""
    base = f"{source}|{_source_fingerprint(source)}"
    return [_key(base)] + ([_key(f"{base}|size={image_size}")] if image_size else [])


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in _IMAGE_EXTENSIONS


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    """``tarfile.open`` whose read errors (a damaged or foreign file) are one line naming ``path``."""
    try:
        with tarfile.open(path, "r:*") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"cannot read archive {path}: {exc or type(exc).__name__}") from None


def archive_images(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of an open archive that are image files (by name), in archive order."""
    return (m for m in tar if m.isfile() and _is_image(m.name))


def _read_archive(path: Path) -> list[tuple[str, bytes]]:
    with open_archive(path) as tar:
        out = []
        for member in archive_images(tar):
            handle = tar.extractfile(member)
            if handle is not None:
                out.append((member.name, handle.read()))
        return out


def folder_images(path: Path) -> list[Path]:
    """The image files under a folder, sorted (names only: nothing is read)."""
    return sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p.name))


def _read_folder(path: Path) -> list[tuple[str, bytes]]:
    return [(p.relative_to(path).as_posix(), p.read_bytes()) for p in folder_images(path)]


def _layout(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """member name -> (split, class). ``.../{train,test}/<class>/<file>`` or ``.../<class>/<file>``."""
    parts = {n: n.strip("/").split("/") for n in names}
    parents = {p[-3] for p in parts.values() if len(p) >= 3}
    has_split = "train" in parents
    # a val/ folder stands in for test only where there is no test/ (we carve our own val)
    splits = {"train": "train", "test": "test"}
    if "test" not in parents:
        splits.update(val="test", valid="test", validation="test")
    out = {}
    for n, p in parts.items():
        if len(p) < 2:
            continue  # a file at the top level belongs to no class
        if has_split:
            if len(p) >= 3 and p[-3] in splits:
                out[n] = (splits[p[-3]], p[-2])
        else:
            out[n] = ("all", p[-2])
    if has_split and not any(s == "test" for s, _ in out.values()):
        raise UserError("ImageFolder layout has a train/ folder but no test/ (or val/) folder")
    return out


def imagefolder_classes(names: Iterable[str], where: str) -> tuple[list[str], list[str], dict[str, tuple[str, str]]]:
    """``(image names in load order, classes, layout)`` of an ImageFolder's member names: the
    checks that need no pixels (no images, fewer than 2 classes, test classes without train
    images), shared by the loader and the cheap shape inspection (``_shape``), so both refuse
    the same data with the same line. The first name decides grayscale or RGB."""
    layout = _layout(names)
    files = sorted(layout, key=natural_key)
    if not files:
        raise UserError(f"no images in ImageFolder layout found in {where}")
    classes = sorted({c for s, c in layout.values() if s in ("train", "all")})
    if len(classes) < 2:
        raise UserError(f"{where}: need at least 2 class folders, found {classes}")
    unknown = sorted({c for s, c in layout.values() if c not in classes})
    if unknown:
        raise UserError(f"{where}: test classes {unknown[:5]} have no train images")
    return files, classes, layout


def pil_channels(mode: str) -> int:
    """1 for a grayscale PIL mode, else 3 (palette, RGBA, CMYK... are converted to RGB)."""
    return 1 if mode in ("1", "L", "I", "I;16", "F") else 3


def _decode_imagefolder(files: list[tuple[str, bytes]], where: str, image_size: int | None = None) -> tuple:
    """``(train_x, train_y, test_x, test_y, classes, resized)``; ``resized``: images of mixed sizes
    were each resized to ``image_size`` (without it they are refused, naming a file and the sizes)."""
    from PIL import Image, UnidentifiedImageError

    order, classes, layout = imagefolder_classes((name for name, _ in files), where)
    data = dict(files)
    files = [(name, data[name]) for name in order]
    class_index = {c: i for i, c in enumerate(classes)}
    with Image.open(io.BytesIO(files[0][1])) as probe:
        mode = "L" if pil_channels(probe.mode) == 1 else "RGB"

    def decode(item: tuple[str, bytes]) -> np.ndarray:
        name, data = item
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert(mode))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UserError(f"{where}: cannot decode {name}: {exc}") from None

    # Pillow releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(decode, files))
    resized = len({im.shape for im in images}) > 1
    if resized:
        if image_size is None:
            raise UserError(_mixed_sizes(files, images, where))
        x = np.concatenate([_resize(torch.tensor(_chw(im[None])), image_size).numpy() for im in images])
    else:
        x = _chw(np.stack(images))
    split = np.array([layout[n][0] for n, _ in files])
    labels = np.array([class_index[layout[n][1]] for n, _ in files], dtype=np.int64)
    if (split == "all").any():
        return (*_fixed_test_split(x, labels), classes, resized)
    tr, te = split == "train", split == "test"
    return x[tr], labels[tr], x[te], labels[te], classes, resized


def _chw(x: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) decoded images as (N, C, H, W)."""
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def _mixed_sizes(files: list[tuple[str, bytes]], images: list[np.ndarray], where: str) -> str:
    """One line: the first file of another size than the first image, and the sizes seen (WxH)."""
    def size(im: np.ndarray) -> str:
        return f"{im.shape[1]}x{im.shape[0]}"

    sizes = sorted({size(im) for im in images})
    other = next(i for i, im in enumerate(images) if im.shape != images[0].shape)
    return (f"{where}: images have different sizes: {files[other][0]} is {size(images[other])}, "
            f"{files[0][0]} is {size(images[0])} (sizes seen: {', '.join(sizes[:5])}"
            f"{', ...' if len(sizes) > 5 else ''}); pass --image-size N to resize every image to NxN")


# ---------------------------------------------------------------------------------------- cache
def _cache_dir() -> Path:
    return Path(os.environ.get("REPNAS_CACHE") or Path.home() / ".cache" / "repnas").expanduser()


def _key(text: str) -> str:
    return hashlib.sha1(f"v{_CACHE_VERSION}|{text}".encode()).hexdigest()[:16]


def _source_fingerprint(source: str) -> str:
    """size+mtime of what a source was read from, so a changed source misses the cache."""
    kind, _, location = source.partition(":")
    path = Path(location)
    if kind == "archive" and path.is_file():
        st = path.stat()
        return f"{st.st_size}|{st.st_mtime_ns}"
    if kind in ("folder", "torchvision") and path.is_dir():
        stats = [p.stat() for p in _walk_files(path)]
        newest = max((s.st_mtime_ns for s in stats), default=0)
        return f"{len(stats)}|{sum(s.st_size for s in stats)}|{newest}"
    return source


def _walk_files(path: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            yield Path(dirpath) / f


def _cache_load(name: str, key: str) -> _Raw | None:
    path = _cache_dir() / f"{name}-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return _as_raw(
                z["train_x"], z["train_y"], z["test_x"], z["test_y"], list(z["classes"]), str(z["source"])
            )
    except Exception:  # a truncated or foreign cache file is rebuilt, never trusted
        return None


def cached_shape(name: str, key: str) -> tuple[list[str], int, tuple[int, int]] | None:
    """``(classes, channels, (height, width))`` of a cached decode, from the ``.npz``'s class list
    and ``train_x``'s array header only (no pixels are read); None where there is no such cache."""
    import zipfile

    path = _cache_dir() / f"{name}-{key}.npz"
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open("classes.npy") as handle:
                classes = [str(c) for c in np.lib.format.read_array(handle, allow_pickle=False)]
            with archive.open("train_x.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape = read_header(handle)[0]
    except Exception:  # a truncated or foreign cache file: inspect the source instead
        return None
    if len(shape) != 4:
        return None
    return classes, int(shape[1]), (int(shape[2]), int(shape[3]))


def _cache_save(name: str, key: str, raw: _Raw | tuple) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half cache; best effort."""
    train_x, train_y, test_x, test_y, classes, source = raw
    directory = _cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / f"{name}-{key}.npz") as tmp:
            np.savez(
                tmp,
                train_x=np.asarray(train_x), train_y=np.asarray(train_y),
                test_x=np.asarray(test_x), test_y=np.asarray(test_y),
                classes=np.array(classes, dtype=str), source=np.array(source),
            )
    except OSError:
        pass
