"""The items a user may not get, from the clean events before a cutoff (scoring/exclusions.py)."""

from __future__ import annotations

from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.scoring import exclusions

from tests.evaluation.kit import eval_rows


def test_exclusions_by_event_type_come_from_the_clean_events_before_the_cutoff(spark):
    import datetime as dt

    cutoff = dt.datetime(2019, 10, 10, tzinfo=dt.timezone.utc)
    day = lambda d: dt.datetime(2019, 10, d, 12, tzinfo=dt.timezone.utc)  # noqa: E731
    events = [  # (time, type, product, user): products 1002.. are items 2..
        (day(1), "purchase", 1002, "u1"), (day(2), "view", 1003, "u1"), (day(3), "purchase", 1004, "u2"),
        (day(11), "purchase", 1005, "u1"),  # after the cutoff
        (day(4), "purchase", 999, "u2"),  # no vocabulary item
    ]
    rows = [(t, e, p, None, None, None, None, u, "s", t.date()) for t, e, p, u in events]
    clean = spark.createDataFrame(rows, schema.CLEAN_SCHEMA)
    vocab = spark.createDataFrame([(i, 1000 + i, 0, 0, 0, 1, 1) for i in range(2, 8)], schema.ITEM_VOCAB_SCHEMA)
    excluded = exclusions.excluded_items(clean, vocab, cutoff, ["purchase"])
    assert {r[schema.USER_ID]: list(r[schema.EXCLUDE_ITEMS]) for r in excluded.collect()} == {"u1": [2], "u2": [4]}

    test = spark.createDataFrame(eval_rows(), schema.EVAL_SCHEMA)
    joined = exclusions.with_exclusions(test, excluded)
    got = {r[schema.USER_ID]: list(r[schema.EXCLUDE_ITEMS]) for r in joined.collect()}
    assert got == {"u1": [2], "u2": [4], "u3": [], "u4": [], "u5": []}
    assert exclusions.with_exclusions(test, None) is test


def test_exclusions_follow_each_users_own_cutoff(spark):
    import datetime as dt

    day = lambda d: dt.datetime(2019, 10, d, 12, tzinfo=dt.timezone.utc)  # noqa: E731
    events = [(day(1), "purchase", 1002, "u1"), (day(5), "purchase", 1003, "u1"),
              (day(1), "purchase", 1004, "u2"), (day(5), "purchase", 1005, "u2")]
    rows = [(t, e, p, None, None, None, None, u, "s", t.date()) for t, e, p, u in events]
    clean = spark.createDataFrame(rows, schema.CLEAN_SCHEMA)
    vocab = spark.createDataFrame([(i, 1000 + i, 0, 0, 0, 1, 1) for i in range(2, 8)], schema.ITEM_VOCAB_SCHEMA)
    # leave_last_out: u1's test target on day 3, u2's on day 9.
    cutoffs = spark.createDataFrame([("u1", day(2), day(3)), ("u2", day(8), day(9))], schema.USER_SPLIT_SCHEMA)
    joined = clean.join(cutoffs.select(schema.USER_ID, schema.TEST_AT), schema.USER_ID)
    excluded = exclusions.excluded_items(joined, vocab, F.col(schema.TEST_AT), ["purchase"])
    assert {r[schema.USER_ID]: list(r[schema.EXCLUDE_ITEMS]) for r in excluded.collect()} == {"u1": [2], "u2": [4, 5]}
