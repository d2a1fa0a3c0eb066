"""The HTML report and its figures, from a small hand-written report."""

from __future__ import annotations

import base64
import re

import pytest

from recsys_spark.evaluation import report as R

pytestmark = pytest.mark.unit

KS = [5, 10]
SEGMENTS = ("all", "cold_users", "warm_users", "head_targets", "tail_targets", "view_targets", "purchase_targets")


def values(scale: float) -> dict[str, float]:
    out = {"users": 10, "mrr": 0.3 * scale}
    for k in KS:
        for i, m in enumerate(("recall", "ndcg", "map", "hitrate", "coverage", "novelty", "diversity", "head_share")):
            out[f"{m}@{k}"] = round(scale * (i + 1) * k / 100, 4)
    return out


def report() -> dict:
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
        "definitions": R.DEFINITIONS,
    }


def test_figures_plot_every_ranker():
    figs = R.figures(report())
    assert set(figs) == {"curves", "popularity_bias", "segments"}
    assert [ax.get_ylabel() for ax in figs["curves"].axes] == ["Recall@K", "NDCG@K"]
    assert [len(ax.get_lines()) for ax in figs["curves"].axes] == [3, 3]
    recall = figs["curves"].axes[0].get_lines()[0]
    assert list(recall.get_ydata()) == [values(1.0)["recall@5"], values(1.0)["recall@10"]]
    bars = figs["popularity_bias"].axes[0].patches
    assert len(bars) == 3 * len(KS)  # one bar per ranker and K
    assert len(figs["segments"].axes[0].patches) == 3 * len(SEGMENTS)


def test_html_is_self_contained_escaped_and_complete():
    html = R.render_html(report())
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


def test_grid_table_lists_the_best_point_first():
    text = R.grid_table(report()["baselines"]["als"]["grid"], "ndcg@10")
    assert text.splitlines()[0].split() == ["rank", "ndcg@10"]
    assert [line.split() for line in text.splitlines()[1:]] == [["8", "0.2000"], ["4", "0.1000"]]
