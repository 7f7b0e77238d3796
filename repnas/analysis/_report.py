"""One self-contained HTML page that answers "which repetition schemes are worth it?".

Figures are plotly.express/graph_objects; the page embeds plotly.js once (``include_plotlyjs=True``
on the first figure, ``False`` on the rest), so it opens offline, from a file or an email
attachment, with no request to a CDN (``plotlyjs="cdn"`` loads it from plotly's CDN instead: a
small page that needs the network). Every figure is SVG-rendered except the parallel-coordinates
lines (plotly draws those with WebGL). plotly is imported here, lazily, so ``import repnas`` never
needs it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from repnas._io import atomic_path, atomic_write_text, remove_dead_temporaries
from repnas.analysis._curves import learning_curves
from repnas.analysis._hypervolume import hypervolume_history, ideal_point, reference_point
from repnas.analysis._load import Run, knob_columns, load_run
from repnas.analysis._model_reference import model_reference, reference_lines, reference_note
from repnas.analysis._pareto import feasible_mask, pareto_mask
from repnas.analysis._tables import front_table, knob_effects
from repnas.errors import UserError

ACCURACY = "val_accuracy"
#: axis titles with units; repnas's FLOPs are 2 x multiply-adds (``torch.utils.flop_counter``), while
#: ptflops and fvcore report multiply-adds under the name "FLOPs": half of these numbers.
AXIS_TITLES = {
    "params": "trainable parameters (count, log scale)",
    "flops": "FLOPs per image (2 × multiply-adds, log scale)",
    ACCURACY: "validation accuracy (fraction correct)",
}
FLOPS_NOTE = ("FLOPs are forward-pass floating-point operations per image, counted as 2 × multiply-adds "
              "(torch.utils.flop_counter); tools such as ptflops and fvcore report multiply-adds as "
              "\"FLOPs\", half of these numbers.")
PLOTLYJS = ("inline", "cdn")
#: a baseline this many times beyond the trials' cost range gets a zoomed copy of the figure
_ZOOM_FACTOR = 3.0
_PLOT_CONFIG = {"displaylogo": False, "responsive": True,
                "toImageButtonOptions": {"format": "svg", "scale": 1}}
#: a stopped-early trial is drawn at its last epoch's accuracy: a kind of its own, not a cross, which
#: says "over budget or infeasible" (a bad candidate), while early stopping only cut a slow learner short
_KIND_SYMBOLS = {"on front": "diamond", "dominated": "circle", "stopped early": "triangle-down-open",
                 "infeasible": "x-thin-open"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; padding: 0 1rem; max-width: 1200px;
       color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.note { color: #555; font-size: 0.9rem; } .warn { color: #a33; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
code { font-size: 0.8rem; } td.cmd { text-align: left; } td.cmd code { white-space: nowrap; }
td.knobs { text-align: left; min-width: 10rem; max-width: 16rem; } .figure { margin: 1rem 0; }
details { margin: 0.5rem 0; } .scroll { overflow-x: auto; }
"""


# ----------------------------------------------------------------------------- data preparation


def _unique_names(runs: Sequence[Run]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r.path) if r.path is not None else f"{r.name}#{i}" for i, r in enumerate(runs)]


def _combined(runs: Sequence[Run], names: Sequence[str]) -> pd.DataFrame:
    """All runs' trials in one table with ``run``, ``feasible`` and front-membership columns."""
    parts = []
    for run, name in zip(runs, names, strict=True):
        t = run.trials.copy()
        t.insert(0, "run", name)
        t["feasible"] = feasible_mask(t, run.objectives) if len(t) else np.zeros(0, bool)
        t["front"] = pareto_mask(t, run.objectives) if len(t) else np.zeros(0, bool)
        for x in ("params", "flops"):
            two = [{"name": ACCURACY, "direction": "maximize"}, {"name": x, "direction": "minimize"}]
            t[f"front_{x}"] = pareto_mask(t, two) if len(t) else np.zeros(0, bool)
        parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _hover_columns(table: pd.DataFrame) -> dict[str, Any]:
    hover: dict[str, Any] = {"trial": True, "status": True, ACCURACY: ":.4f", "test_accuracy": ":.4f",
                             "params": ":,.0f", "flops": ":,.0f"}
    for knob in knob_columns(table):
        hover[knob] = True
    return hover


def _step_front(points: pd.DataFrame, x: str) -> pd.DataFrame:
    """Front points sorted by cost, for a staircase line (accuracy holds until the next point)."""
    return points.sort_values([x, ACCURACY], ascending=[True, True], kind="stable")


# ----------------------------------------------------------------------------- figures


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """One distinct colour per run (plotly's qualitative palettes, in order): the same run has the
    same colour in every figure, and never a colour that means a kind of trial."""
    from plotly.colors import qualitative

    palette = [c for c in (*qualitative.D3, *qualitative.Dark24) if c.upper() not in ("#D62728", "#7F7F7F")]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _identical_points_once(data: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per (run, kind, cost, accuracy): identical points are drawn once, with ``count`` and
    the ``trials`` they stand for (duplicate configs and reused results land exactly on each other)."""
    keys = ["run", "kind", x, ACCURACY]
    grouped = data.groupby(keys, sort=False, dropna=False)["trial"]
    data = data.assign(count=grouped.transform("size"),
                       trials=grouped.transform(lambda t: ", ".join(str(int(v)) for v in t)))
    data = data.drop_duplicates(keys).copy()
    data["label"] = np.where(data["count"] > 1, "×" + data["count"].astype(str), "")
    return data


def _accuracy_vs_cost(table: pd.DataFrame, x: str, baselines: pd.DataFrame | None, multi: bool,
                      colours: dict[str, str] | None = None, references: Sequence[dict[str, Any]] = ()):
    import plotly.express as px
    import plotly.graph_objects as go

    data = table[np.isfinite(table[x].astype(float)) & np.isfinite(table[ACCURACY].astype(float))].copy()
    if data.empty:
        return None
    data[x] = data[x].astype(float)
    data["kind"] = np.where(data[f"front_{x}"], "on front",
                            np.where(data["feasible"], "dominated",
                                     np.where(data["status"].eq("pruned"), "stopped early", "infeasible")))
    data = _identical_points_once(data, x)
    most = int(data["count"].max())
    fig = px.scatter(
        data, x=x, y=ACCURACY, color="run" if multi else "kind", symbol="kind",
        symbol_map=_KIND_SYMBOLS, hover_data={**_hover_columns(data), "count": True, "trials": True, "label": False},
        log_x=True, size="count", size_max=9 * math.sqrt(most), text="label",
        category_orders={"kind": list(_KIND_SYMBOLS), "run": list(colours or [])},
        color_discrete_map=colours if multi else {"on front": "#d62728", "dominated": "#1f77b4",
                                                  "stopped early": "#8c6d31", "infeasible": "#999999"},
        labels={x: AXIS_TITLES[x], ACCURACY: AXIS_TITLES[ACCURACY], "count": "identical trials"},
    )
    fig.update_traces(marker={"line": {"width": 0.5, "color": "#333"}, "sizemin": 4}, textposition="middle right",
                      textfont={"size": 10})
    for run, points in data[data[f"front_{x}"]].groupby("run", sort=False):
        front = _step_front(points, x)
        colour = (colours or {}).get(run, "#d62728") if multi else "#d62728"
        fig.add_trace(go.Scatter(x=front[x], y=front[ACCURACY], mode="lines", line_shape="hv",
                                 line={"width": 1.5, "dash": "dot", "color": colour}, hoverinfo="skip",
                                 name=f"front ({run})" if multi else "front", legendgroup="front"))
    _add_baselines(fig, baselines, x)
    reference_lines(fig, references, x)  # a model space's plain model (_model_reference)
    fig.update_layout(title=f"Validation accuracy vs {x} (front: best accuracy for its {x})",
                      legend_title_text="", height=520)
    return fig


def _zoomed(fig, table: pd.DataFrame, baselines: pd.DataFrame | None, x: str):
    """A copy of an accuracy-vs-cost figure zoomed on the trials, when a baseline lies so far away
    (more than ``_ZOOM_FACTOR`` times beyond the trials' cost range, or below their accuracies) that
    the trials would collapse into one column; None when every baseline is near."""
    import plotly.graph_objects as go

    if fig is None or baselines is None or baselines.empty or x not in baselines:
        return None
    data = table[np.isfinite(table[x].astype(float)) & np.isfinite(table[ACCURACY].astype(float))]
    cost = data[x].astype(float)
    acc = data[ACCURACY].astype(float)
    low, high = float(cost.min()), float(cost.max())
    base = baselines[baselines[x].notna()]
    base_acc = base[ACCURACY].where(base[ACCURACY].notna(), base["test_accuracy"]).astype(float)
    spread = max(float(acc.max() - acc.min()), 0.01)
    far = (base[x].astype(float) > high * _ZOOM_FACTOR) | (base[x].astype(float) < low / _ZOOM_FACTOR) | \
        (base_acc < float(acc.min()) - 3 * spread)
    if not far.any():
        return None
    pad = max(0.05, 0.08 * (math.log10(high) - math.log10(low)))
    zoom = go.Figure(fig)
    zoom.update_xaxes(range=[math.log10(low) - pad, math.log10(high) + pad])
    zoom.update_yaxes(range=[float(acc.min()) - 0.1 * spread, float(acc.max()) + 0.1 * spread])
    names = ", ".join(str(n) for n in base.loc[far, "name"])
    zoom.update_layout(title=f"Zoomed on the trials: validation accuracy vs {x} "
                             f"(baselines off this view: {names})")
    return zoom


def _add_baselines(fig, baselines: pd.DataFrame | None, x: str) -> None:
    """The baselines as stars joined in order of cost: the plain family's scaling curve (e.g. vgg4..
    vgg11 trained with the search's recipe), to read the front against (a budget range searched)."""
    import plotly.graph_objects as go

    if baselines is None or baselines.empty:
        return
    acc = baselines[ACCURACY].where(baselines[ACCURACY].notna(), baselines["test_accuracy"])
    ok = baselines[x].notna() & acc.notna()
    if not ok.any():
        return
    order = baselines[ok][x].astype(float).sort_values(kind="stable").index
    b, acc = baselines.loc[order], acc.loc[order]
    fig.add_trace(go.Scatter(
        x=b[x], y=acc, mode="lines+markers+text" if len(b) > 1 else "markers+text", text=b["name"],
        textposition="top center", line={"color": "black", "width": 1},
        marker={"symbol": "star", "size": 14, "color": "black"}, name="baselines",
        customdata=np.stack([b["test_accuracy"].to_numpy(float)], axis=1),
        hovertemplate="%{text}<br>" + x + "=%{x:,.0f}<br>accuracy=%{y:.4f}"
                      "<br>test_accuracy=%{customdata[0]:.4f}<extra>baseline</extra>",
    ))


def _three_objective_view(table: pd.DataFrame, multi: bool):
    """params vs flops coloured by accuracy: a 3-objective picture that stays readable on paper."""
    import plotly.express as px
    import plotly.graph_objects as go

    cols = ["params", "flops", ACCURACY]
    data = table[np.isfinite(table[cols].astype(float)).all(axis=1)].copy()
    if data.empty:
        return None
    fig = px.scatter(
        data, x="params", y="flops", color=ACCURACY, symbol="run" if multi else None,
        hover_data={"run": multi, **_hover_columns(data)}, log_x=True, log_y=True,
        color_continuous_scale="Viridis",
        labels={ACCURACY: "val acc", "params": AXIS_TITLES["params"], "flops": AXIS_TITLES["flops"]},
    )
    # a legend entry drawn from a trace whose colours are numbers (accuracy) is an invalid colour to
    # plotly.js (a console warning per entry): hide those entries, show one grey symbol per run instead
    fig.update_traces(marker={"size": 9}, showlegend=False)
    if multi:
        for trace in list(fig.data):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=trace.name,
                                     marker={"symbol": trace.marker.symbol, "size": 9, "color": "#555"}))
    front = data[data["front"]]
    if not front.empty:
        fig.add_trace(go.Scatter(
            x=front["params"], y=front["flops"], mode="markers", name="Pareto front (run objectives)",
            marker={"symbol": "circle-open", "size": 17, "color": "#d62728", "line": {"width": 2}},
            hoverinfo="skip"))
    fig.update_layout(title="Three objectives: params vs FLOPs, colour = validation accuracy "
                            "(rings: Pareto front)", height=520,
                      legend={"orientation": "h", "y": -0.15})
    return fig


def _hypervolume_figure(runs: Sequence[Run], names: Sequence[str], colours: dict[str, str] | None = None):
    """Normalised hypervolume vs trial number; runs with the same objectives share ref and ideal."""
    import plotly.express as px

    histories, captions = [], []
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        key = tuple((o["name"], o["direction"]) for o in run.objectives)
        groups.setdefault(key, []).append(i)
    for key, members in groups.items():
        objectives = [{"name": n, "direction": d} for n, d in key]
        tables = [runs[i].trials for i in members]
        ref = reference_point(tables, objectives)
        ideal = ideal_point(tables, objectives)
        for i in members:
            if runs[i].trials.empty:
                continue
            h = hypervolume_history(runs[i].trials, objectives, ref, ideal=ideal)
            h.insert(0, "run", names[i])
            histories.append(h)
        captions.append(", ".join(f"{n} ({'max' if d == 'maximize' else 'min'}) ref {_fmt(r)}"
                                  for (n, d), r in zip(key, ref, strict=True)))
    data = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    if data.empty or not data["front_size"].gt(0).any():  # nothing feasible yet: a flat zero says nothing
        return None, ""
    fig = px.line(data, x="trial", y="hypervolume", color="run", markers=True,
                  hover_data={"front_size": True}, line_shape="hv", color_discrete_map=colours,
                  labels={"trial": "trial number", "hypervolume": "hypervolume (fraction of the box)"})
    fig.update_layout(title="Hypervolume of the front found so far (fraction of the box between the "
                            "ideal and reference points)", height=420, yaxis_rangemode="tozero")
    return fig, "; ".join(captions)


def _learning_curves_figure(runs: Sequence[Run], names: Sequence[str], table: pd.DataFrame):
    """Validation accuracy against epoch, one line per trial that trained; the trials on their
    run's front (over all its objectives) drawn thick and on top, pruned trials dotted."""
    import plotly.express as px

    parts = []
    for run, name in zip(runs, names, strict=True):
        curves = learning_curves(run)
        if curves.empty:
            continue
        rows = table[table["run"] == name].set_index("trial")
        curves = curves[curves["trial"].isin(rows.index) & np.isfinite(curves[ACCURACY])].copy()
        status = rows.loc[curves["trial"], "status"].to_numpy()
        front = rows.loc[curves["trial"], "front"].to_numpy(bool)
        curves["kind"] = np.where(front, "on front", np.where(status == "pruned", "stopped early", "other"))
        curves.insert(0, "run", name)
        parts.append(curves)
    data = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if data.empty:
        return None
    data["curve"] = data["run"] + " #" + data["trial"].astype(str)
    data = data.sort_values(["run", "trial", "epoch"], kind="stable")
    multi = len(runs) > 1
    fig = px.line(data, x="epoch", y=ACCURACY, color="kind", line_group="curve",
                  line_dash="run" if multi else None, color_discrete_map=_CURVE_COLORS,
                  category_orders={"kind": list(_CURVE_ORDER)}, markers=False,
                  hover_data={"run": multi, "trial": True, "val_loss": ":.4f", "kind": False},
                  labels={ACCURACY: "validation accuracy"})
    for trace in fig.data:
        kind = trace.legendgroup.split(",")[0]
        trace.line.width = 3 if kind == "on front" else 1.2
        if kind == "stopped early":  # dotted, with markers: a curve stopped at epoch 1 is one point
            trace.line.dash = "dot"
            trace.mode = "lines+markers"
            trace.marker.size = 5
    fig.update_layout(title="Learning curves: validation accuracy after each epoch (thick: the front)",
                      legend_title_text="", height=460, xaxis={"dtick": 1})
    return fig


_CURVE_ORDER = ("stopped early", "other", "on front")  # traces are drawn in this order: the front on top
_CURVE_COLORS = {"on front": "#d62728", "other": "#9bb7d4", "stopped early": "#bbbbbb"}


def _parallel_coordinates(run: Run):
    """Knobs (categorical ones as ticked levels) and accuracy, one line per trial, coloured by accuracy."""
    import plotly.graph_objects as go

    t = run.trials[np.isfinite(run.trials[ACCURACY].astype(float))]
    knobs = knob_columns(t)
    if t.empty or not knobs:
        return None
    dims = []
    for knob in knobs:
        values = t[knob]
        numeric = pd.to_numeric(values, errors="coerce")
        label = knob.removeprefix("knob.")
        if numeric.notna().all() and not values.map(lambda v: isinstance(v, (bool, np.bool_))).any():
            dim = {"label": label, "values": numeric.to_numpy(float)}
            levels = np.unique(numeric)
            if len(levels) <= 12 and np.all(levels == np.round(levels)):  # small integer knob: exact ticks
                dim.update(tickvals=levels.tolist(), ticktext=[f"{v:g}" for v in levels])
            dims.append(dim)
        else:
            levels = sorted(values.astype(str).unique())
            codes = values.astype(str).map({v: i for i, v in enumerate(levels)})
            dims.append({"label": label, "values": codes.to_numpy(float),
                         "tickvals": list(range(len(levels))), "ticktext": levels})
    for col in ("params", ACCURACY):
        dims.append({"label": col, "values": t[col].astype(float).to_numpy()})
    fig = go.Figure(go.Parcoords(
        line={"color": t[ACCURACY].astype(float), "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": {"text": "val acc"}}},
        dimensions=dims,
    ))
    fig.update_layout(title=f"Knobs of {run.name} coloured by validation accuracy "
                            "(drag on an axis to filter)", height=460, margin={"l": 80, "r": 80})
    return fig


# ----------------------------------------------------------------------------- HTML pieces


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        if abs(value) >= 1000 or float(value).is_integer():
            return f"{value:,.0f}"
        return f"{value:.4f}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _html_table(df: pd.DataFrame, code_columns: Sequence[str] = ()) -> str:
    if df.empty:
        return '<p class="note">(none)</p>'
    text_columns = {c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])}
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">{html.escape(str(c))}</th>'
                   for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            text = html.escape(_fmt(row[c]))
            cls = "knobs" if c == "knobs" else "text" if c in text_columns else ""
            if c in code_columns and text:
                text, cls = "<br>".join(f"<code>{line}</code>" for line in text.split("\n")), "cmd"
            cells.append(f'<td class="{cls}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _compact_front(front: pd.DataFrame) -> pd.DataFrame:
    """The front table for a page: knobs in one wrapped ``knobs`` cell, then the train command (the
    export command is the same for every row, so the page shows it once above the table)."""
    knobs = knob_columns(front)
    shown = front.drop(columns=[*knobs, "train_command", "export_command", "train_seconds"], errors="ignore")
    names = [k.removeprefix("knob.") for k in knobs]
    shown["knobs"] = [" ".join(f"{k}={_fmt(v)}" for k, v in zip(names, row, strict=True))
                      for row in front[knobs].itertuples(index=False)]
    shown["reproduce"] = front["train_command"].astype(str).tolist()
    return shown


def _run_summary(run: Run, name: str) -> dict[str, Any]:
    t = run.trials
    counts = t["status"].value_counts() if len(t) else pd.Series(dtype=int)
    feasible = feasible_mask(t, run.objectives) if len(t) else np.zeros(0, bool)
    front = pareto_mask(t, run.objectives) if len(t) else np.zeros(0, bool)
    cfg = run.config
    space, dataset = cfg.get("space_name") or cfg.get("space", ""), cfg.get("dataset", "")
    return {
        "run": name,
        "space": space.get("name", "custom") if isinstance(space, dict) else str(space),
        "dataset": dataset.get("name", "") if isinstance(dataset, dict) else str(dataset),
        "budget": cfg.get("budget") or "none",
        "trials": len(t),
        "complete": int(counts.get("complete", 0)),
        "infeasible": int((t["status"].eq("infeasible") | (t["status"].eq("complete") & ~feasible)).sum())
        if len(t) else 0,
        "failed": int(counts.get("failed", 0)),
        "pruned": int(counts.get("pruned", 0)),
        "on front": int(front.sum()),
        "best val acc": float(t.loc[feasible, ACCURACY].max()) if feasible.any() else math.nan,
        "objectives": ", ".join(f"{o['name']} ({o['direction'][:3]})" for o in run.objectives),
    }


def _figure_html(fig, div_id: str, first: bool, plotlyjs: str = "inline") -> str:
    include = ("cdn" if plotlyjs == "cdn" else True) if first else False
    body = fig.to_html(full_html=False, include_plotlyjs=include, div_id=div_id, config=_PLOT_CONFIG)
    return f'<div class="figure" data-figure="{div_id}">{body}</div>'


# ----------------------------------------------------------------------------- entry points


def report_figures(runs: Sequence[Run], baselines: pd.DataFrame | None = None) -> list[tuple[str, Any, str]]:
    """The report's figures as ``(div id, plotly figure or None, caption)``; None where no data."""
    names = _unique_names(runs)
    colours = run_colours(names)
    table = _combined(runs, names)
    multi = len(runs) > 1
    figures: list[tuple[str, Any, str]] = []
    references = [ref for ref in (model_reference(r) for r in runs) if ref is not None]
    for x in ("params", "flops"):
        fig = _accuracy_vs_cost(table, x, baselines, multi, colours, references)
        caption = (f"Each point is a trial; hover for its knobs. Diamonds: no other trial is both more "
                   f"accurate and cheaper in {x}. Crosses: over budget or marked infeasible. Open "
                   "triangles: stopped early, at their last epoch's accuracy. Identical "
                   "points are drawn once, larger, labelled ×N." + (" " + FLOPS_NOTE if x == "flops" else ""))
        figures.append((f"fig-accuracy-{x}", fig, caption))
        zoom = _zoomed(fig, table, baselines, x)
        if zoom is not None:
            figures.append((f"fig-accuracy-{x}-zoom", zoom, "The same figure zoomed on the trials, so that "
                            "they stay readable beside far-away baselines."))
    figures.append(("fig-three-objectives", _three_objective_view(table, multi),
                    "Cheaper is down-left; rings mark the front over all of the run's objectives."))
    hv_fig, hv_caption = _hypervolume_figure(runs, names, colours)
    figures.append(("fig-hypervolume", hv_fig, "Flat tail: the search stopped finding better trade-offs. "
                                               f"Reference point: {hv_caption}."))
    figures.append(("fig-learning-curves", _learning_curves_figure(runs, names, table),
                    "One line per trained trial (from trials/N/metrics.json); hover for its number and "
                    "loss. Flat early, steep late: a rule that stops at the first epochs would lose it."))
    for i, run in enumerate(runs):
        figures.append((f"fig-parallel-{i}", _parallel_coordinates(run),
                        "Follow the yellow lines to see which knob settings give high accuracy."))
    return figures


def _check_runs(runs: Sequence[Run]) -> None:
    if not runs:
        raise UserError("no runs given")
    if all(r.trials.empty for r in runs):
        where = ", ".join(str(r.path or r.name) for r in runs)
        raise UserError(f"{where}: no trials yet (has the search started?)")


def build_report(runs: Sequence[Run], baselines: pd.DataFrame | None = None, title: str | None = None,
                 plotlyjs: str = "inline") -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    if plotlyjs not in PLOTLYJS:
        raise UserError(f"plotlyjs must be one of {', '.join(PLOTLYJS)}, not {plotlyjs!r}")
    _check_runs(runs)
    names = _unique_names(runs)
    parts = [f"<h1>{html.escape(title or 'repnas report: ' + ', '.join(names))}</h1>",
             f'<p class="note">Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. '
             "Feasible = complete, all objectives measured, parameters within budget. "
             f"{html.escape(FLOPS_NOTE)}</p>",
             _html_table(pd.DataFrame([_run_summary(r, n) for r, n in zip(runs, names, strict=True)]))]
    for run in runs:  # a search over a user's model: its plain model is the reference
        ref = model_reference(run)
        if ref is not None:
            parts.append(f'<p class="note" data-reference="plain-model">{html.escape(reference_note(run, ref))}</p>')
    first = True
    for div_id, fig, caption in report_figures(runs, baselines):
        if fig is None:
            what = div_id.removeprefix("fig-")
            parts.append(f'<p class="note warn" data-missing="{div_id}">No data for {what}: '
                         "no complete trial has the needed metrics.</p>")
            continue
        parts.append(_figure_html(fig, div_id, first, plotlyjs))
        parts.append(f'<p class="note">{html.escape(caption)}</p>')
        first = False

    for run, name in zip(runs, names, strict=True):
        parts.append(f"<h2>Pareto front of {html.escape(name)}</h2>")
        if run.trials.empty:
            parts.append('<p class="note warn">No trials yet.</p>')
            continue
        front = front_table(run)
        export = front["export_command"].iloc[0] if len(front) and front["export_command"].iloc[0] else ""
        parts.append('<p class="note">Best first objective first. Retrain a row with its command; '
                     + (f"export the trained models of the whole front (<code>trial_N.pt</code> per "
                        f"configuration) with <code>{html.escape(export)}</code>." if export else "")
                     + "</p>")
        parts.append(_html_table(_compact_front(front), code_columns=("reproduce",)))
        effects = knob_effects(run)
        parts.append(f"<details><summary>Per-knob effects ({len(effects)} rows)</summary>"
                     f"{_html_table(effects)}</details>")
        bad = run.trials[~feasible_mask(run.trials, run.objectives)]
        if not bad.empty:
            shown = bad[["trial", "status", "params", "budget", "error"]].copy()
            shown["error"] = shown["error"].astype(str).str.split("\n").str[0].str.slice(0, 200)
            parts.append(f"<details><summary>Trials not on any front: {len(bad)} failed, pruned or "
                         f"infeasible</summary>{_html_table(shown)}</details>")
    if baselines is not None and not baselines.empty:
        parts.append("<h2>Baselines</h2>" + _html_table(baselines))

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title or 'repnas report')}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def write_images(sources: Sequence[str | Path | Run], out_dir: str | Path,
                 baselines: str | Path | pd.DataFrame | None = None,
                 formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Each report figure as static files (``<out_dir>/<figure>.<fmt>``), rendered by kaleido.

    kaleido drives a Chromium; it finds the system one (Debian ``chromium``) on ``PATH`` or via
    ``BROWSER_PATH``, so nothing is downloaded. Without kaleido this raises a one-line UserError:
    the HTML report's camera button saves the same images from a browser.
    """
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise UserError("static images need kaleido (pip install kaleido) and a Chromium (apt-get "
                        "install chromium); the HTML report's camera button saves them too") from None
    runs, baselines = load_inputs(sources, baselines)
    _check_runs(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for div_id, fig, _ in report_figures(runs, baselines):
        if fig is None:
            continue
        for fmt in formats:
            path = out / f"{div_id.removeprefix('fig-')}.{fmt}"
            try:
                with atomic_path(path) as tmp:  # a killed report leaves no half image
                    fig.write_image(tmp, format=fmt, width=1100, height=fig.layout.height or 500)
            except (RuntimeError, ValueError, OSError) as exc:
                raise UserError(f"could not render {path.name}: {str(exc).splitlines()[0]}") from exc
            written.append(path)
    return written


def load_inputs(sources: Sequence[str | Path | Run], baselines: str | Path | pd.DataFrame | None = None):
    """Runs and baselines table from paths (or already-loaded objects), checked."""
    from repnas.analysis._baselines import load_baselines

    runs = [s if isinstance(s, Run) else load_run(s) for s in sources]
    if baselines is not None and not isinstance(baselines, pd.DataFrame):
        baselines = load_baselines(baselines)
    return runs, baselines


def write_report(sources: Sequence[str | Path | Run], out: str | Path = "report.html",
                 baselines: str | Path | pd.DataFrame | None = None, title: str | None = None,
                 plotlyjs: str = "inline") -> Path:
    """Write one HTML report for one or more runs (run directories, Tune experiments, Optuna
    storages, or loaded :class:`Run` objects); returns the path written. ``plotlyjs="inline"``
    (default) embeds plotly.js (about 4.7 MB, opens offline); ``"cdn"`` loads it from cdn.plot.ly."""
    runs, baselines = load_inputs(sources, baselines)
    page = build_report(runs, baselines, title, plotlyjs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out.parent, suffix=".html")  # killed reports' temporaries, whatever their --out
    atomic_write_text(out, page)
    return out
