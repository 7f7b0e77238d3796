"""Plotly figures: accuracy against trainable parameters (log x), one point per model.

``plotly.express`` draws everything; error bars are the std over seeds. HTML files are
self-contained by default (``include_plotlyjs=True``: they open offline, ~4.7 MB each); pass
``plotlyjs="cdn"`` for a few-kB file that loads plotly.js from the CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from repnas.experiments._tables import HANDMADE_COLUMNS

__all__ = ["accuracy_vs_params", "front_vs_handmade", "write_figure"]


def accuracy_vs_params(summary: pd.DataFrame, title: str) -> Any:
    """Test accuracy (mean ± std over seeds) against trainable params, coloured by group."""
    import plotly.express as px

    data = summary.assign(test_acc=100 * summary["test_acc_mean"], std=100 * summary["test_acc_std"].fillna(0))
    fig = px.scatter(
        data, x="params", y="test_acc", error_y="std", color="group", text="model", log_x=True,
        hover_data={"physical_params": ":,", "flops": ":,", "seeds": True, "wall_s_mean": ":.1f"},
        labels={"params": "trainable parameters (log)", "test_acc": "test accuracy (%)"}, title=title,
    )
    fig.update_traces(textposition="top center")
    return fig


def front_vs_handmade(trials: pd.DataFrame, front: pd.DataFrame, handmade: pd.DataFrame, accuracy: str,
                      title: str) -> Any:
    """All search trials (faint), the search's front (a step line) and the hand-made models."""
    import plotly.express as px
    import plotly.graph_objects as go

    acc = f"{accuracy}_pct"
    mean_col, std_col = HANDMADE_COLUMNS[accuracy]
    points = pd.concat([
        trials.assign(kind="search trial", label=trials["trial"].astype(str), std=0.0),
        front.assign(kind="search front", label=front["trial"].astype(str), std=0.0),
        handmade.assign(kind="hand-made: " + handmade["group"].astype(str), label=handmade["model"],
                        **{accuracy: handmade[mean_col]}, std=handmade[std_col].fillna(0)),
    ], ignore_index=True)
    points[acc] = 100 * points[accuracy]
    points["std"] = 100 * points["std"]
    fig = px.scatter(points, x="params", y=acc, color="kind", error_y="std", hover_name="label", log_x=True,
                     labels={"params": "trainable parameters (log)", acc: f"{accuracy.replace('_', ' ')} (%)"},
                     title=title)
    ordered = front.sort_values("params")
    fig.add_trace(go.Scatter(x=ordered["params"], y=100 * ordered[accuracy], mode="lines",
                             line={"shape": "hv", "dash": "dot"}, name="front (step)"))
    return fig


def write_figure(fig: Any, path: str | Path, plotlyjs: str = "inline") -> Path:
    """Write ``fig`` as HTML (``inline``: self-contained; ``cdn``: small, needs the network). The plot's
    element id is named after the file rather than random, so that rebuilding a committed figure from the
    same runs changes no byte of it."""
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True if plotlyjs == "inline" else "cdn", full_html=True,
                   div_id=f"repnas-{path.parent.name}-{path.stem}")
    return path
