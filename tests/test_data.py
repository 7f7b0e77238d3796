"""Datasets: splits, ImageFolder folders/archives, the decode cache, batched augmentation."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repnas.errors import UserError
from repnas.train import DataSplits, list_datasets, load_dataset
from repnas.train import _data as data_module
from repnas.train._augment import AugmentSpec, augment, random_crop, random_flip, rotate


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path_factory, monkeypatch):
    """Synthetic datasets cache into a per-test folder; the real ones use the user's cache (decoded
    once, then fast); REPNAS_DATA must not leak in."""
    if "shared_datasets" not in request.fixturenames:
        monkeypatch.setenv("REPNAS_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("REPNAS_DATA", raising=False)


def _write_imagefolder(root: Path, sizes=(8, 8), per_class=6, classes=("cat", "dog", "emu")) -> None:
    """A tiny RGB ImageFolder whose pixel value encodes the class, so labels can be checked."""
    for split, n in (("train", per_class), ("test", 2)):
        for c, name in enumerate(classes):
            folder = root / "toy" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                value = 40 * (c + 1)
                Image.new("RGB", sizes, (value, value, i)).save(folder / f"{i}.png")


def _tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src / "toy", arcname="toy")
    return dest


# ------------------------------------------------------------------------------------- digits
def test_digits_splits_are_disjoint_seeded_and_test_is_fixed():
    a = load_dataset("digits", val_fraction=0.1, seed=0)
    b = load_dataset("digits", val_fraction=0.1, seed=1)
    assert isinstance(a, DataSplits)
    assert (len(a.train), len(a.val), len(a.test)) == (1294, 144, 359)
    assert len(a.train) + len(a.val) + len(a.test) == 1797  # sklearn's digits, every image once
    assert a.train.x.dtype == torch.uint8 and a.train.y.dtype == torch.int64
    assert a.train.x.shape[1:] == (1, 8, 8) and a.in_channels == 1 and a.image_size == (8, 8)
    assert a.num_classes == 10 and int(a.train.x.max()) == 255
    # the test set does not move with the seed; the train/val boundary does
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.y, b.val.y)
    # train and val together are the same images whatever the seed
    pool_a = torch.cat([a.train.x, a.val.x]).flatten(1)
    pool_b = torch.cat([b.train.x, b.val.x]).flatten(1)
    assert sorted(map(tuple, pool_a.tolist())) == sorted(map(tuple, pool_b.tolist()))
    # no test image reappears in train
    train_rows = set(map(tuple, pool_a.tolist()))
    overlap = sum(tuple(r) in train_rows for r in a.test.x.flatten(1).tolist())
    assert overlap <= 3  # sklearn's digits hold a handful of exact duplicates, nothing more
    assert 0.25 < a.mean[0] < 0.35 and 0.3 < a.std[0] < 0.45


def test_image_size_resizes_and_val_fraction_zero_is_empty():
    d = load_dataset("digits", val_fraction=0.0, image_size=16)
    assert d.train.x.shape[1:] == (1, 16, 16) and len(d.val) == 0 and len(d.train) == 1438


def test_unknown_and_missing_data_are_user_errors(tmp_path):
    assert "digits" in list_datasets()
    with pytest.raises(UserError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
    with pytest.raises(UserError, match=r"no mnist data in"):
        load_dataset("mnist", data_dir=tmp_path)  # explicit empty dir: no download attempt
    with pytest.raises(UserError, match="no such dataset folder"):
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")
    with pytest.raises(UserError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


# -------------------------------------------------------------------------------- imagefolder
@pytest.mark.parametrize("as_archive", [False, True])
def test_imagefolder_folder_and_archive(tmp_path, as_archive):
    _write_imagefolder(tmp_path)
    path = _tar(tmp_path, tmp_path / "toy.tar.gz") if as_archive else tmp_path / "toy"
    d = load_dataset(f"imagefolder:{path}", val_fraction=0.0)
    assert d.classes == ["cat", "dog", "emu"]
    assert (len(d.train), len(d.test)) == (18, 6)
    assert d.train.x.shape[1:] == (3, 8, 8)
    # red channel encodes the class: labels follow the sorted class folders
    assert torch.equal(d.train.x[:, 0, 0, 0].long(), 40 * (d.train.y + 1))
    assert torch.equal(d.test.x[:, 0, 0, 0].long(), 40 * (d.test.y + 1))
    assert d.train.y.bincount().tolist() == [6, 6, 6]


def test_archive_cache_is_reused_and_invalidated_by_mtime(tmp_path, monkeypatch):
    _write_imagefolder(tmp_path)
    archive = _tar(tmp_path, tmp_path / "toy.tar.gz")
    first = load_dataset(f"imagefolder:{archive}")
    calls = []
    real_decode = data_module._decode_imagefolder
    monkeypatch.setattr(data_module, "_decode_imagefolder", lambda *a: calls.append(1) or real_decode(*a))
    again = load_dataset(f"imagefolder:{archive}")
    assert calls == [] and torch.equal(first.train.x, again.train.x)  # served from the .npz
    stat = archive.stat()
    import os

    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_dataset(f"imagefolder:{archive}")
    assert calls == [1]  # a touched archive is decoded again


def test_named_dataset_finds_archive_in_data_dir(tmp_path):
    _write_imagefolder(tmp_path, sizes=(28, 28), classes=tuple("0123456789"), per_class=2)
    _tar(tmp_path, tmp_path / "mnist.tar.gz")
    d = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.0)
    assert d.name == "mnist" and d.num_classes == 10 and len(d.train) == 20
    assert d.source.startswith("archive:")


def test_corrupt_archive_and_image_are_user_errors(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(UserError, match="cannot read archive"):
        load_dataset(f"imagefolder:{bad}")
    _write_imagefolder(tmp_path)
    (tmp_path / "toy" / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match=r"cannot decode .*broken\.png"):
        load_dataset(f"imagefolder:{tmp_path / 'toy'}")


def test_mixed_image_sizes_are_rejected_or_each_resized(tmp_path, monkeypatch):
    _write_imagefolder(tmp_path)
    uniform = load_dataset(f"imagefolder:{tmp_path / 'toy'}", val_fraction=0.0, image_size=6)
    Image.new("RGB", (9, 7), (250, 0, 0)).save(tmp_path / "toy" / "train" / "cat" / "odd.png")
    name = f"imagefolder:{tmp_path / 'toy'}"
    with pytest.raises(UserError, match=r"train/cat/odd\.png is 9x7, test/cat/0\.png is 8x8 "
                                        r"\(sizes seen: 8x8, 9x7\); pass --image-size N"):
        load_dataset(name)
    mixed = load_dataset(name, val_fraction=0.0, image_size=6)
    assert mixed.train.x.shape == (19, 3, 6, 6) and mixed.test.x.shape == (6, 3, 6, 6)
    # every other image is resized exactly as a folder of one size is (one batch), the odd one too
    odd = mixed.train.x[mixed.train.x[:, 0, 3, 3] > 240]
    assert odd.shape[0] == 1 and odd[0, 1:].max() == 0
    rest = mixed.train.x[mixed.train.x[:, 0, 3, 3] <= 240]
    assert torch.equal(rest, uniform.train.x) and torch.equal(mixed.test.x, uniform.test.x)
    # cached under a key naming the size: the next load decodes nothing
    monkeypatch.setattr(data_module, "_decode_imagefolder", lambda *a: pytest.fail("decoded again"))
    assert torch.equal(load_dataset(name, val_fraction=0.0, image_size=6).train.x, mixed.train.x)


def test_flat_imagefolder_holds_out_a_fixed_test_share(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "flat" / c).mkdir(parents=True)
        for i in range(10):
            buf = io.BytesIO()
            Image.new("L", (4, 4), i).save(buf, format="PNG")
            (tmp_path / "flat" / c / f"{i}.png").write_bytes(buf.getvalue())
    d = load_dataset(f"imagefolder:{tmp_path / 'flat'}", val_fraction=0.0)
    assert (len(d.train), len(d.test), d.in_channels) == (16, 4, 1)


# ------------------------------------------------------------------------- shape, not loading
@pytest.mark.parametrize("as_archive", [False, True])
def test_dataset_shape_matches_the_loaded_data_without_decoding_it(tmp_path, monkeypatch, as_archive):
    from repnas.train import _shape as shape_module
    from repnas.train import dataset_shape

    _write_imagefolder(tmp_path, sizes=(10, 10))
    Image.new("L", (10, 10)).save(tmp_path / "toy" / "test" / "cat" / "0.png")  # the first: grayscale
    path = _tar(tmp_path, tmp_path / "toy.tar.gz") if as_archive else tmp_path / "toy"
    name = f"imagefolder:{path}"
    shape_module._inspect.cache_clear()
    opened = []
    real_probe = shape_module._probe
    monkeypatch.setattr(shape_module, "_probe", lambda *a: opened.append(1) or real_probe(*a))
    monkeypatch.setattr(data_module, "_decode_imagefolder", lambda *a: pytest.fail("decoded"))
    info = dataset_shape(name)
    assert (info.num_classes, info.in_channels, info.image_size) == (3, 1, 10) and opened == [1]
    assert dataset_shape(name, image_size=6).input_shape == (1, 6, 6)  # same files: remembered
    assert opened == [1]
    monkeypatch.undo()
    data = load_dataset(name)  # the loader agrees: the first image in natural order decides the mode
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 1, (10, 10))
    # once decoded, the shape comes from the cache's headers: the archive is not listed again
    shape_module._inspect.cache_clear()
    monkeypatch.setattr(data_module, "_is_image", lambda name: pytest.fail("listed"))
    assert dataset_shape(name) == info


def test_dataset_shape_of_decoded_mixed_sizes_and_of_a_link_lists_nothing(tmp_path, monkeypatch):
    """Once loaded, a folder named through a link (cached under the link's name) and a folder of
    mixed sizes (cached under a key naming --image-size) answer from the decode cache's headers:
    a --workers process asks for the shape after the main process decoded the images."""
    from repnas.train import _shape as shape_module
    from repnas.train import dataset_shape

    def shape_unlisted(name: str, image_size: int | None):
        shape_module._inspect.cache_clear()
        shape_module._resized_decode.cache_clear()
        with monkeypatch.context() as patched:
            patched.setattr(data_module, "_is_image", lambda name: pytest.fail("listed"))
            info = dataset_shape(name, image_size=image_size)
        return info.num_classes, info.in_channels, info.image_size

    _write_imagefolder(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "toy")
    load_dataset(f"imagefolder:{tmp_path / 'link'}")
    assert shape_unlisted(f"imagefolder:{tmp_path / 'link'}", None) == (3, 3, 8)
    Image.new("RGB", (9, 7)).save(tmp_path / "toy" / "train" / "cat" / "odd.png")
    loaded = load_dataset(f"imagefolder:{tmp_path / 'toy'}", image_size=6)
    assert (loaded.num_classes, loaded.in_channels, loaded.image_size) == (3, 3, (6, 6))
    assert shape_unlisted(f"imagefolder:{tmp_path / 'toy'}", 6) == (3, 3, 6)


def test_dataset_shape_of_named_datasets_and_absolute_paths(tmp_path, monkeypatch):
    from repnas.train import absolute_dataset, dataset_shape

    assert dataset_shape("cifar10").input_shape == (3, 32, 32)
    assert dataset_shape("digits", image_size=16).input_shape == (1, 16, 16)
    with pytest.raises(UserError, match="unknown dataset 'cifar11'"):
        dataset_shape("cifar11")
    with pytest.raises(UserError, match="--image-size must be an integer >= 1, got 0"):
        dataset_shape("digits", image_size=0)
    monkeypatch.chdir(tmp_path)
    assert absolute_dataset("imagefolder:data/x.tar.gz") == f"imagefolder:{tmp_path}/data/x.tar.gz"
    assert absolute_dataset("cifar10") == "cifar10"
    with pytest.raises(UserError, match=r"no such dataset folder or archive: data/x\.tar\.gz"):
        dataset_shape("imagefolder:data/x.tar.gz")


def test_dataset_shape_of_the_cifar10_archive_decodes_one_image(shared_datasets, tmp_path, monkeypatch):
    """60,000 JPEGs: the member list is read and one image opened (1.8 s on 2 idle cores), never decoded."""
    from repnas.train import _shape as shape_module
    from repnas.train import dataset_shape

    monkeypatch.setenv("REPNAS_CACHE", str(tmp_path))  # no decoded cache: the archive is listed
    monkeypatch.setattr(data_module, "_decode_imagefolder", lambda *a: pytest.fail("decoded"))
    shape_module._inspect.cache_clear()
    info = dataset_shape(f"imagefolder:{shared_datasets / 'cifar10.tar.gz'}")
    assert info.input_shape == (3, 32, 32) and info.num_classes == 10


# ------------------------------------------------------------------------------- augmentation
def test_random_crop_takes_windows_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(1, 26, dtype=torch.uint8).reshape(1, 1, 5, 5).repeat(64, 3, 1, 1)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x[0, 0], (2, 2, 2, 2))
    windows = {tuple(padded[i : i + 5, j : j + 5].flatten().tolist()) for i in range(5) for j in range(5)}
    seen = {tuple(o[0].flatten().tolist()) for o in out}
    assert seen <= windows and len(seen) > 10  # only valid windows, and many different ones
    assert all(torch.equal(o[0], o[1]) for o in out)  # channels move together


def test_flip_and_rotation_are_exact_where_they_should_be():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (200, 1, 6, 6), dtype=torch.uint8)
    out = random_flip(x, g)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all() and 60 < int(flipped.sum()) < 140
    img = torch.rand(3, 1, 29, 29)
    quarter = rotate(img, torch.full((3,), math.pi / 2))
    # a quarter turn about the centre pixel of an odd-sized image is an exact 90-degree rotation
    assert torch.allclose(quarter, torch.rot90(img, 1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        quarter, torch.rot90(img, -1, dims=(2, 3)), atol=1e-5
    )
    assert torch.allclose(rotate(img, torch.zeros(3)), img, atol=1e-5)


def test_augment_is_seeded_and_returns_unit_floats():
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    spec = AugmentSpec(crop_padding=2, flip=True, rotate=True)
    a = augment(x, spec, torch.Generator().manual_seed(3))
    b = augment(x, spec, torch.Generator().manual_seed(3))
    c = augment(x, spec, torch.Generator().manual_seed(4))
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


# ------------------------------------------------------------------------- the real datasets
@pytest.mark.needs_shared
def test_cifar10_archive_loads_all_images(shared_datasets):
    d = load_dataset("cifar10", data_dir=shared_datasets, val_fraction=0.1)
    assert len(d.train) + len(d.val) == 50_000 and len(d.test) == 10_000
    counts = torch.cat([d.train.y, d.val.y]).bincount().tolist()
    assert counts == [5000] * 10 and d.test.y.bincount().tolist() == [1000] * 10
    assert d.classes[:3] == ["airplane", "automobile", "bird"] and d.train.x.shape[1:] == (3, 32, 32)
    full_mean = torch.cat([d.train.x, d.val.x]).float().mean((0, 2, 3)) / 255
    assert np.allclose(full_mean.tolist(), (0.4913, 0.4821, 0.4465), atol=2e-3)


@pytest.mark.needs_shared
def test_mnist_archive_and_rotmnist(shared_datasets):
    m = load_dataset("mnist", data_dir=shared_datasets, val_fraction=0.0)
    assert (len(m.train), len(m.test), m.train.x.shape[1:]) == (60_000, 10_000, (1, 28, 28))
    assert m.test.y.bincount().tolist()[:2] == [980, 1135]  # the official test label counts
    r = load_dataset("rotmnist", data_dir=shared_datasets, val_fraction=0.0)
    assert (len(r.train), len(r.test), r.train.x.shape[1:]) == (12_000, 50_000, (1, 29, 29))
    again = load_dataset("rotmnist", data_dir=shared_datasets, val_fraction=0.0)
    assert torch.equal(r.train.x[:100], again.train.x[:100])  # deterministic angles
    # rotation keeps the ink: total brightness per image is close to the unrotated digit's
    assert abs(float(r.test.x[:10_000].float().mean()) - float(m.test.x.float().mean()) * 28 * 28 / 29**2) < 3
