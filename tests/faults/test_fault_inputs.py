"""Table-driven bad inputs over every command: each gives its exit code, exactly one
``repnas: error:`` line, no traceback, and leaves every run directory byte for byte as it was.

The cases run in this process through ``repnas.cli.main`` (fast); ``{run}`` is a finished run shared
by all cases (never changed), ``{copy}`` a private copy that a case's ``prep`` damages first, ``{tmp}``
the case's scratch folder (``{tmp}/new`` must not appear: a refused search creates nothing).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from fault_helpers import one_line, snapshot

from repnas.cli import main


def _space(tmp: Path, **changes) -> None:
    from repnas.spaces import load_space

    data = load_space("quick").to_dict()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (tmp / "space.yaml").write_text(yaml.safe_dump(data))


def _knob(tmp: Path, name: str, spec) -> None:
    from repnas.spaces import load_space

    data = load_space("quick").to_dict()
    data["knobs"][name] = spec
    (tmp / "space.yaml").write_text(yaml.safe_dump(data))


def _edit_search_yaml(copy: Path, **changes) -> None:
    text = (copy / "search.yaml").read_text()
    data = yaml.safe_load(text)
    data.update(changes)
    (copy / "search.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _other_db(tmp: Path) -> None:
    with sqlite3.connect(tmp / "other.db") as db:
        db.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
        db.execute("INSERT INTO invoices VALUES (1, 9.5)")


def _images(tmp: Path, layout: dict[str, tuple[int, int]], files: int = 3) -> None:
    """An image folder ``{tmp}/imgs``: ``files`` PNGs of (width, height) per relative folder."""
    from PIL import Image

    (tmp / "imgs").mkdir()
    for folder, size in layout.items():
        (tmp / "imgs" / folder).mkdir(parents=True)
        for i in range(files):
            Image.new("RGB", size, (i, 0, 0)).save(tmp / "imgs" / folder / f"{i}.png")


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _foreign_parquet(copy: Path, tmp: Path) -> None:
    import pandas as pd

    (tmp / "foreign").mkdir()
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(tmp / "foreign" / "trials.parquet")
    (tmp / "foreign" / "search.yaml").write_bytes((copy / "search.yaml").read_bytes())


def _corrupt_checkpoints(copy: Path) -> None:
    for path in copy.glob("trials/*/checkpoint.pt"):
        path.write_bytes(b"\x00not a checkpoint" * 10)


def _baselines_bad(tmp: Path) -> None:
    (tmp / "base.csv").write_text("name,params\nvgg,notanumber\n")


PREPS = {
    "epochs_list": lambda c, t: _space(t, epochs=[1, 2]),
    "recipe_list": lambda c, t: _space(t, recipe=[1, 2]),
    "epochs_negative": lambda c, t: _space(t, epochs=-2),
    "epochs_word": lambda c, t: _space(t, epochs="five"),
    "recipe_unknown_key": lambda c, t: _space(t, recipe={"learning_rate": 0.1}),
    "recipe_bad_type": lambda c, t: _space(t, recipe={"lr": "fast"}),
    "recipe_bad_value": lambda c, t: _space(t, recipe={"lr": -1.0}),
    "budget_huge_space": lambda c, t: _space(t, budget="1e30"),
    "family": lambda c, t: _space(t, family="mobilenet"),
    "widths_empty": lambda c, t: _space(t, widths=[]),
    "unknown_key": lambda c, t: _space(t, colour="red"),
    "knob_unknown": lambda c, t: _knob(t, "depht", {"low": 1, "high": 2}),
    "knob_reversed": lambda c, t: _knob(t, "depth", {"low": 3, "high": 1, "per_stage": True}),
    "knob_depth_zero": lambda c, t: _knob(t, "depth", {"low": 0, "high": 2, "per_stage": True}),
    "knob_depth_huge": lambda c, t: _knob(t, "depth", {"low": 1, "high": 100000, "per_stage": True}),
    "fixed_depth_huge": lambda c, t: _knob(t, "depth", 5000),
    "knob_share_bogus": lambda c, t: _knob(t, "share", {"choices": ["own", "steal"], "per_stage": True}),
    "binary_yaml": lambda c, t: (t / "space.yaml").write_bytes(b"\xff\xfe\x00\x01garbage\x00\x9c"),
    "malformed_yaml": lambda c, t: (t / "space.yaml").write_text("name: x\nfamily: vgg\nwidths: [8, 16\n"),
    "space_not_mapping": lambda c, t: (t / "space.yaml").write_text("- just\n- a list\n"),
    "other_db": lambda c, t: _other_db(t),
    "text_file": lambda c, t: (t / "notes.txt").write_text("my notes, not a journal\n"),
    "a_file": lambda c, t: (t / "afile").write_text("x"),
    "trials_abc": lambda c, t: _edit_search_yaml(c, trials="abc"),
    "budget_str": lambda c, t: _edit_search_yaml(c, budget="lots"),
    "unknown_search_key": lambda c, t: _edit_search_yaml(c, colour="red"),
    "search_yaml_list": lambda c, t: (c / "search.yaml").write_text("- 1\n- 2\n"),
    "search_yaml_binary": lambda c, t: (c / "search.yaml").write_bytes(b"\xff\xfe\x00garbage"),
    "db_empty": lambda c, t: (c / "study.db").write_bytes(b""),
    "db_truncated": lambda c, t: _truncate(c / "study.db", 3000),
    "db_garbage": lambda c, t: (c / "study.db").write_bytes(b"garbage" * 500),
    "no_search_yaml": lambda c, t: (c / "search.yaml").unlink(),
    "parquet_truncated": lambda c, t: (_truncate(c / "trials.parquet", 200), (c / "study.db").unlink()),
    "foreign_parquet": _foreign_parquet,
    "corrupt_checkpoint": lambda c, t: _corrupt_checkpoints(c),
    "baselines_bad": lambda c, t: _baselines_bad(t),
    "sampler_corrupt": lambda c, t: (c / "samplers" / "worker0.pkl").write_bytes(bytes(range(256)) * 8),
    "sampler_random": lambda c, t: (c / "samplers" / "worker0.pkl").write_bytes(
        __import__("random").Random(5).randbytes(4096)),
    "if_empty": lambda c, t: (t / "imgs").mkdir(),
    "if_one_class": lambda c, t: _images(t, {"train/cat": (6, 6), "test/cat": (6, 6)}),
    "if_no_images": lambda c, t: (_images(t, {}), (t / "imgs" / "cat").mkdir(), (t / "imgs" / "cat" / "a.txt")
                                  .write_text("x"), (t / "imgs" / "dog").mkdir(), (t / "imgs" / "dog" / "b.csv")
                                  .write_text("1")),
    "if_no_test": lambda c, t: _images(t, {"train/cat": (6, 6), "train/dog": (6, 6)}),
    "if_mixed_sizes": lambda c, t: _images(t, {"cat": (6, 6), "dog": (7, 6)}),
    "if_not_square": lambda c, t: _images(t, {"cat": (8, 6), "dog": (8, 6)}),
    "if_bad_image": lambda c, t: (_images(t, {"cat": (6, 6), "dog": (6, 6)}),
                                  (t / "imgs" / "cat" / "0.png").write_bytes(b"\x89PNG garbage")),
    "if_zip": lambda c, t: (t / "imgs.zip").write_bytes(b"PK\x03\x04 not a tar"),
    "if_square": lambda c, t: _images(t, {"cat": (6, 6), "dog": (6, 6)}),
    "train_cfg_bad_lr": lambda c, t: (t / "cfg.yaml").write_text("model: vgg4\nrecipe: {lr: fast}\n"),
    "train_cfg_binary": lambda c, t: (t / "cfg.yaml").write_bytes(b"\xff\xfe\x00\x01"),
}

Q = ["search", "--trials", "1", "--epochs", "1", "--out", "{tmp}/new"]  # a new search that must not start
QS = [*Q, "--space", "quick"]
R = ["search", "--resume", "--out", "{run}", "--quiet"]
RC = ["search", "--resume", "--out", "{copy}", "--quiet"]
SF = [*Q, "--space", "{tmp}/space.yaml"]

# (id, argv, prep, exit code, what the line must name)
CASES = [
    # ---- search: arguments
    ("no-space", Q, None, 2, "--space is required"),
    ("unknown-space", [*Q, "--space", "quik"], None, 2, "unknown space 'quik'"),
    ("unknown-dataset", [*QS, "--dataset", "cifar11"], None, 2, "unknown dataset 'cifar11'"),
    ("trials-0", [*QS, "--trials", "0"], None, 2, "--trials must be >= 1"),
    ("trials-negative", [*QS, "--trials", "-3"], None, 2, "--trials must be >= 1"),
    ("trials-word", [*QS, "--trials", "abc"], None, 2, "--trials"),
    ("epochs-0", [*QS, "--epochs", "0"], None, 2, "--epochs must be >= 1"),
    ("workers-0", [*QS, "--workers", "0"], None, 2, "--workers must be >= 1"),
    ("gpus-0", [*QS, "--gpus-per-trial", "0"], None, 2, "--gpus-per-trial"),
    ("budget-word", [*QS, "--budget", "lots"], None, 2, "--budget"),
    ("budget-1e30", [*QS, "--budget", "1e30"], None, 2, "--budget"),
    ("budget-zero", [*QS, "--budget", "0"], None, 2, "--budget"),
    ("budget-negative", [*QS, "--budget=-5k"], None, 2, "--budget"),
    ("budget-nan", [*QS, "--budget", "nan"], None, 2, "--budget"),
    ("budget-too-small", [*QS, "--budget", "50"], None, 2, "below the smallest candidate"),
    ("objectives-unknown", [*QS, "--objectives", "val_accuracy,speed"], None, 2, "objectives"),
    ("objectives-empty", [*QS, "--objectives", ","], None, 2, "objectives"),
    ("objectives-repeated", [*QS, "--objectives", "params,params"], None, 2, "objectives"),
    ("sampler-bogus", [*QS, "--sampler", "cmaes"], None, 2, "--sampler"),
    ("early-stop-bogus", [*QS, "--early-stop", "hyperband"], None, 2, "--early-stop"),
    ("unknown-option", [*QS, "--colour", "red"], None, 2, "--colour"),
    ("device-bogus", [*QS, "--device", "bogus"], None, 2, "--device"),
    ("device-cuda-missing", [*QS, "--device", "cuda"], None, 2, "CUDA"),
    ("device-cuda-index", [*QS, "--device", "cuda:99"], None, 2, "cuda:99"),
    ("imagefolder-missing", [*Q, "--space", "quick", "--dataset", "imagefolder:{tmp}/nowhere"], None, 2,
     "no such dataset folder or archive"),
    # ---- search: a user's image folder (imagefolder:PATH), refused before anything is written
    ("imagefolder-empty", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_empty", 2, "no images"),
    ("imagefolder-one-class", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_one_class", 2,
     "need at least 2 class folders, found ['cat']"),
    ("imagefolder-no-images", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_no_images", 2, "no images"),
    ("imagefolder-no-test", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_no_test", 2, "no test/"),
    ("imagefolder-mixed-sizes", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_mixed_sizes", 2,
     "dog/0.png is 7x6, cat/0.png is 6x6 (sizes seen: 6x6, 7x6); pass --image-size N"),
    ("imagefolder-not-square", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_not_square", 2,
     "images are 8x6 (cat/0.png), not square; pass --image-size N"),
    ("imagefolder-bad-image", [*QS, "--dataset", "imagefolder:{tmp}/imgs"], "if_bad_image", 2,
     "cannot decode cat/0.png"),
    ("imagefolder-zip", [*QS, "--dataset", "imagefolder:{tmp}/imgs.zip"], "if_zip", 2, "not a .tar.gz"),
    ("imagefolder-image-size-0", [*QS, "--dataset", "imagefolder:{tmp}/imgs", "--image-size", "0"], "if_square",
     2, "--image-size must be an integer >= 1, got 0"),
    ("out-is-a-file", [*QS[:-4], "--out", "{tmp}/afile", "--space", "quick"], "a_file", 2, "afile"),
    ("out-existing-run", ["search", "--space", "quick", "--trials", "1", "--out", "{run}"], None, 2,
     "already exists"),
    ("storage-other-data", [*QS, "--storage", "sqlite:///{tmp}/other.db"], "other_db", 2, "other.db"),
    ("storage-other-study", [*QS, "--storage", "sqlite:///{run}/study.db", "--study", "x"], None, 2,
     "holds study"),
    ("storage-study-exists", [*QS, "--storage", "sqlite:///{run}/study.db", "--study", "run"], None, 2,
     "already exists"),
    ("journal-other-data", [*QS, "--storage", "{tmp}/notes.txt"], "text_file", 2, "notes.txt"),
    ("storage-bad-url", [*QS, "--storage", "nosuchdb://x/y"], None, 2, "storage"),
    # ---- search: space files
    ("space-missing-file", [*Q, "--space", "{tmp}/nope.yaml"], None, 2, "nope.yaml"),
    ("space-epochs-list", SF, "epochs_list", 2, "epochs"),
    ("space-recipe-list", SF, "recipe_list", 2, "recipe"),
    ("space-epochs-negative", SF, "epochs_negative", 2, "epochs"),
    ("space-epochs-word", SF, "epochs_word", 2, "space.yaml"),
    ("space-recipe-unknown", SF, "recipe_unknown_key", 2, "learning_rate"),
    ("space-recipe-type", SF, "recipe_bad_type", 2, "lr"),
    ("space-recipe-value", SF, "recipe_bad_value", 2, "lr"),
    ("space-budget-huge", SF, "budget_huge_space", 2, "budget"),
    ("space-family", SF, "family", 2, "unknown family"),
    ("space-widths", SF, "widths_empty", 2, "widths"),
    ("space-unknown-key", SF, "unknown_key", 2, "colour"),
    ("space-knob-unknown", SF, "knob_unknown", 2, "depht"),
    ("space-knob-reversed", SF, "knob_reversed", 2, "low <= high"),
    ("space-depth-zero", SF, "knob_depth_zero", 2, "depth"),
    ("space-share-bogus", SF, "knob_share_bogus", 2, "steal"),
    # depth 100000 hung with no output: each trial built a 50000-conv candidate to find it infeasible
    ("space-depth-huge", SF, "knob_depth_huge", 2, "depth high 100000 is above 256"),
    ("space-depth-huge-dry-run", [*SF, "--dry-run", "1"], "knob_depth_huge", 2, "depth high 100000"),
    ("space-fixed-depth-huge", SF, "fixed_depth_huge", 2, "depth 5000 is above 256"),
    ("space-binary", SF, "binary_yaml", 2, "space.yaml"),
    ("space-malformed", SF, "malformed_yaml", 2, "malformed YAML"),
    ("space-not-mapping", SF, "space_not_mapping", 2, "mapping"),
    # ---- search --resume
    ("resume-no-out", ["search", "--resume"], None, 2, "--out"),
    ("resume-missing", ["search", "--resume", "--out", "{tmp}/nowhere"], None, 2, "nowhere"),
    ("resume-trials-0", [*R, "--trials", "0"], None, 2, "--trials must be >= 1"),
    ("resume-other-space", [*R, "--space", "resnet"], None, 2, "differs"),
    ("resume-other-dataset", [*R, "--dataset", "mnist"], None, 2, "differs"),
    ("resume-other-budget", [*R, "--budget", "5k"], None, 2, "differs"),
    ("resume-other-seed", [*R, "--seed", "9"], None, 2, "differs"),
    ("resume-other-objectives", [*R, "--objectives", "params"], None, 2, "differs"),
    ("resume-budget-1e30", [*R, "--budget", "1e30"], None, 2, "--budget"),
    ("resume-device-bogus", [*R, "--device", "bogus"], None, 2, "--device"),
    ("resume-device-cuda", [*R, "--device", "cuda"], None, 2, "CUDA"),
    ("resume-workers-0", [*R, "--workers", "0"], None, 2, "--workers must be >= 1"),
    ("resume-data-missing", [*R, "--dataset", "digits", "--data-dir", "{tmp}/afile/x"], "a_file", 2, "afile"),
    ("resume-trials-abc", RC, "trials_abc", 2, "trials"),
    ("resume-budget-str", RC, "budget_str", 2, "budget"),
    ("resume-unknown-key", RC, "unknown_search_key", 2, "colour"),
    ("resume-yaml-list", RC, "search_yaml_list", 2, "search.yaml"),
    ("resume-yaml-binary", RC, "search_yaml_binary", 2, "search.yaml"),
    ("resume-db-empty", RC, "db_empty", 2, "study.db"),
    ("resume-db-truncated", RC, "db_truncated", 2, "study.db"),
    ("resume-db-garbage", RC, "db_garbage", 2, "study.db"),
    ("resume-no-search-yaml", RC, "no_search_yaml", 2, "search.yaml"),
    # a traceback (OverflowError), exit 1, after search.yaml was rewritten (4 -> 5 trials)
    ("resume-sampler-corrupt", [*RC, "--trials", "5"], "sampler_corrupt", 2, "worker0.pkl"),
    ("resume-sampler-random", [*RC, "--trials", "5"], "sampler_random", 2, "worker0.pkl"),
    # ---- export
    ("export-not-a-run", ["export", "{tmp}", "--top", "1", "--out", "{tmp}/x"], None, 2, "not a search run"),
    ("export-top-0", ["export", "{run}", "--top", "0", "--out", "{tmp}/x"], None, 2, "--top must be >= 1"),
    ("export-both", ["export", "{run}", "--top", "1", "--pareto", "--out", "{tmp}/x"], None, 2, "--pareto"),
    ("export-neither", ["export", "{run}", "--out", "{tmp}/x"], None, 2, "--pareto"),
    ("export-foreign-parquet", ["export", "{tmp}/foreign", "--top", "1", "--out", "{tmp}/x"],
     "foreign_parquet", 2, "trials.parquet"),
    ("export-into-run", ["export", "{run}", "--top", "1", "--out", "{run}"], None, 2, "run directory"),
    ("export-into-run-trials", ["export", "{run}", "--top", "1", "--out", "{run}/trials"], None, 2,
     "run directory"),
    ("export-out-is-file", ["export", "{run}", "--top", "1", "--out", "{tmp}/afile"], "a_file", 2, "afile"),
    ("export-corrupt-checkpoint", ["export", "{copy}", "--top", "1", "--out", "{tmp}/x"],
     "corrupt_checkpoint", 2, "checkpoint.pt"),
    ("export-truncated-parquet", ["export", "{copy}", "--top", "1", "--out", "{tmp}/x"], "parquet_truncated",
     2, "trials.parquet"),
    # ---- report
    ("report-over-search-yaml", ["report", "{run}", "--out", "{run}/search.yaml", "-q"], None, 2, "search.yaml"),
    ("report-over-parquet", ["report", "{run}", "--out", "{run}/trials.parquet", "-q"], None, 2,
     "trials.parquet"),
    ("report-over-study", ["report", "{run}", "--out", "{run}/study.db", "-q"], None, 2, "study.db"),
    ("report-over-input", ["report", "{tmp}/other.db", "--out", "{tmp}/other.db", "-q"], "other_db", 2,
     "other.db"),
    ("report-out-dir", ["report", "{run}", "--out", "{tmp}", "-q"], None, 2, "directory"),
    ("report-truncated-db", ["report", "{copy}/study.db", "--out", "{tmp}/r.html", "-q"], "db_truncated", 2,
     "study.db"),
    ("report-garbage-db", ["report", "{copy}/study.db", "--out", "{tmp}/r.html", "-q"], "db_garbage", 2,
     "study.db"),
    ("report-missing", ["report", "{tmp}/nowhere", "--out", "{tmp}/r.html", "-q"], None, 2, "nowhere"),
    ("report-other-db", ["report", "{tmp}/other.db", "--out", "{tmp}/r.html", "-q"], "other_db", 2,
     "other.db"),
    ("report-not-a-run", ["report", "{tmp}", "--out", "{tmp}/r.html", "-q"], None, 2, "not a run"),
    ("report-bad-baselines", ["report", "{run}", "--baselines", "{tmp}/base.csv", "--out", "{tmp}/r.html", "-q"],
     "baselines_bad", 2, "base.csv"),
    # ---- describe
    ("describe-image-size-0", ["describe", "vgg6", "--image-size", "0"], None, 2, "--image-size"),
    ("describe-num-classes", ["describe", "vgg6", "--num-classes", "-1"], None, 2, "--num-classes"),
    ("describe-in-channels", ["describe", "vgg6", "--in-channels", "0"], None, 2, "--in-channels"),
    ("describe-unknown", ["describe", "vgg99"], None, 2, "vgg99"),
    ("describe-bad-dataset", ["describe", "vgg6", "--dataset", "cifar11"], None, 2, "cifar11"),
    # ---- train
    ("train-missing-config", ["train", "{tmp}/none.yaml"], None, 2, "none.yaml"),
    ("train-bad-lr", ["train", "{tmp}/cfg.yaml", "--epochs", "1"], "train_cfg_bad_lr", 2, "lr"),
    ("train-binary-config", ["train", "{tmp}/cfg.yaml"], "train_cfg_binary", 2, "cfg.yaml"),
    ("train-epochs-0", ["train", "vgg4", "--epochs", "0"], None, 2, "epochs"),
]


def _repoint(copy: Path) -> None:
    """Point the copy's search.yaml at the copy's own study.db."""
    from repnas.runs._rundir import RunDir

    _edit_search_yaml(copy, storage=RunDir(copy).default_storage(1))


def _fill(argv: list[str], run: Path, copy: Path, tmp: Path) -> list[str]:
    return [a.format(run=run, copy=copy, tmp=tmp) for a in argv]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, finished_run, tmp_path, capsys):
    import shutil

    import torch

    name, argv, prep, code, needle = case
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    _repoint(copy)
    if prep:
        PREPS[prep](copy, tmp_path)
    before_run, before_copy = snapshot(finished_run), snapshot(copy)
    before_tmp = {p for p in tmp_path.rglob("*")}
    started = time.time()
    with pytest.raises(SystemExit) if name in _ARGPARSE else _nothing() as exited:
        result = main(_fill(argv, finished_run, copy, tmp_path))
    result = exited.value.code if name in _ARGPARSE else result
    err = capsys.readouterr().err
    line = one_line(err)
    assert result == code, err
    assert line.startswith("repnas: error: "), line
    assert needle.format(tmp=tmp_path) in line, line
    assert snapshot(finished_run) == before_run, "the shared run changed"
    assert snapshot(copy) == before_copy, "the damaged copy changed"
    new = {p for p in tmp_path.rglob("*")} - before_tmp
    assert not new, f"a refused command wrote {sorted(map(str, new))}"
    assert time.time() - started < 20, "a refused command took too long"


_ARGPARSE = {"trials-word", "sampler-bogus", "early-stop-bogus", "unknown-option", "export-both",
             "export-neither"}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_case_count():
    assert len(CASES) >= 60


def test_deep_range_loads_fast(tmp_path):
    """``depth: {high: 100000}`` must not make loading the space quadratic (it hung)."""
    from repnas.spaces import load_space

    _knob(tmp_path, "depth", {"low": 1, "high": 100000, "per_stage": True})
    started = time.time()
    space = load_space(str(tmp_path / "space.yaml"))
    assert space.knobs["depth.0"].high == 100000
    assert time.time() - started < 2.0


@pytest.mark.parametrize("name", ["a?b", "50%20off", "with space", "données-ü"])
def test_odd_run_directory_names_keep_their_study_inside(tmp_path, name, capsys):
    """A ``?`` cut the SQLite URL (the study landed outside the run), ``%20`` was decoded or crashed."""
    from repnas.runs._rundir import SearchConfig
    from repnas.runs._storage import storage_file

    out = tmp_path / name
    argv = ["search", "--space", "quick", "--trials", "1", "--epochs", "1", "--out", str(out), "--device", "cpu",
            "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing beside the run
    search = SearchConfig.from_yaml(out / "search.yaml")
    assert storage_file(search.storage) == (out / "study.db").resolve()
    assert main(["search", "--resume", "--out", str(out), "--trials", "2", "--quiet"]) == 0
    import optuna

    assert len(optuna.load_study(study_name=search.study, storage=search.storage).trials) == 2


def test_all_infeasible_search_leaves_no_run_and_its_advice_works(tmp_path, capsys):
    """``--budget 100`` exited 2 but left its run directory, so its own advice (``--budget N``) was
    refused on the same ``--out`` ("already exists")."""
    import re

    out = tmp_path / "run"
    argv = ["search", "--space", "quick", "--trials", "2", "--epochs", "1", "--out", str(out), "--device", "cpu",
            "--quiet"]
    assert main([*argv, "--budget", "100"]) == 2
    line = one_line(capsys.readouterr().err)
    advice = re.search(r"--budget (\d+)", line)
    assert advice and "over the budget" in line, line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert main([*argv, "--budget", advice.group(1)]) == 0, capsys.readouterr().err
    assert (out / "search.yaml").is_file()
