"""The score stage: documented schema, K rows per user, no seen item, fallback, idempotent dates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from recsys_spark import io
from recsys_spark import schema as S
from recsys_spark.config import from_dict
from recsys_spark.errors import InputError
from recsys_spark.evaluation.ranking import ModelRanker, PopularityRanker
from recsys_spark.scoring import score

from tests.evaluation.test_evaluate import register
from tests.evaluation.test_ranking import MAX_SEQ_LEN, NUM_ITEMS, brute_force, history_rows, tiny_bundle

K = 3
PRODUCT = 1000  # product_id = PRODUCT + item_idx in tiny_bundle()

# user, hist_items (L = 4), seen_items. Six real items 2..7, popularity order 2, 3, 4, 5, 6, 7.
USERS = [
    ("a", [0, 0, 2, 3], [2, 3]),  # model, 4 unseen items left -> K rows
    ("b", [0, 0, 0, 1], []),  # only OOV in its history -> fallback
    ("c", [0, 0, 0, 0], []),  # empty history -> fallback
    ("d", [4, 5, 6, 7], [4, 5, 6, 7]),  # model, only items 2 and 3 left -> 2 rows
    ("e", [0, 0, 1, 6], [6]),  # one known item among OOV -> model
]


def write_histories(spark, root: str, bundle) -> None:
    io.write_json(spark, io.feature_path(root, S.FEATURE_METADATA),
                  {"num_items": NUM_ITEMS, "max_seq_len": MAX_SEQ_LEN, "counts": {}})
    rows = [(u, hist, [1 if i else 0 for i in hist], [0] * len(hist), seen) for u, hist, seen in USERS]
    io.write_table(spark.createDataFrame(rows, S.USER_HISTORY_SCHEMA), io.feature_path(root, "user_history"))


@pytest.fixture(scope="module")
def workspace(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("score") / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = from_dict(
            {"paths": {"root": str(root)}, "score": {"top_k": K, "block_size": 2, "run_date": "2019-11-01"}}
        )
        bundle = tiny_bundle(seed=1)
        write_histories(spark, cfg.paths.resolve("features"), bundle)
        register(cfg, bundle)
        yield cfg, bundle


def expected_model_items(bundle, user: str) -> list[int]:
    """The model's top-K product ids for ``user`` by brute force over the towers."""
    _, hist, seen = next(u for u in USERS if u[0] == user)
    module = bundle.build_module()
    items = torch.tensor([hist])
    with torch.no_grad():
        user_vec = module.user_vectors(items, (items > 0).long(), torch.zeros_like(items)).double().numpy()
        item_vecs = module.item_vectors().double().numpy()
    top = brute_force(user_vec, item_vecs, K, [seen])[0]
    eligible = NUM_ITEMS - S.FIRST_ITEM_INDEX - len(seen)
    return (PRODUCT + top[:eligible]).tolist()


@pytest.mark.e2e
def test_score_writes_top_k_per_user_and_rerunning_a_date_replaces_it(spark, workspace):
    cfg, bundle = workspace
    summary = score.run(spark, cfg)
    out = cfg.paths.resolve("recommendations")
    assert summary["recommendations_path"] == out
    assert (summary["run_date"], summary["model_version"]) == ("2019-11-01", "1")
    assert (summary["users"], summary["users_recommended"], summary["rows"], summary["fallback_users"]) == (5, 5, 14, 2)

    written = spark.read.parquet(out)
    assert [(f.name, f.dataType) for f in written.schema] == [(f.name, f.dataType) for f in S.RECOMMENDATION_SCHEMA]
    recs = pq.read_table(out).to_pandas()
    recs = recs.sort_values([S.USER_ID, S.RANK]).reset_index(drop=True)
    by_user = {u: g for u, g in recs.groupby(S.USER_ID)}

    # K rows where the catalogue allows, ranks 1..n, best score first.
    assert {u: len(g) for u, g in by_user.items()} == {"a": 3, "b": 3, "c": 3, "d": 2, "e": 3}
    for g in by_user.values():
        assert g[S.RANK].tolist() == list(range(1, len(g) + 1))
        assert g[S.SCORE].is_monotonic_decreasing
    # Never a seen item.
    for user, _, seen in USERS:
        assert not set(by_user[user][S.ITEM_ID] - PRODUCT) & set(seen)
    # Known histories from the model, in the towers' order.
    for user in ("a", "d", "e"):
        assert set(by_user[user][S.SOURCE]) == {"model"}
        assert by_user[user][S.ITEM_ID].tolist() == expected_model_items(bundle, user)
    # OOV-only and empty histories: the most popular items, scored log(1 + pretest_count).
    for user in ("b", "c"):
        assert set(by_user[user][S.SOURCE]) == {"fallback"}
        assert by_user[user][S.ITEM_ID].tolist() == [1002, 1003, 1004]
        np.testing.assert_allclose(by_user[user][S.SCORE], [math.log(51), math.log(41), math.log(31)], rtol=1e-6)
    assert set(recs[S.MODEL_NAME]) == {"recsys_two_tower"} and set(recs[S.MODEL_VERSION]) == {"1"}
    assert set(recs[S.RUN_DATE].astype(str)) == {"2019-11-01"}

    # Same date again, this time by version number: the partition is replaced, not appended to.
    again = from_dict({**cfg.to_dict(), "score": {**cfg.to_dict()["score"], "model_version": 1}})
    assert score.run(spark, again)["rows"] == 14
    assert pq.read_table(out).num_rows == 14


@pytest.mark.e2e
def test_an_unknown_model_version_is_an_input_error(spark, workspace):
    cfg, _ = workspace
    missing = from_dict({**cfg.to_dict(), "score": {**cfg.to_dict()["score"], "model_version": 7}})
    with pytest.raises(InputError, match="version 7"):
        score.run(spark, missing)


@pytest.mark.unit
def test_recommender_long_format_keeps_ranks_and_drops_empty_slots():
    bundle = tiny_bundle(seed=1)
    recommender = score.Recommender(
        model=ModelRanker.from_bundle(bundle),
        fallback=PopularityRanker.from_vocab(bundle.item_vocab, NUM_ITEMS),
        product_ids=bundle.product_ids(),
    )
    rows = history_rows([[4, 5, 6, 7], [1]], seen=[[2, 4, 5, 6, 7], []])
    out = recommender.recommend(rows, K, exclude_seen=True, block_size=8)
    assert list(out.columns) == score.RANKED_SCHEMA.fieldNames()
    # u0 has one unseen item left (3); u1 knows no item: popularity's top 3.
    assert out[[S.USER_ID, S.RANK, S.ITEM_ID, S.SOURCE]].values.tolist() == [
        ["u0", 1, 1003, "model"], ["u1", 1, 1002, "fallback"], ["u1", 2, 1003, "fallback"], ["u1", 3, 1004, "fallback"],
    ]
    with_seen = recommender.recommend(rows, K, exclude_seen=False, block_size=8)
    assert (with_seen[S.USER_ID] == "u0").sum() == K
    assert recommender.recommend(rows.iloc[:0], K, True, 8).empty
    assert pd.api.types.is_integer_dtype(out[S.ITEM_ID])
