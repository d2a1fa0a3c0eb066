"""Report tables, nearest items and a user's history beside their recommendations, on inline data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_spark import schema
from recsys_spark.analysis import model_results
from recsys_spark.errors import InputError

pytestmark = pytest.mark.unit

REPORT = {
    "primary_metric": "ndcg@10",
    "rankers": {
        "model": {"users": 4, "recall@10": 0.5, "ndcg@10": 0.3},
        "popularity": {"users": 4, "recall@10": 0.25, "ndcg@10": 0.2},
        "als": {"users": 4, "recall@10": 0.0, "ndcg@10": 0.1},
    },
    "segments": {
        "model": {"all": {"users": 4, "ndcg@10": 0.3}, "cold_users": {"users": 1, "ndcg@10": 0.1}},
        "popularity": {"all": {"users": 4, "ndcg@10": 0.2}, "cold_users": {"users": 1, "ndcg@10": 0.15}},
    },
}


def test_ranker_and_lift_tables():
    table = model_results.ranker_table(REPORT)
    assert list(table.index) == ["model", "popularity", "als"]
    assert list(table.columns) == ["recall@10", "ndcg@10"]
    assert table.loc["als", "ndcg@10"] == 0.1
    lift = model_results.lift_table(table, "popularity")
    assert list(lift.index) == ["model", "als"]
    assert lift.loc["model"].tolist() == pytest.approx([1.0, 0.5])
    assert lift.loc["als"].tolist() == pytest.approx([-1.0, -0.5])
    with pytest.raises(InputError, match="baseline 'cooccurrence' is not among"):
        model_results.lift_table(table, "cooccurrence")


def test_segment_table_defaults_to_the_primary_metric():
    table = model_results.segment_table(REPORT)
    assert list(table.index) == ["all", "cold_users"]
    assert table["model"].tolist() == [0.3, 0.1]
    assert table["popularity"].tolist() == [0.2, 0.15]
    assert table["users"].tolist() == [4, 1]
    with pytest.raises(InputError, match="no per-segment results"):
        model_results.segment_table({"rankers": REPORT["rankers"], "primary_metric": "ndcg@10"})


def test_load_report_names_the_path(tmp_path):
    missing = tmp_path / "evaluation.json"
    with pytest.raises(InputError, match=f"evaluation report not found: {missing}"):
        model_results.load_report(str(missing))
    missing.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        model_results.load_report(str(missing))
    missing.write_text('{"ks": [10]}')
    with pytest.raises(InputError, match="holds no 'rankers' section"):
        model_results.load_report(str(missing))


def test_latest_partition(tmp_path):
    for name in ("run_date=2019-10-02", "run_date=2019-10-11", "_SUCCESS"):
        (tmp_path / name).mkdir()
    assert model_results.latest_partition(str(tmp_path)) == "2019-10-11"
    with pytest.raises(InputError, match="no run_date=... partition under"):
        model_results.latest_partition(str(tmp_path / "nowhere"))


# Item indices 0 and 1 (pad, OOV) have no product; their vectors must never come back.
VECS = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
PRODUCTS = np.array([-1, -1, 100, 200, 300, 400])


def test_nearest_items_by_cosine_similarity():
    got = model_results.nearest_items(VECS, PRODUCTS, [100, 300], n=5)
    assert [tuple(r) for r in got[["query", "rank", schema.PRODUCT_ID]].itertuples(index=False)] == [
        (100, 1, 200), (100, 2, 300), (100, 3, 400),
        (300, 1, 200), (300, 2, 100), (300, 3, 400),  # 100 and 400 tie: item-index order
    ]
    h = 1 / np.sqrt(2)
    assert got["similarity"].tolist() == pytest.approx([h, 0.0, -1.0, h, 0.0, 0.0])
    assert model_results.nearest_items(VECS, PRODUCTS, [100], n=1)[schema.PRODUCT_ID].tolist() == [200]
    with pytest.raises(InputError, match="product_id 999 is not in the model's item vocabulary"):
        model_results.nearest_items(VECS, PRODUCTS, [999])


def test_history_beside_recommendations():
    history = {schema.HIST_ITEMS: [0, 0, 2, 3, 2], schema.HIST_EVENTS: [0, 0, 1, 2, 4]}
    recs = pd.DataFrame({schema.RANK: [2, 1, 3], schema.ITEM_ID: [400, 300, 200], schema.SCORE: [0.5, 0.9, 0.1],
                         schema.SOURCE: ["model", "model", "explore"]})
    table = model_results.history_and_recommendations(history, recs, PRODUCTS, n=2)
    assert table["step"].tolist() == [1, 2]
    assert table["viewed_product_id"].tolist() == [100, 200]  # the most recent first
    assert table["event"].tolist() == ["purchase", "cart"]
    assert table[schema.RANK].tolist() == [1, 2]
    assert table["recommended_item_id"].tolist() == [300, 400]

    longer = model_results.history_and_recommendations(history, recs, PRODUCTS, n=10)
    assert len(longer) == 3 and longer["step"].isna().tolist() == [False, False, False]
    assert longer["viewed_product_id"].tolist() == [100, 200, 100]


def test_pick_user_with_the_longest_history_among_the_recommended():
    users = pd.DataFrame({schema.USER_ID: ["a", "b", "c", "d"],
                          schema.HIST_ITEMS: [[0, 2, 3], [4, 5, 6], [2, 3, 4], [0, 0, 7]]})
    assert model_results.pick_user(users, ["a", "c", "d"]) == "c"
    assert model_results.pick_user(users, ["b", "c"]) == "b"  # equal lengths: the smallest id
    with pytest.raises(InputError, match="no user of user_history has recommendations"):
        model_results.pick_user(users, ["z"])


def test_with_catalogue_labels_product_ids():
    frame = pd.DataFrame({"query": [1, 1], schema.PRODUCT_ID: [200, 999]})
    catalogue = pd.DataFrame({schema.PRODUCT_ID: [200, 100], schema.CATEGORY_CODE: ["shoes", "hats"], schema.BRAND: ["x", None]})
    got = model_results.with_catalogue(frame, catalogue, schema.PRODUCT_ID)
    assert got[schema.CATEGORY_CODE].tolist()[0] == "shoes" and pd.isna(got[schema.CATEGORY_CODE].iloc[1])
    assert list(got.columns) == ["query", schema.PRODUCT_ID, schema.CATEGORY_CODE, schema.BRAND]


def test_user_table_selects_and_labels_one_user():
    history = pd.DataFrame({schema.USER_ID: ["u", "v"], schema.HIST_ITEMS: [[0, 2, 3], [0, 0, 4]],
                            schema.HIST_EVENTS: [[0, 1, 1], [0, 0, 2]]})
    recs = pd.DataFrame({schema.USER_ID: ["v", "u"], schema.RANK: [1, 1], schema.ITEM_ID: [100, 300], schema.SCORE: [0.7, 0.8],
                         schema.SOURCE: ["model", "fallback"]})
    catalogue = pd.DataFrame({schema.PRODUCT_ID: [100, 200, 300], schema.CATEGORY_CODE: ["a", "b", "c"],
                              schema.BRAND: ["x", "y", "z"]})
    table = model_results.user_table("u", history, recs, PRODUCTS, catalogue)
    assert table["viewed_product_id"].tolist() == [200, 100]
    assert table["viewed_category_code"].tolist() == ["b", "a"]
    assert table["recommended_item_id"].tolist()[:1] == [300] and table["recommended_brand"].iloc[0] == "z"
    assert table[schema.SOURCE].iloc[0] == "fallback"
    with pytest.raises(InputError, match="user 'w' is not in user_history"):
        model_results.user_table("w", history, recs, PRODUCTS)
