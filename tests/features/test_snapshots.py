"""Point-in-time item and user features, hand-computed on five events."""

from __future__ import annotations

import math

import pytest

from recsys_spark import schema
from recsys_spark.features.snapshots import item_features, snapshot_times, user_features
from tests.features.test_featurize import BUY, CART, CUTOFFS, VIEW, clean_events, t

pytestmark = pytest.mark.unit


def _events(spark):
    return clean_events(spark, [
        ("u1", "2024-01-01 10:00:00", VIEW, 10, 7, "acme", 5.0),
        ("u1", "2024-01-02 10:00:00", BUY, 10, 7, "acme", 5.0),
        ("u2", "2024-01-02 12:00:00", CART, 20, 8, None, 9.0),
        ("u1", "2024-01-04 10:00:00", VIEW, 20, 8, None, 9.0),  # validation period
        ("u2", "2024-01-05 10:00:00", VIEW, 10, 7, "acme", 5.0),  # test period
    ])


def _vocabs(spark):
    return {
        "item": spark.createDataFrame([(2, 10, 0, 0, 0, 2, 2)], schema.ITEM_VOCAB_SCHEMA),
        "category": spark.createDataFrame([(2, 7, 2)], schema.CATEGORY_VOCAB_SCHEMA),
        "brand": spark.createDataFrame([(2, "acme", 2)], schema.BRAND_VOCAB_SCHEMA),
        "user": spark.createDataFrame([(2, "u1", 2)], schema.USER_VOCAB_SCHEMA),
    }


def test_snapshot_times_are_the_cutoffs_and_the_midnight_after_the_data():
    assert snapshot_times(CUTOFFS) == {"train": CUTOFFS.validation, "test": CUTOFFS.test, "serve": t("2024-01-07 00:00:00")}


def test_item_features_as_of_each_cutoff_use_only_earlier_events(spark):
    events = _events(spark)
    train = {r[schema.PRODUCT_ID]: r.asDict() for r in
             item_features(events, "train", CUTOFFS.validation, 1, 2, _vocabs(spark)).collect()}
    assert set(train) == {10, 20}
    # Popularity over [01-02, 01-03): one event each. Prices 5 and 9: log1p standardised over
    # two values is -1 / +1; buckets of 2: 1 and 2. 20 is outside the item vocabulary (1),
    # its category 8 too (1), it has no brand (0). Ages: 38 h and 12 h.
    got = {p: (r[schema.ITEM_IDX], r[schema.POPULARITY], round(r[schema.LOG_PRICE_Z], 9), r[schema.PRICE_BUCKET], r[schema.CATEGORY_IDX],
               r[schema.BRAND_IDX], round(r[schema.AGE_DAYS], 9)) for p, r in train.items()}
    assert got == {10: (2, 1, -1.0, 1, 2, 2, round(38 / 24, 9)), 20: (schema.OOV_INDEX, 1, 1.0, 2, 1, 0, 0.5)}
    assert train[20][schema.LAST_SEEN] == t("2024-01-02 12:00:00").replace(tzinfo=None)
    assert {r[schema.SNAPSHOT] for r in train.values()} == {"train"}

    test = {r[schema.PRODUCT_ID]: r for r in item_features(events, "test", CUTOFFS.test, 1, 2, _vocabs(spark)).collect()}
    # As of 01-05 (window [01-04, 01-05)): 20's validation view counts, 10's test view does not.
    assert {p: (r[schema.POPULARITY], r[schema.LAST_SEEN]) for p, r in test.items()} == {
        10: (0, t("2024-01-02 10:00:00").replace(tzinfo=None)), 20: (1, t("2024-01-04 10:00:00").replace(tzinfo=None))}


def test_user_features_counts_recency_and_purchase_rate(spark):
    events = _events(spark)
    rows = {r[schema.USER_ID]: r for r in user_features(events, "train", CUTOFFS.validation, _vocabs(spark)["user"]).collect()}
    columns = [schema.USER_IDX, *schema.EVENT_COUNT_COLUMNS.values(), schema.N_EVENTS, schema.N_SESSIONS, schema.PURCHASE_RATE]
    assert {u: tuple(r[c] for c in columns) for u, r in rows.items()} == {
        "u1": (2, 1, 0, 0, 1, 2, 1, 0.5),
        "u2": (schema.VOCAB_OOV_INDEX, 0, 1, 0, 0, 1, 1, 0.0),
    }
    assert {u: round(r[schema.RECENCY_DAYS], 9) for u, r in rows.items()} == {"u1": round(14 / 24, 9), "u2": 0.5}
    serve = {r[schema.USER_ID]: r for r in user_features(events, "serve", t("2024-01-07 00:00:00"), _vocabs(spark)["user"]).collect()}
    assert {u: r[schema.N_EVENTS] for u, r in serve.items()} == {"u1": 3, "u2": 2}
    assert math.isclose(serve["u2"][schema.RECENCY_DAYS], 38 / 24)
