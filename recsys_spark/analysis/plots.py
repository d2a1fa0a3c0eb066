"""Figures for the notebooks, from the small pandas frames of ``clickstream`` and ``model_results``.

Each function returns a ``matplotlib.figure.Figure`` (no global pyplot state), which a notebook
shows as its cell's output and a script can ``savefig``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def funnel(funnel_frame: pd.DataFrame) -> Figure:
    """Args: clickstream.event_funnel(...).toPandas(). Bars of sessions per stage, labelled with rates."""
    fig = Figure(figsize=(7, 3.5))
    axis = fig.subplots()
    bars = axis.barh(funnel_frame["stage"][::-1], funnel_frame["sessions"][::-1], color="tab:blue")
    for bar, rate, step in zip(bars, funnel_frame["rate"][::-1], funnel_frame["step_rate"][::-1]):
        axis.annotate(f"{rate:.1%} of sessions, {step:.1%} of the stage before",
                      (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                      textcoords="offset points", va="center", fontsize=8)
    axis.set(xlabel="sessions", title="Session funnel")
    axis.set_xlim(0, float(funnel_frame["sessions"].max()) * 1.9 if len(funnel_frame) else 1)
    fig.tight_layout()
    return fig


def session_lengths(per_session: pd.DataFrame, max_events: int = 40) -> Figure:
    """Args: clickstream.sessions(...) as pandas (or a sample). Histograms of events and duration."""
    fig = Figure(figsize=(10, 3.5))
    left, right = fig.subplots(1, 2)
    left.hist(per_session["events"].clip(upper=max_events), bins=range(1, max_events + 2), color="tab:blue")
    left.set(xlabel=f"events per session (>{max_events} counted at {max_events})", ylabel="sessions", yscale="log")
    minutes = per_session["duration_s"] / 60.0
    right.hist(minutes.clip(upper=minutes.quantile(0.99) if len(minutes) else 1), bins=40, color="tab:orange")
    right.set(xlabel="session duration (minutes, capped at the 99th percentile)", ylabel="sessions", yscale="log")
    fig.tight_layout()
    return fig


def long_tail(popularity: pd.DataFrame) -> Figure:
    """Args: clickstream.item_popularity(...).toPandas(). Rank-frequency (log-log) and the Lorenz curve."""
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    left.loglog(popularity["rank"], popularity["interactions"], color="tab:blue")
    left.set(xlabel="item rank", ylabel="events", title="Popularity by rank")
    right.plot(np.r_[0.0, popularity["item_share"]], np.r_[0.0, popularity["cumulative_share"]], color="tab:blue")
    right.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="every item alike")
    right.set(xlabel="share of items (most popular first)", ylabel="share of events", title="Long tail")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def active_users(daily: pd.DataFrame, monthly_stickiness: pd.DataFrame) -> Figure:
    """Args: clickstream.active_users(..., "day") and clickstream.stickiness(...) as pandas."""
    fig = Figure(figsize=(10, 3.5))
    left, right = fig.subplots(1, 2)
    left.plot(pd.to_datetime(daily["period_start"]), daily["active_users"], marker=".", color="tab:blue")
    left.set(ylabel="daily active users", title="DAU")
    left.tick_params(axis="x", labelrotation=45)
    labels = [str(m)[:7] for m in monthly_stickiness["month"]]
    right.bar(labels, monthly_stickiness["stickiness"], color="tab:green")
    right.set(ylabel="mean DAU / MAU", title="Stickiness by month", ylim=(0, 1))
    fig.tight_layout()
    return fig


def retention(cohorts: pd.DataFrame, period: str = "week") -> Figure:
    """Args: clickstream.cohort_retention(...).toPandas(). One retention curve per cohort, and a heatmap."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for cohort, rows in cohorts.groupby("cohort"):
        left.plot(rows["offset"], rows["retention"], marker="o", label=f"{cohort} ({rows['cohort_size'].iloc[0]})")
    left.set(xlabel=f"{period}s since the first visit", ylabel="share of the cohort active", ylim=(0, 1.05),
             title="Cohort retention", xticks=sorted(cohorts["offset"].unique()))
    left.legend(fontsize=7, title="cohort (users)", title_fontsize=7)
    grid = cohorts.pivot(index="cohort", columns="offset", values="retention")
    image = right.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    right.set(xticks=range(grid.shape[1]), xticklabels=grid.columns, yticks=range(grid.shape[0]),
              yticklabels=[str(c) for c in grid.index], xlabel=f"{period}s since the first visit")
    fig.colorbar(image, ax=right, label="retention")
    fig.tight_layout()
    return fig


def ranker_bars(table: pd.DataFrame, metrics: list[str]) -> Figure:
    """Args: model_results.ranker_table(...); the metrics to show. Grouped bars, a group per metric."""
    fig = Figure(figsize=(10, 3.8))
    axis = fig.subplots()
    width = 0.8 / max(len(table.index), 1)
    for i, ranker in enumerate(table.index):
        axis.bar(np.arange(len(metrics)) + i * width, table.loc[ranker, metrics], width, label=ranker)
    axis.set_xticks(np.arange(len(metrics)) + width * (len(table.index) - 1) / 2, metrics)
    axis.set(title="The model against the baselines (test users, full ranking)")
    axis.legend(fontsize=8)
    fig.tight_layout()
    return fig


def segment_bars(segments: pd.DataFrame, metric: str) -> Figure:
    """Args: model_results.segment_table(...), the metric it holds. Grouped bars, a group per segment."""
    rankers = [c for c in segments.columns if c != "users"]
    fig = Figure(figsize=(11, 4))
    axis = fig.subplots()
    width = 0.8 / max(len(rankers), 1)
    for i, ranker in enumerate(rankers):
        axis.bar(np.arange(len(segments)) + i * width, segments[ranker].fillna(0.0), width, label=ranker)
    labels = [f"{s}\n({n} users)" for s, n in zip(segments.index, segments["users"])]
    axis.set_xticks(np.arange(len(segments)) + width * (len(rankers) - 1) / 2, labels, fontsize=8)
    axis.set(ylabel=metric, title=f"{metric} by segment")
    axis.legend(fontsize=8)
    fig.tight_layout()
    return fig
