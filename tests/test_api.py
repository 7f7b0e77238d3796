"""The Python search API (`repnas.search.run_search`): the README's example, the CLI's defaults, a
user's own sampler and callbacks, `--config`, `--timeout`, `--dry-run`, `--version`, and the fixed
dtypes of `trials.parquet`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from repnas.cli import build_parser, main
from repnas.cli.search import build_search_config
from repnas.runs._rundir import TRIAL_SCHEMA
from repnas.search import run_search, search_config
from repnas.spaces import build_model, dataset_info, load_space

REPO_ROOT = Path(__file__).resolve().parent.parent
README_MARKER = "<!-- tested: tests/test_api.py runs this block -->"


def readme_example() -> str:
    """The README's Python search example (the ```python block right after the marker)."""
    after = (REPO_ROOT / "README.md").read_text().split(README_MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)```", after, re.S)
    assert match, "the README's tested example is missing"
    return match.group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README example, run as written in a fresh folder; its namespace."""
    cwd = tmp_path_factory.mktemp("readme")
    before = os.getcwd()
    os.chdir(cwd)
    namespace: dict = {}
    try:
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(before)
    namespace["cwd"] = cwd
    return namespace


def test_readme_example_runs_a_search_and_exports_its_front(readme_run):
    result, cwd = readme_run["result"], readme_run["cwd"]
    assert readme_run["finished"] == [0, 1, 2, 3]  # the callback saw every trial, in order
    assert len(result.study.trials) == 4 and result.path == (cwd / "runs/api").resolve()
    table = pd.read_parquet(cwd / "runs/api/trials.parquet")
    assert table["trial"].tolist() == [0, 1, 2, 3] and table["status"].isin(["complete", "pruned"]).all()
    assert (table["params"] <= 12_000).all() and (table["val_accuracy"] > 0.2).all()  # 10 classes: chance 0.1
    front = set(result.front["trial"])
    assert front and {e["trial"] for e in readme_run["exported"]} <= front
    for entry in readme_run["exported"]:
        for key in ("config", "state_dict", "torchscript", "onnx"):
            assert (cwd / "runs/api-export" / entry[key]).is_file(), key


def test_a_given_sampler_is_the_one_the_study_uses(readme_run):
    study = readme_run["result"].study
    assert study.sampler is readme_run["sampler"]
    # ... and it proposed the points: a fresh TPESampler(seed=1) (random start-up trials) asks the same
    fresh = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=1))
    distributions = readme_run["result"].config.search_space().distributions()  # in the run's knob order
    expected = [fresh.ask(fixed_distributions=distributions).params for _ in range(4)]
    assert [t.params for t in study.trials] == expected
    default = optuna.create_study(sampler=optuna.samplers.NSGAIISampler(seed=0, population_size=4))
    assert default.ask(fixed_distributions=distributions).params != expected[0]  # not the default sampler's


def test_the_api_and_the_cli_share_their_defaults():
    cli, cli_out = build_search_config(build_parser().parse_args(["search", "--space", "quick"]))
    api, api_out = search_config("quick")
    assert cli == api and cli_out == api_out == Path("runs/quick")
    assert (api.trials, api.epochs, api.sampler, api.seed, api.budget) == (12, 8, "nsga2", 0, 12_000)


def _search_yaml(run: Path) -> dict:
    config = yaml.safe_load((run / "search.yaml").read_text())
    assert config.pop("storage") == "sqlite:///study.db"  # relative to the run directory: it can move
    return config


def test_api_and_cli_runs_write_the_same_search_yaml_and_config_restarts_one(tmp_path, capsys):
    api = run_search("quick", trials=1, epochs=1, out=tmp_path / "api" / "run", progress=False)
    assert main(["search", "--space", "quick", "--trials", "1", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "cli" / "run")]) == 0
    assert _search_yaml(api.path) == _search_yaml(tmp_path / "cli" / "run")
    a, c = api.trials, pd.read_parquet(tmp_path / "cli" / "run" / "trials.parquet")
    timing = ["started", "finished", "train_seconds"]
    assert a.drop(columns=timing).equals(c.drop(columns=timing))  # same point, same trained model

    # --config: a new search from that run's search.yaml, flags overriding it
    new = tmp_path / "from-config"
    assert main(["search", "--config", str(api.path / "search.yaml"), "--seed", "5", "--quiet",
                 "--out", str(new)]) == 0
    expected = {**_search_yaml(api.path), "seed": 5, "study": "from-config"}
    assert _search_yaml(new) == expected
    # any YAML of search.yaml's keys works too; missing keys take the defaults
    (tmp_path / "mine.yaml").write_text("space: quick\ntrials: 3\nsampler: random\n")
    args = build_parser().parse_args(["search", "--config", str(tmp_path / "mine.yaml"), "--out", "runs/x"])
    assert build_search_config(args) == search_config("quick", trials=3, sampler="random", out="runs/x")
    capsys.readouterr()
    (tmp_path / "bad.yaml").write_text("space: quick\nlayers: 3\n")
    assert main(["search", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['layers']" in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_timeout_stops_asking_for_trials(tmp_path, monkeypatch, capsys):
    import repnas.search._optuna_driver as driver

    finished: list[int] = []

    class Clock:  # 10 s pass per finished trial, whatever else reads the clock
        @staticmethod
        def time() -> float:
            return 1000.0 + 10 * len(finished)

    monkeypatch.setattr(driver, "time", Clock)
    result = run_search("quick", trials=20, epochs=1, out=tmp_path / "t", timeout=25, progress=False,
                        callbacks=[lambda study, trial: finished.append(trial.number)])
    assert len(result.study.trials) == 3 == len(result.trials)  # asked at t=0, 10, 20; not at 30
    monkeypatch.undo()
    # from the command line: a timeout already spent by the time the data are loaded starts nothing
    assert main(["search", "--space", "quick", "--trials", "5", "--timeout", "1e-9", "--quiet",
                 "--out", str(tmp_path / "cli")]) == 0
    assert len(pd.read_parquet(tmp_path / "cli" / "trials.parquet")) == 0
    capsys.readouterr()
    assert main(["search", "--space", "quick", "--timeout", "0", "--out", str(tmp_path / "zero")]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err and not (tmp_path / "zero").exists()


def test_a_callback_can_stop_the_search_as_in_optuna(tmp_path):
    def stop_after_two(study, trial):
        if trial.number == 1:
            study.stop()

    sampler = optuna.samplers.RandomSampler(seed=3)
    result = run_search("quick", trials=10, epochs=1, out=tmp_path / "s", progress=False, sampler=sampler,
                        callbacks=[stop_after_two])
    assert len(result.study.trials) == 2
    # Optuna's own callback, which checks the study it gets and calls stop(): the same contract
    seen = []
    limited = run_search("quick", trials=10, epochs=1, out=tmp_path / "m", progress=False,
                         callbacks=[optuna.study.MaxTrialsCallback(3),
                                    lambda study, trial: seen.append(isinstance(study, optuna.Study))])
    assert len(limited.study.trials) == 3 and seen == [True] * 3
    assert yaml.safe_load((tmp_path / "s" / "search.yaml").read_text())["sampler"] == "custom:RandomSampler"
    # the command line resumes it with the pickled sampler: the points a straight run would propose
    assert main(["search", "--resume", "--out", str(tmp_path / "s"), "--trials", "3", "--quiet"]) == 0
    resumed = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    straight = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    distributions = result.config.search_space().distributions()
    assert [t.params for t in resumed.trials] == [straight.ask(distributions).params for _ in range(3)]


def test_dry_run_prints_solved_models_and_writes_nothing(tmp_path, capsys):
    from repnas.rescale import count_flops

    out = tmp_path / "never"
    assert main(["search", "--space", "quick", "--dry-run", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    space, info = load_space("quick"), dataset_info("digits")
    points = re.findall(r"^\[(\d)\] (.*)$", text, re.M)
    assert [int(k) for k, _ in points] == [0, 1, 2]
    printed = re.findall(r"params ([\d,]+) \(.*FLOPs ([\d,]+) per image", text)
    assert len(printed) == 3
    for (_, knobs), (params, flops) in zip(points, printed, strict=True):
        point = {k: (int(v) if v.isdigit() else v) for k, v in (kv.split("=") for kv in knobs.split())}
        solution = space.solve(point, 12_000, "digits")
        assert int(params.replace(",", "")) == solution.params <= 12_000
        model = build_model(solution.model_config, info.num_classes, info.in_channels)
        assert int(flops.replace(",", "")) == count_flops(model, info.input_shape)
    # the first point is the one a search with the same config trains first
    first = run_search("quick", trials=1, epochs=1, out=tmp_path / "real", progress=False).study.trials[0]
    assert " ".join(f"{k}={v}" for k, v in first.params.items()) == points[0][1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    version = re.search(r'^version = "(.+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"repnas {version}\n"


def test_help_texts_are_plain_text(capsys):
    for command in ([], ["search"], ["export"], ["describe"], ["train"], ["report"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "``" not in capsys.readouterr().out, command


def test_trials_parquet_has_the_same_dtypes_when_every_trial_failed(tmp_path, readme_run, monkeypatch):
    import repnas.train._trainer as trainer

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train", boom)
    failed = run_search("quick", trials=2, out=tmp_path / "failed", progress=False).trials
    normal = readme_run["result"].trials
    assert (failed["status"] == "failed").all() and normal["status"].isin(["complete", "pruned"]).all()
    assert failed.dtypes.to_dict() == normal.dtypes.to_dict()
    assert {k: str(v) for k, v in normal.dtypes.items() if not k.startswith("knob.")} == TRIAL_SCHEMA
    assert failed["flops"].isna().all() and failed["epochs"].isna().all() and failed["params"].notna().all()
    assert (normal["finished"] > normal["started"]).all()
    assert normal["epochs"].tolist() == [2 if s == "complete" else 1 for s in normal["status"]]  # moasha: rung 1


def test_design_md_documents_the_trials_schema():
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| `([^`]+)` \|", text, re.M))
    assert documented == TRIAL_SCHEMA


def read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard event file (TFRecord framing: length, crc, event, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, pos, scalars = path.read_bytes(), 0, {}
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_scalars_per_trial_and_epoch_and_eta_lines(tmp_path, capsys):
    import json

    pytest.importorskip("tensorboardX")
    result = run_search("quick", trials=2, epochs=2, out=tmp_path / "tb")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("trial ")]
    assert len(lines) == 2 and all(re.search(r" eta (\d+m)?\d+s$", ln) for ln in lines)
    assert lines[-1].endswith(" eta 0s")
    for number in (0, 1):
        folder = result.path / "trials" / str(number)
        (events,) = folder.glob("events.out.tfevents.*")
        scalars = read_scalars(events)
        history = json.loads((folder / "metrics.json").read_text())["history"]
        assert [step for step, _ in scalars["val_accuracy"]] == [1, 2]
        assert [v for _, v in scalars["val_accuracy"]] == pytest.approx([h["val_accuracy"] for h in history])


def test_progress_line_shows_the_running_epoch_and_an_eta(monkeypatch):
    import io

    import repnas.search._progress as progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [100.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    display = progress.SearchProgress(total=10, done_before=2, workers=1, stream=Terminal())
    display.start_trial()
    now[0] = 130.0  # half of the first trial of this session took 30 s: 60 s per trial, 7.5 left
    display.epoch(2, 1, 2, {"val_accuracy": 0.5}, done=2)
    assert "trial    2 epoch 1/2  val 0.5000 | done 2/10 eta 7m30s" in display.stream.getvalue()
    now[0] = 160.0
    assert display.eta_text(3) == "eta 7m00s"  # 60 s for the one finished trial, 7 left
    assert progress.duration(4000) == "1h06m"
