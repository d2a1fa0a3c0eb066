"""Report tables, nearest items and a user's history beside their recommendations, on inline data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_spark import schema as S
from recsys_spark.analysis import model_results as M
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
    table = M.ranker_table(REPORT)
    assert list(table.index) == ["model", "popularity", "als"]
    assert list(table.columns) == ["recall@10", "ndcg@10"]
    assert table.loc["als", "ndcg@10"] == 0.1
    lift = M.lift_table(table, "popularity")
    assert list(lift.index) == ["model", "als"]
    assert lift.loc["model"].tolist() == pytest.approx([1.0, 0.5])
    assert lift.loc["als"].tolist() == pytest.approx([-1.0, -0.5])
    with pytest.raises(InputError, match="baseline 'cooccurrence' is not among"):
        M.lift_table(table, "cooccurrence")


def test_segment_table_defaults_to_the_primary_metric():
    table = M.segment_table(REPORT)
    assert list(table.index) == ["all", "cold_users"]
    assert table["model"].tolist() == [0.3, 0.1]
    assert table["popularity"].tolist() == [0.2, 0.15]
    assert table["users"].tolist() == [4, 1]
    with pytest.raises(InputError, match="no per-segment results"):
        M.segment_table({"rankers": REPORT["rankers"], "primary_metric": "ndcg@10"})


def test_load_report_names_the_path(tmp_path):
    missing = tmp_path / "evaluation.json"
    with pytest.raises(InputError, match=f"evaluation report not found: {missing}"):
        M.load_report(str(missing))
    missing.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        M.load_report(str(missing))
    missing.write_text('{"ks": [10]}')
    with pytest.raises(InputError, match="holds no 'rankers' section"):
        M.load_report(str(missing))


def test_latest_partition(tmp_path):
    for name in ("run_date=2019-10-02", "run_date=2019-10-11", "_SUCCESS"):
        (tmp_path / name).mkdir()
    assert M.latest_partition(str(tmp_path)) == "2019-10-11"
    with pytest.raises(InputError, match="no run_date=... partition under"):
        M.latest_partition(str(tmp_path / "nowhere"))


# Item indices 0 and 1 (pad, OOV) have no product; their vectors must never come back.
VECS = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
PRODUCTS = np.array([-1, -1, 100, 200, 300, 400])


def test_nearest_items_by_cosine_similarity():
    got = M.nearest_items(VECS, PRODUCTS, [100, 300], n=5)
    assert [tuple(r) for r in got[["query", "rank", S.PRODUCT_ID]].itertuples(index=False)] == [
        (100, 1, 200), (100, 2, 300), (100, 3, 400),
        (300, 1, 200), (300, 2, 100), (300, 3, 400),  # 100 and 400 tie: item-index order
    ]
    h = 1 / np.sqrt(2)
    assert got["similarity"].tolist() == pytest.approx([h, 0.0, -1.0, h, 0.0, 0.0])
    assert M.nearest_items(VECS, PRODUCTS, [100], n=1)[S.PRODUCT_ID].tolist() == [200]
    with pytest.raises(InputError, match="product_id 999 is not in the model's item vocabulary"):
        M.nearest_items(VECS, PRODUCTS, [999])


def test_history_beside_recommendations():
    history = {S.HIST_ITEMS: [0, 0, 2, 3, 2], S.HIST_EVENTS: [0, 0, 1, 2, 4]}
    recs = pd.DataFrame({S.RANK: [2, 1, 3], S.ITEM_ID: [400, 300, 200], S.SCORE: [0.5, 0.9, 0.1],
                         S.SOURCE: ["model", "model", "explore"]})
    table = M.history_and_recommendations(history, recs, PRODUCTS, n=2)
    assert table["step"].tolist() == [1, 2]
    assert table["viewed_product_id"].tolist() == [100, 200]  # the most recent first
    assert table["event"].tolist() == ["purchase", "cart"]
    assert table[S.RANK].tolist() == [1, 2]
    assert table["recommended_item_id"].tolist() == [300, 400]

    longer = M.history_and_recommendations(history, recs, PRODUCTS, n=10)
    assert len(longer) == 3 and longer["step"].isna().tolist() == [False, False, False]
    assert longer["viewed_product_id"].tolist() == [100, 200, 100]


def test_pick_user_with_the_longest_history_among_the_recommended():
    users = pd.DataFrame({S.USER_ID: ["a", "b", "c", "d"],
                          S.HIST_ITEMS: [[0, 2, 3], [4, 5, 6], [2, 3, 4], [0, 0, 7]]})
    assert M.pick_user(users, ["a", "c", "d"]) == "c"
    assert M.pick_user(users, ["b", "c"]) == "b"  # equal lengths: the smallest id
    with pytest.raises(InputError, match="no user of user_history has recommendations"):
        M.pick_user(users, ["z"])


def test_with_catalogue_labels_product_ids():
    frame = pd.DataFrame({"query": [1, 1], S.PRODUCT_ID: [200, 999]})
    catalogue = pd.DataFrame({S.PRODUCT_ID: [200, 100], S.CATEGORY_CODE: ["shoes", "hats"], S.BRAND: ["x", None]})
    got = M.with_catalogue(frame, catalogue, S.PRODUCT_ID)
    assert got[S.CATEGORY_CODE].tolist()[0] == "shoes" and pd.isna(got[S.CATEGORY_CODE].iloc[1])
    assert list(got.columns) == ["query", S.PRODUCT_ID, S.CATEGORY_CODE, S.BRAND]


def test_user_table_selects_and_labels_one_user():
    history = pd.DataFrame({S.USER_ID: ["u", "v"], S.HIST_ITEMS: [[0, 2, 3], [0, 0, 4]],
                            S.HIST_EVENTS: [[0, 1, 1], [0, 0, 2]]})
    recs = pd.DataFrame({S.USER_ID: ["v", "u"], S.RANK: [1, 1], S.ITEM_ID: [100, 300], S.SCORE: [0.7, 0.8],
                         S.SOURCE: ["model", "fallback"]})
    catalogue = pd.DataFrame({S.PRODUCT_ID: [100, 200, 300], S.CATEGORY_CODE: ["a", "b", "c"],
                              S.BRAND: ["x", "y", "z"]})
    table = M.user_table("u", history, recs, PRODUCTS, catalogue)
    assert table["viewed_product_id"].tolist() == [200, 100]
    assert table["viewed_category_code"].tolist() == ["b", "a"]
    assert table["recommended_item_id"].tolist()[:1] == [300] and table["recommended_brand"].iloc[0] == "z"
    assert table[S.SOURCE].iloc[0] == "fallback"
    with pytest.raises(InputError, match="user 'w' is not in user_history"):
        M.user_table("w", history, recs, PRODUCTS)
