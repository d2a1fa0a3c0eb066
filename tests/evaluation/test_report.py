"""The HTML report and its figures, from a small hand-written report."""

from __future__ import annotations

import base64
import re

import pytest

from recsys_spark.evaluation import report

pytestmark = pytest.mark.unit

KS = [5, 10]
SEGMENTS = ("all", "cold_users", "warm_users", "head_targets", "tail_targets", "view_targets", "purchase_targets")


def values(scale: float) -> dict[str, float]:
    out = {"users": 10, "mrr": 0.3 * scale}
    for k in KS:
        for i, m in enumerate(("recall", "ndcg", "map", "hitrate", "coverage", "novelty", "diversity", "head_share")):
            out[f"{m}@{k}"] = round(scale * (i + 1) * k / 100, 4)
    return out


def sample_report() -> dict:
    rankers = {"model": values(1.0), "popularity": values(0.5), "als": values(0.8)}
    return {
        "registered_model": "recsys_two_tower", "model_version": "4", "champion_alias": "champion",
        "users": 12, "users_with_targets": 10, "catalogue_size": 100, "head_items": 7, "ks": KS,
        "primary_metric": "ndcg@10", "mlflow_run_id": "abc",
        "rankers": rankers,
        "segments": {r: {s: v for s in SEGMENTS} for r, v in rankers.items()},
        "baselines": {"als": {"chosen": {"rank": 8}, "metric": "ndcg@10", "split": "validation",
                              "grid": [{"rank": 8, "ndcg@10": 0.2}, {"rank": 4, "ndcg@10": 0.1}]}},
        "gate": {"promote": False, "verdict": "not_promoted", "reasons": ["ndcg@10: <worse> & lower"],
                 "challenger_version": "4", "champion_version": "3"},
        "definitions": report.DEFINITIONS,
    }


def test_figures_plot_every_ranker():
    figs = report.figures(sample_report())
    assert set(figs) == {"curves", "popularity_bias", "segments"}
    assert [ax.get_ylabel() for ax in figs["curves"].axes] == ["Recall@K", "NDCG@K"]
    assert [len(ax.get_lines()) for ax in figs["curves"].axes] == [3, 3]
    for axis in figs["curves"].axes:  # the chosen Ks, and nothing else, label the K axis
        assert [label.get_text() for label in axis.get_xticklabels()] == [str(k) for k in KS]
        assert len(axis.xaxis.get_minorticklocs()) == 0
    recall = figs["curves"].axes[0].get_lines()[0]
    assert list(recall.get_ydata()) == [values(1.0)["recall@5"], values(1.0)["recall@10"]]
    bars = figs["popularity_bias"].axes[0].patches
    assert len(bars) == 3 * len(KS)  # one bar per ranker and K
    assert len(figs["segments"].axes[0].patches) == 3 * len(SEGMENTS)


def test_html_is_self_contained_escaped_and_complete():
    html = report.render_html(sample_report())
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "&lt;worse&gt; &amp; lower" in html  # reasons are escaped
    assert "Registry gate: not promoted" in html
    for ranker in ("model", "popularity", "als"):
        assert f"<td>{ranker}</td>" in html
    # The best ranker of a metric is highlighted: the model on every one of them here.
    assert f'<td class="best">{values(1.0)["ndcg@10"]:.4f}</td>' in html
    assert "als: chosen rank=8</h3>" in html and "0.2000" in html


def with_intervals() -> dict:
    """sample_report() with what evaluate adds: intervals of every per-user metric, paired differences."""
    out = sample_report()
    out["bootstrap"] = {"samples": 1000, "seed": 5, "confidence": 0.95}
    out["users_evaluated"] = 10
    out["intervals"] = {
        r: {m: [v - 0.01, v + 0.01] for m, v in values.items() if m != "users" and not m.startswith("coverage")}
        for r, values in out["rankers"].items()
    }
    out["paired"] = {
        "model_vs_als": {"ndcg@10": {"diff": 0.05, "low": 0.01, "high": 0.09, "users": 10},
                         "recall@10": {"diff": 0.02, "low": -0.01, "high": 0.05, "users": 10}},
        "model_vs_popularity": {"ndcg@10": {"diff": -0.04, "low": -0.07, "high": -0.02, "users": 10},
                                "recall@10": {"diff": 0.0, "low": 0.0, "high": 0.0, "users": 10}},
    }
    return out


def test_html_shows_every_interval_with_its_users_and_the_paired_differences():
    html = report.render_html(with_intervals())
    ndcg = values(1.0)["ndcg@10"]
    assert f'<td class="best">{ndcg:.4f} [{ndcg - 0.01:.4f}, {ndcg + 0.01:.4f}]</td>' in html
    # coverage is over the catalogue: no interval
    assert f'<td class="best">{values(1.0)["coverage@10"]:.4f}</td>' in html
    assert "<th>ranker</th><th>users</th>" in html and "<td>model</td><td>10</td>" in html
    assert "95%\npercentile bootstrap interval over the 10 users evaluated (1000 resamples" in html
    assert "<td>model - als</td>\n<td>10</td>" in html
    assert '<td class="above">+0.0500 [+0.0100, +0.0900]</td>' in html
    assert '<td class="">+0.0200 [-0.0100, +0.0500]</td>' in html
    assert '<td class="below">-0.0400 [-0.0700, -0.0200]</td>' in html
    assert len(re.findall(r'src="data:image/png;base64,([^"]+)"', html)) == 4


def test_the_paired_figure_draws_each_difference_with_its_interval():
    figs = report.figures(with_intervals())
    assert set(figs) == {"curves", "popularity_bias", "segments", "paired"}
    axis = figs["paired"].axes[0]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["model - als (10 users)", "model - popularity (10 users)"]
    assert axis.get_xlabel() == "difference in ndcg@10"
    (points,) = axis.collections[-1:]
    assert points.get_offsets()[:, 0].tolist() == [0.05, -0.04]
    segments = [seg[:, 0].tolist() for seg in axis.collections[0].get_segments()]
    assert segments == [pytest.approx([0.01, 0.09]), pytest.approx([-0.07, -0.02])]
    # The curves shade every ranker's interval.
    assert [len(ax.collections) for ax in figs["curves"].axes] == [3, 3]


def test_grid_table_lists_the_best_point_first():
    text = report.grid_table(sample_report()["baselines"]["als"]["grid"], "ndcg@10")
    assert text.splitlines()[0].split() == ["rank", "ndcg@10"]
    assert [line.split() for line in text.splitlines()[1:]] == [["8", "0.2000"], ["4", "0.1000"]]


def test_html_shows_precision_f1_and_auc_where_the_report_has_them():
    current = with_intervals()
    for scale, ranker in ((1.0, "model"), (0.5, "popularity"), (0.8, "als")):
        extra = {"auc": 0.9 * scale, **{f"{m}@{k}": 0.01 * k * scale for m in ("precision", "f1") for k in KS}}
        current["rankers"][ranker].update(extra)
        current["intervals"][ranker].update({m: [v - 0.01, v + 0.01] for m, v in extra.items()})
    html = report.render_html(current)
    assert "<th>hitrate@10</th><th>precision@10</th><th>f1@10</th><th>coverage@10</th>" in html
    assert f'<td class="best">{0.1:.4f} [{0.09:.4f}, {0.11:.4f}]</td>' in html  # precision@10 of the model
    assert f"AUC: model {0.9:.4f} [{0.89:.4f}, {0.91:.4f}], popularity {0.45:.4f}" in html
    # A report written before these metrics existed still renders, without them.
    older = report.render_html(with_intervals())
    assert "precision@10</th>" not in older and "AUC:" not in older and "<th>hitrate@10</th><th>coverage@10</th>" in older


def test_grid_table_keeps_auc_among_the_metrics_not_the_parameters():
    grid = [{"rank": 8, "ndcg@10": 0.2, "mrr": 0.3, "auc": 0.7}, {"rank": 4, "ndcg@10": 0.1, "mrr": 0.2, "auc": 0.8}]
    assert report.grid_table(grid, "ndcg@10").splitlines()[0].split() == ["rank", "ndcg@10"]
