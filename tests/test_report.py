"""Loading runs from every source, summary tables, and the HTML report (rendered in a real Chromium).

Run directories are synthesized here from the contract in docs/design.md: an Optuna SQLite study
made with optuna directly, the matching trials.parquet and search.yaml. Where the real quick run
(`repnas search --space quick --dataset digits --trials 12 --out runs/quick`) exists it is rendered too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from repnas.analysis import (
    front_table,
    knob_effects,
    learning_curves,
    load_baselines,
    load_run,
    load_trials,
    report_figures,
    write_report,
)
from repnas.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = [{"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"},
              {"name": "flops", "direction": "minimize"}]
SCHEMES = ["plain", "intra", "inter", "bank"]


def make_run(out: Path, n: int = 24, seed: int = 0, budget: int = 60000, failed=(3, 4),
             name: str = "synthetic") -> Path:
    """A run directory as `repnas search` writes it: study.db, trials.parquet, search.yaml, trials/N/.

    Trials 3 and 4 fail; trials whose params exceed the budget are infeasible (not trained)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=[o["direction"] for o in OBJECTIVES])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o["name"] for o in OBJECTIVES])
    dists = {"depth": optuna.distributions.IntDistribution(4, 8),
             "scheme": optuna.distributions.CategoricalDistribution(SCHEMES),
             "rank": optuna.distributions.IntDistribution(1, 4)}
    rows = []
    for i in range(n):
        knobs = {"depth": int(rng.integers(4, 9)), "scheme": str(rng.choice(SCHEMES)),
                 "rank": int(rng.integers(1, 5))}
        shares = {"plain": 1.0, "intra": 0.5, "inter": 0.35, "bank": 0.2 + 0.1 * knobs["rank"]}
        share = shares[knobs["scheme"]]
        params = float(int(12000 * knobs["depth"] * share))
        flops = float(150000 * knobs["depth"] + 1000 * i)
        acc = round(float(min(0.99, 0.7 + 0.03 * knobs["depth"] + 0.1 * share + rng.normal(0, 0.01))), 4)
        status, error = "complete", ""
        if i in failed:
            status, error = "failed", "RuntimeError: out of memory\n  traceback line"
        elif params > budget:
            status = "infeasible"
        done = status == "complete"
        row = {"trial": i, "status": status, "val_accuracy": acc if done else math.nan,
               "test_accuracy": acc - 0.01 if done else math.nan,
               "params": params if status != "failed" else math.nan, "physical_params": params * 2,
               "flops": flops if status != "failed" else math.nan, "train_seconds": 1.5, "seed": seed + i,
               "worker": "w0", "error": error, "budget": budget, "config": json.dumps({"model": knobs}),
               **{f"knob.{k}": v for k, v in knobs.items()}}
        rows.append(row)
        attrs = {k: row[k] for k in ("status", "test_accuracy", "physical_params", "train_seconds", "seed",
                                      "worker", "error", "budget", "params", "flops")}
        study.add_trial(optuna.trial.create_trial(
            params=knobs, distributions=dists,
            state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.FAIL,
            values=[acc, params, flops] if done else None,
            user_attrs={k: v for k, v in attrs.items() if not (isinstance(v, float) and math.isnan(v))}))
        (out / "trials" / str(i)).mkdir(parents=True, exist_ok=True)
        (out / "trials" / str(i) / "config.yaml").write_text(yaml.safe_dump({"model": knobs}))
        if done:  # the trainer's per-epoch history: a curve rising to the final accuracy
            history = [{"epoch": e, "val_accuracy": acc * f, "val_loss": 2.3 * (1 - f) + 0.1}
                       for e, f in enumerate((0.6, 0.85, 1.0), start=1)]
            (out / "trials" / str(i) / "metrics.json").write_text(json.dumps({"history": history}))
    pd.DataFrame(rows).to_parquet(out / "trials.parquet")
    (out / "search.yaml").write_text(yaml.safe_dump({
        "space_name": "quick", "dataset": "digits", "budget": budget, "trials": n, "epochs": 1, "seed": seed,
        "backend": "optuna", "storage": storage, "study": name, "objectives": OBJECTIVES}))
    return out


@pytest.fixture(scope="module")
def _made_runs(tmp_path_factory):
    """Both synthetic runs made once (each SQLite insert is a commit: seconds); tests get copies."""
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "quick"), make_run(root / "other", seed=1, name="other")


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    config = yaml.safe_load((dest / "search.yaml").read_text())  # the storage URL is absolute
    config["storage"] = f"sqlite:///{(dest / 'study.db').resolve()}"
    (dest / "search.yaml").write_text(yaml.safe_dump(config))
    return dest


@pytest.fixture
def run_dir(tmp_path, _made_runs):
    return _copy(_made_runs[0], tmp_path / "quick")


@pytest.fixture
def other_run(tmp_path, _made_runs):
    return _copy(_made_runs[1], tmp_path / "other")


def _measured(*runs: Path) -> int:
    """Trials with an accuracy to plot (complete ones), over the runs."""
    return sum(int(load_run(r).trials["status"].eq("complete").sum()) for r in runs)


def _drawn(x: str, *runs: Path) -> int:
    """Markers an accuracy-vs-``x`` figure should have: every trial with an accuracy and a cost
    (stopped-early ones too, at their last epoch's accuracy), identical points of a run once
    (a reused result lands on the trial it reuses)."""
    total = 0
    for r in runs:
        t = load_run(r).trials
        t = t[np.isfinite(t["val_accuracy"].astype(float)) & np.isfinite(t[x].astype(float))]
        total += len(t.drop_duplicates([x, "val_accuracy"]))
    return total


# ----------------------------------------------------------------------------- loading


def test_parquet_and_study_give_the_same_table(run_dir):
    from_parquet = load_run(run_dir).trials
    (run_dir / "trials.parquet").rename(run_dir / "moved.parquet")  # a search still writing its table
    from_study = load_run(run_dir).trials
    by_url = load_trials(f"sqlite:///{run_dir / 'study.db'}")
    by_file = load_trials(run_dir / "study.db")
    study = optuna.load_study(study_name="synthetic", storage=f"sqlite:///{run_dir / 'study.db'}")
    by_object = load_trials(study)
    assert from_parquet["status"].value_counts().to_dict() == {"complete": 17, "infeasible": 5, "failed": 2}
    columns = ["trial", "status", "val_accuracy", "test_accuracy", "params", "flops", "budget",
               "knob.depth", "knob.rank", "knob.scheme"]
    for other in (from_study, by_url, by_file, by_object):
        pd.testing.assert_frame_equal(from_parquet[columns], other[columns], check_dtype=False)


def test_loading_never_writes_to_the_run(run_dir):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    load_run(run_dir)
    load_trials(run_dir / "study.db")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def test_journal_storage_of_a_multi_worker_search_loads(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    study = optuna.create_study(study_name="j", storage=storage, directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(
        params={"depth": 4}, distributions={"depth": optuna.distributions.IntDistribution(4, 8)},
        values=[0.9, 1000.0], user_attrs={"flops": 5.0}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"error": "boom"}))
    t = load_trials(tmp_path / "journal.log", objectives=OBJECTIVES)
    assert t["status"].tolist() == ["complete", "failed"] and t["error"].tolist() == ["", "boom"]
    assert t.loc[0, ["val_accuracy", "params", "flops", "knob.depth"]].tolist() == [0.9, 1000.0, 5.0, 4]


def test_non_optuna_sqlite_is_refused_untouched(tmp_path):
    import sqlite3

    db = tmp_path / "other.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (x)")
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="without Optuna studies"):
        load_trials(db)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_ray_tune_experiment_loads_like_a_run(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    def trainable(config):
        if config["depth"] == 6:
            raise RuntimeError("boom at depth 6")
        tune.report({"val_accuracy": 0.5 + config["depth"] / 100, "params": config["depth"] * 1000,
                     "flops": 10 * config["depth"], "status": "complete"})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tune.Tuner(trainable, param_space={"depth": tune.grid_search([4, 5, 6]), "scheme": "intra"},
                   run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        ray.shutdown()
    run = load_run(tmp_path / "exp")
    t = run.trials
    assert t["trial"].tolist() == [0, 1, 2]
    assert t["status"].tolist() == ["complete", "complete", "failed"]
    assert t["val_accuracy"].iloc[:2].tolist() == pytest.approx([0.54, 0.55])
    assert t["params"].iloc[:2].tolist() == [4000, 5000]
    assert t["knob.depth"].tolist() == [4, 5, 6] and set(t["knob.scheme"]) == {"intra"}
    assert "boom at depth 6" in t["error"].iloc[2]
    assert front_table(run)["trial"].tolist() == [1, 0]


# ----------------------------------------------------------------------------- tables


def test_front_table_has_reproduce_commands_and_only_front_rows(run_dir):
    run = load_run(run_dir)
    table = front_table(run)
    assert len(table) > 0
    assert set(table["trial"]).isdisjoint({3, 4})  # failed
    assert (table["params"] <= 60000).all()
    assert table["val_accuracy"].is_monotonic_decreasing
    row = table.iloc[0]
    assert row["train_command"] == f"repnas train {run_dir}/trials/{row['trial']}/config.yaml"
    assert set(table["export_command"]) == {f"repnas export {run_dir} --pareto --out export/quick"}


def test_knob_effects_count_every_trial_once_per_knob(run_dir):
    run = load_run(run_dir)
    effects = knob_effects(run)
    for knob, group in effects.groupby("knob"):
        assert group["trials"].sum() == 24, knob
        assert group["feasible"].sum() == 17
        assert group["on_front"].sum() == len(front_table(run))
    plain = effects[(effects["knob"] == "scheme") & (effects["value"] == "plain")].iloc[0]
    t = run.trials
    feasible_plain = t[(t["knob.scheme"] == "plain") & (t["status"] == "complete") & (t["params"] <= 60000)]
    assert plain["mean_val_accuracy"] == pytest.approx(feasible_plain["val_accuracy"].mean())


# ----------------------------------------------------------------------------- baselines


BASELINES_CSV = "name,params,flops,val_accuracy,test_accuracy\nvgg6,30000,700000,0.97,0.965\n" \
                "vgg11,59000,1100000,0.985,0.98\nwrn16_4,45000,,0.98,0.975\n"


def test_baselines_csv_and_yaml_agree(tmp_path):
    (tmp_path / "b.csv").write_text(BASELINES_CSV)
    (tmp_path / "b.yaml").write_text(
        "vgg6: {params: 30000, flops: 700000, val_accuracy: 0.97, test_accuracy: 0.965}\n"
        "vgg11: {params: 59000, flops: 1100000, val_accuracy: 0.985, test_accuracy: 0.98}\n"
        "wrn16_4: {params: 45000, val_accuracy: 0.98, test_accuracy: 0.975}\n")
    pd.testing.assert_frame_equal(load_baselines(tmp_path / "b.csv"), load_baselines(tmp_path / "b.yaml"))


@pytest.mark.parametrize("text, message", [
    ("name,params\nvgg6,\n", "params must be a positive number"),
    ("name,params,latency\nvgg6,1,2\n", "unknown field 'latency'"),
    ("name,params\nvgg6,100\n", "give val_accuracy or test_accuracy"),
    ("name,params,val_accuracy\nvgg6,lots,0.9\n", "params must be a number"),
])
def test_bad_baselines_are_one_line_cli_errors(tmp_path, run_dir, capsys, text, message):
    (tmp_path / "b.csv").write_text(text)
    out = tmp_path / "r.html"
    code = main(["report", str(run_dir), "--baselines", str(tmp_path / "b.csv"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- report content


def _trace_points(fig) -> dict[str, int]:
    return {trace.name: len(trace.x) for trace in fig.data if "markers" in (trace.mode or "markers")}


def test_figures_plot_every_measured_trial_and_overlay_runs(run_dir, other_run):
    runs = [load_run(run_dir), load_run(other_run)]
    baselines = pd.DataFrame([{"name": "vgg6", "params": 30000, "flops": 700000, "val_accuracy": 0.97,
                               "test_accuracy": 0.96}])
    figures = {div: fig for div, fig, _ in report_figures(runs, baselines)}
    assert set(figures) == {"fig-accuracy-params", "fig-accuracy-flops", "fig-three-objectives",
                            "fig-hypervolume", "fig-learning-curves", "fig-parallel-0", "fig-parallel-1"}
    points = _trace_points(figures["fig-accuracy-params"])
    assert points.pop("baselines") == 1
    assert sum(points.values()) == _measured(run_dir, other_run)  # every complete trial, nothing else
    assert {name.split(",")[0] for name in points} == {"quick", "other"}
    hover = figures["fig-accuracy-params"].data[0].hovertemplate
    assert all(f"{col}=" in hover for col in ("trial", "knob.depth", "knob.scheme", "knob.rank", "flops"))
    hv = figures["fig-hypervolume"]
    assert sorted(tr.name for tr in hv.data) == ["other", "quick"]
    assert all(0 < max(tr.y) <= 1 and list(tr.y) == sorted(tr.y) for tr in hv.data)  # normalised, monotone
    assert len(figures["fig-parallel-0"].data[0].dimensions) == 3 + 2  # knobs + params + accuracy
    curves = figures["fig-learning-curves"].data  # one line per complete trial, three epochs each
    assert len(curves) == _measured(run_dir, other_run) and all(list(c.x) == [1, 2, 3] for c in curves)
    thick = [c for c in curves if c.line.width == 3]
    assert len(thick) == sum(len(front_table(r)) for r in runs) and {c.line.color for c in thick} == {"#d62728"}
    assert curves[-1].line.width == 3  # the front is drawn last, on top


def _run_with_copies(run_dir: Path, copies: int = 2):
    """The run with trial 0's row repeated ``copies`` more times (as new trial numbers)."""
    from repnas.analysis import Run

    run = load_run(run_dir)
    first = run.trials[run.trials["status"] == "complete"].iloc[[0]]
    extra = pd.concat([first.assign(trial=100 + k) for k in range(copies)])
    return Run(run.name, pd.concat([run.trials, extra], ignore_index=True), run.objectives, run.config, run.path)


def test_identical_points_are_drawn_once_with_their_count(run_dir):
    run = _run_with_copies(run_dir)
    fig = dict((d, f) for d, f, _ in report_figures([run]))["fig-accuracy-params"]
    points = sum(v for k, v in _trace_points(fig).items() if k != "front")
    assert points == _measured(run_dir)  # 3 identical trials -> one marker
    labels = [t for trace in fig.data if trace.text is not None for t in trace.text if t]
    assert labels == ["×3"]
    listed = [str(c) for trace in fig.data if trace.customdata is not None
              for c in np.asarray(trace.customdata).ravel() if ", " in str(c)]
    first = run.trials[run.trials["status"] == "complete"]["trial"].iloc[0]
    assert listed == [f"{int(first)}, 100, 101"]


def test_axes_carry_units_and_the_flops_convention(run_dir):
    from repnas.analysis._report import AXIS_TITLES

    figures = {d: f for d, f, _ in report_figures([load_run(run_dir)])}
    assert figures["fig-accuracy-flops"].layout.xaxis.title.text == AXIS_TITLES["flops"]
    assert "2 × multiply-adds" in AXIS_TITLES["flops"]
    assert figures["fig-accuracy-params"].layout.xaxis.title.text == AXIS_TITLES["params"]
    assert figures["fig-three-objectives"].layout.yaxis.title.text == AXIS_TITLES["flops"]
    assert "validation accuracy" in figures["fig-accuracy-params"].layout.yaxis.title.text


def test_overlaid_runs_have_distinct_colours_everywhere(run_dir, other_run):
    figures = {d: f for d, f, _ in report_figures([load_run(run_dir), load_run(other_run)])}
    for name in ("fig-accuracy-params", "fig-hypervolume"):
        colours: dict[str, set] = {}
        for trace in figures[name].data:
            run = trace.name.split(",")[0].removeprefix("front (").rstrip(")")
            colour = trace.line.color if "lines" in (trace.mode or "") else trace.marker.color
            colours.setdefault(run, set()).add(colour)
        assert all(len(c) == 1 for c in colours.values()), (name, colours)  # one colour per run
        assert colours["quick"] != colours["other"], name


def test_a_far_baseline_gets_a_zoomed_view_and_a_near_one_does_not(run_dir):
    near = load_baselines_text(BASELINES_CSV)
    figures = {d for d, _, _ in report_figures([load_run(run_dir)], near)}
    assert "fig-accuracy-params-zoom" not in figures
    far = load_baselines_text(BASELINES_CSV + FAR_BASELINE)
    zoom = {d: f for d, f, _ in report_figures([load_run(run_dir)], far)}["fig-accuracy-params-zoom"]
    trials = load_run(run_dir).trials
    shown = 10 ** np.array(zoom.layout.xaxis.range)
    params = trials.loc[trials["status"] == "complete", "params"]
    assert shown[0] <= params.min() and params.max() <= shown[1] < 9_000_000
    assert "vgg16" in zoom.layout.title.text


def load_baselines_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "b.csv"
        path.write_text(text)
        return load_baselines(path)


def test_plotlyjs_cdn_makes_a_small_page(tmp_path, run_dir, capsys):
    out = tmp_path / "cdn.html"
    assert main(["report", str(run_dir), "--out", str(out), "--plotlyjs", "cdn", "-q"]) == 0
    page = out.read_text()
    assert len(page) < 300_000 and "window.PlotlyConfig" in page
    assert re.search(r'<script [^>]*src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', page)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(run_dir), "--out", str(out), "--plotlyjs", "web"])
    assert exit_info.value.code == 2 and "invalid choice: 'web'" in capsys.readouterr().err


def test_report_is_self_contained_with_plotly_once(tmp_path, run_dir, other_run):
    out = write_report([run_dir, other_run], tmp_path / "r.html")
    page = out.read_text()
    assert page.count("window.PlotlyConfig") == 1  # plotly.js embedded exactly once
    assert len(page) > 3_000_000  # ... and it is the real bundle, not a reference to it
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:)?//", page, re.I)
    assert page.count('class="figure"') == 7


def test_cli_report_with_failed_and_infeasible_trials(tmp_path, run_dir, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    page = out.read_text()
    assert "Trials not on any front: 7 failed, pruned or infeasible" in page
    assert "RuntimeError: out of memory" in page and "traceback line" not in page


def test_cli_report_all_failed_run_explains_instead_of_plotting(tmp_path, capsys):
    run = make_run(tmp_path / "bad", n=4, failed=(0, 1, 2, 3))
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("data-missing=") == 6 and "window.PlotlyConfig" not in page
    assert "Trials not on any front: 4" in page


@pytest.mark.parametrize("layout", ["empty_run", "no_such_dir", "not_a_run"])
def test_cli_report_errors_are_one_line(tmp_path, capsys, layout):
    path = tmp_path / "run"
    if layout == "empty_run":  # the search wrote its config but no trial yet
        path.mkdir()
        (path / "search.yaml").write_text(yaml.safe_dump({"space_name": "quick", "objectives": OBJECTIVES}))
    elif layout == "not_a_run":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    code = main(["report", str(path), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("repnas: error: ")
    assert {"empty_run": "no trials yet", "no_such_dir": "no such run directory",
            "not_a_run": "not a run directory"}[layout] in err


def test_static_images_with_kaleido(tmp_path, run_dir):
    pytest.importorskip("kaleido")
    _chromium()
    from repnas.analysis import write_images

    paths = write_images([run_dir], tmp_path / "img", formats=("png",))
    assert sorted(p.name for p in paths) == ["accuracy-flops.png", "accuracy-params.png", "hypervolume.png",
                                             "learning-curves.png", "parallel-0.png", "three-objectives.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 10_000 for p in paths)


# ----------------------------------------------------------------------------- real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-unsafe-swiftshader", "--enable-logging=stderr", "--v=0"]
#: console lines the browser's own software GL writes about its speed (not the page's scripts): the
#: parallel-coordinates canvas reads pixels back, which SwiftShader reports as a "GPU stall"
_GL_PERFORMANCE = re.compile(r'"\[\.WebGL-0x[0-9a-f]+\]GL Driver Message \(OpenGL, Performance, ')


def _chromium() -> str:
    for name in (os.environ.get("REPNAS_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium found (apt-get install chromium)")


def render(page: Path, tmp: Path, console: list[str] | None = None) -> tuple[str, list[str]]:
    """Load ``page`` in headless Chromium; return the DOM after scripts ran and the URLs the page
    itself requested over the network (from Chromium's net log: requests made for a file:// page
    carry a ``file://`` network isolation key; the browser's own update/account pings do not).
    ``console`` receives every console message of the page (log, warning, error, uncaught
    exception), except the software GL's performance notes."""
    netlog = tmp / "netlog.json"
    shutil.rmtree(tmp / "profile", ignore_errors=True)
    proc = subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--log-net-log={netlog}",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = [e["params"]["url"] for e in log["events"] if e["type"] == start_job
                 and "file://" in e.get("params", {}).get("network_isolation_key", "")]
    if console is not None:
        console.extend(line.split(":CONSOLE", 1)[1] for line in proc.stderr.splitlines()
                       if ":CONSOLE" in line and not _GL_PERFORMANCE.search(line))
    return proc.stdout, requested


def figure_dom(dom: str) -> dict[str, str]:
    """The rendered DOM of each report figure (scripts removed: they are not rendered output)."""
    dom = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S | re.I)
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div class="figure" data-figure="([^"]+)"', dom)]
    return {name: dom[s:(starts[i + 1][0] if i + 1 < len(starts) else len(dom))]
            for i, (s, name) in enumerate(starts)}


def test_network_and_console_detectors_catch_a_bad_page(tmp_path):
    """The checks below would fail for a page that loads plotly from a CDN or writes to the console:
    prove it on one."""
    page = tmp_path / "cdn.html"
    page.write_text('<html><head><script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script></head>'
                    '<body><div id="x"></div><script>console.warn("Invalid color specifier: number 0.98");'
                    "Plotly.newPlot('x', [])</script></body></html>")
    console: list[str] = []
    dom, requested = render(page, tmp_path, console)
    assert requested == ["https://cdn.plot.ly/plotly-2.35.2.min.js"]
    assert "main-svg" not in dom
    assert any("Invalid color specifier" in line for line in console)
    assert any("Plotly is not defined" in line for line in console)  # uncaught errors too


def _quick_runs() -> list[Path]:
    """The real quick search's run directory, where one has been made in this checkout."""
    real = REPO_ROOT / "runs" / "quick"
    return [real] if (real / "trials.parquet").exists() else []


FAR_BASELINE = "vgg16,9000000,150000000,0.99,0.985\n"  # 100x the trials' parameters


def test_report_renders_every_figure_offline_in_chromium(tmp_path, run_dir, other_run):
    baselines = tmp_path / "baselines.csv"
    baselines.write_text(BASELINES_CSV + FAR_BASELINE)
    sources = [run_dir, other_run, *_quick_runs()]
    out = write_report(sources, tmp_path / "report.html", baselines=baselines)
    console: list[str] = []
    dom, requested = render(out, tmp_path, console)
    assert requested == []
    assert console == []  # no error, warning or message of any kind
    figures = figure_dom(dom)
    assert len(figures) == 5 + 2 + len(sources)  # + the two zoomed views (vgg16 is far away)
    measured = _measured(*sources)
    for name, html in figures.items():
        assert 'class="main-svg"' in html, f"{name} did not render"
        if name.endswith("-zoom"):  # drawn like the full view; points off its range may be culled
            assert len(re.findall(r'class="point\b', html)) >= measured // 2, name
        elif name.startswith("fig-accuracy"):
            n_base = 4 if name.endswith("params") else 3  # wrn16_4 has no FLOPs in the file
            drawn = _drawn(name.rsplit("-", 1)[1], *sources)
            assert len(re.findall(r'class="point\b', html)) == drawn + n_base, name
        elif name == "fig-three-objectives":
            assert len(re.findall(r'class="point\b', html)) >= measured, name
        elif name == "fig-learning-curves":  # a line per trained trial, none without one
            curves = sum(len(learning_curves(load_run(s)).groupby("trial")) for s in sources)
            assert len(re.findall(r'class="trace scatter', html)) == curves > 0, name  # legend lines aside
        elif name == "fig-hypervolume":
            trials = sum(len(load_run(s).trials) for s in sources)  # one point per trial and run
            assert len(re.findall(r'class="point\b', html)) == trials and 'class="js-line"' in html, name
        else:  # parallel coordinates: SVG axes with ticks, lines on a canvas
            assert 'class="parcoords"' in html and "<canvas" in html, name
            assert html.count('class="tick"') >= 10, name


def test_stopped_early_trials_have_their_own_marker_and_name():
    """A stopped-early trial drawn at its last accuracy is not 'infeasible' (it was drawn as a cross)."""
    from repnas.analysis import Run
    from repnas.analysis._load import normalize_trials
    from repnas.analysis._report import _accuracy_vs_cost, _combined

    rows = [{"trial": 0, "status": "complete", "val_accuracy": 0.9, "params": 1000, "flops": 5000},
            {"trial": 1, "status": "pruned", "val_accuracy": 0.5, "params": 2000, "flops": 9000},
            {"trial": 2, "status": "infeasible", "val_accuracy": 0.8, "params": 9000, "flops": 9500},
            {"trial": 3, "status": "complete", "val_accuracy": 0.7, "params": 3000, "flops": 8000}]
    run = Run(name="r", trials=normalize_trials(rows), objectives=[
        {"name": "val_accuracy", "direction": "maximize"}, {"name": "params", "direction": "minimize"}])
    fig = _accuracy_vs_cost(_combined([run], ["r"]), "params", None, multi=False)
    markers = {t.name: (t.marker.symbol, list(t.x)) for t in fig.data if "markers" in (t.mode or "markers")}
    assert markers["stopped early"] == ("triangle-down-open", [2000.0])
    assert markers["infeasible"] == ("x-thin-open", [9000.0])
    assert markers["on front"][1] == [1000.0] and markers["dominated"][1] == [3000.0]
