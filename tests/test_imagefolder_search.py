"""A search on a user's own images (``--dataset imagefolder:PATH``), then its report and export.

The folder is generated here: 3 classes of 12x12 PNGs whose bright region (left half, top half,
centre) is the class, under noise, so one epoch is enough to beat chance (1/3).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from repnas.cli import main

CLASSES = ("centre", "left", "top")  # sorted: the label order


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPNAS_DATA", raising=False)


def write_folder(root: Path, mode: str, per_class: tuple[int, int] = (40, 6), size: int = 12) -> Path:
    """``root/{train,test}/<class>/<i>.png`` in PIL ``mode`` (L or RGB)."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 60, (size, size)).astype(np.uint8)
                half, quarter = size // 2, size // 4
                region = {"left": np.s_[:, :half], "top": np.s_[:half, :],
                          "centre": np.s_[quarter:size - quarter, quarter:size - quarter]}[name]
                image[region] += 150
                if mode == "RGB":
                    image = np.stack([image, image[::-1], image.T], axis=-1)
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_search_report_and_export_on_an_image_folder(kind, tmp_path, monkeypatch, capsys):
    # folder: RGB, given as a relative path; archive: its grayscale .tar.gz with one 15x15 image,
    # so the images only load resized (--image-size 12, as search.yaml then records)
    images = write_folder(tmp_path / "pets", "RGB" if kind == "folder" else "L")
    if kind == "folder":
        monkeypatch.chdir(tmp_path)
        dataset, path, channels, resize = "imagefolder:pets", images, 3, []
    else:
        Image.new("L", (15, 15), 200).save(images / "train" / "top" / "big.png")
        path = tmp_path / "pets.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(images, arcname="pets")
        dataset, channels, resize = f"imagefolder:{path}", 1, ["--image-size", "12"]
    run = tmp_path / "run"
    assert main(["search", "--space", "quick", "--dataset", dataset, *resize, "--trials", "2", "--epochs", "1",
                 "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    saved = yaml.safe_load((run / "search.yaml").read_text())
    assert saved["dataset"] == f"imagefolder:{path}" and os.path.isabs(str(path))  # resumable from anywhere
    assert saved["image_size"] == (12 if resize else None)

    table = pd.read_parquet(run / "trials.parquet")
    assert list(table["status"]) == ["complete", "complete"]
    assert table["val_accuracy"].max() > 0.5  # chance is 1/3
    config = yaml.safe_load((run / "trials" / "0" / "config.yaml").read_text())
    assert config["dataset"]["name"] == f"imagefolder:{path}"
    assert config["dataset"].get("image_size") == (12 if resize else None)

    report = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(report), "-q"]) == 0
    assert report.stat().st_size > 10_000 and "val_accuracy" in report.read_text()

    exported = tmp_path / "exported"
    assert main(["export", str(run), "--pareto", "--out", str(exported)]) == 0
    index = yaml.safe_load((exported / "exported.yaml").read_text())
    assert index["trials"]
    for entry in index["trials"]:  # built for the folder's channels, size and 3 classes
        assert entry["input"]["shape"] == ["batch", channels, 12, 12]
        assert entry["output"]["shape"] == ["batch", 3]
        assert len(entry["normalization"]["mean"]) == channels
        assert entry["torchscript_max_abs_diff"] <= 1e-4

    if kind == "folder":  # --resume from another directory reads the same images (named relative to it)
        monkeypatch.chdir(run)
        capsys.readouterr()
        assert main(["search", "--resume", "--out", str(run), "--dataset", "imagefolder:../pets", "--trials", "3",
                     "--quiet"]) == 0
        assert len(pd.read_parquet(run / "trials.parquet")) == 3
        assert main(["search", "--resume", "--out", str(run), "--image-size", "10"]) == 2
        assert "--image-size 10 differs from the run's None" in capsys.readouterr().err
