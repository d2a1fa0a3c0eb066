"""featurize: steps, cutoffs, vocabularies, gap buckets, windows, evaluation rows, the leakage
guard and the whole stage, on a handful of inline events with hand-computed expectations."""

from __future__ import annotations

import datetime as dt
import json

import mlflow
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.errors import ConfigError, DataQualityError, InputError
from recsys_spark.features import featurize
from recsys_spark.features.leakage import check_no_leakage
from recsys_spark.features.sequences import (
    EVENT_CODE,
    EVENT_STRENGTH,
    GAP_BUCKET,
    HIST_END,
    STEP_POS,
    STEP_TIME,
    WINDOW_NO,
    WINDOW_TIMES,
    add_gap_buckets,
    collapse_steps,
    encode_items,
    eval_rows,
    gap_bucket,
    history_rows,
    train_windows,
)
from recsys_spark.features.snapshots import item_features, user_features
from recsys_spark.features.split import Cutoffs, Split, compute_cutoffs, data_range, temporal_split
from recsys_spark.features import vocab

pytestmark = pytest.mark.unit

UTC = dt.timezone.utc
VIEW, CART, REMOVE, BUY = schema.EVENT_TYPES[0], schema.EVENT_TYPES[1], schema.EVENT_TYPES[2], schema.EVENT_TYPES[3]


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# The split used by the hand-built frames below.
CUTOFFS = Cutoffs(
    data_start=t("2024-01-01 00:00:00"),
    data_end=t("2024-01-06 12:00:00"),
    validation=t("2024-01-03 00:00:00"),
    test=t("2024-01-05 00:00:00"),
)


def clean_events(spark, rows):
    """rows: (user, time, event_type, product_id, category_id, brand, price) -> CLEAN_SCHEMA."""
    full = [
        (t(when), kind, product, category, None, brand, price, user, f"{user}-s", t(when).date())
        for user, when, kind, product, category, brand, price in rows
    ]
    return spark.createDataFrame(full, schema.CLEAN_SCHEMA)


STEP_SCHEMA = T.StructType(
    [
        T.StructField(schema.USER_ID, T.StringType()),
        T.StructField(STEP_POS, T.IntegerType()),
        T.StructField(STEP_TIME, T.TimestampType()),
        T.StructField(schema.ITEM_IDX, T.IntegerType()),
        T.StructField(EVENT_STRENGTH, T.IntegerType()),
        T.StructField(EVENT_CODE, T.IntegerType()),
        T.StructField(GAP_BUCKET, T.IntegerType()),
    ]
)


def encoded_steps(spark, rows):
    """rows: (user, pos, time, item_idx, event_type, gap) -> an encoded step frame."""
    full = [
        (user, pos, t(when), item, schema.EVENT_STRENGTH[kind], schema.EVENT_CODE[kind], gap)
        for user, pos, when, item, kind, gap in rows
    ]
    return spark.createDataFrame(full, STEP_SCHEMA)


def by_user(df, *columns):
    return {r[schema.USER_ID]: tuple(r[c] for c in columns) for r in df.collect()}


# ----------------------------------------------------------------------------- steps, gaps


def test_collapse_steps_merges_runs_and_keeps_the_strongest_event(spark):
    events = clean_events(
        spark,
        [
            ("u1", "2024-01-01 10:00:00", VIEW, 100, None, None, None),
            ("u1", "2024-01-01 10:00:10", CART, 100, None, None, None),
            ("u1", "2024-01-01 10:00:20", VIEW, 100, None, None, None),  # 100 x3 -> one step, cart
            ("u1", "2024-01-01 10:01:00", VIEW, 200, None, None, None),
            ("u1", "2024-01-01 10:02:00", VIEW, 100, None, None, None),  # 100 again: a new step
            ("u1", "2024-01-01 10:03:00", BUY, 300, None, None, None),
            ("u1", "2024-01-01 10:03:00", VIEW, 300, None, None, None),  # same time: one step, purchase
            ("u1", "2024-01-01 10:04:00", CART, 400, None, None, None),
            ("u1", "2024-01-01 10:04:00", VIEW, 500, None, None, None),  # tie: weaker (view 500) first
            ("u1", "2024-01-01 10:05:00", REMOVE, 400, None, None, None),  # joins the cart-400 step
            ("u2", "2024-01-01 09:00:00", REMOVE, 200, None, None, None),
            ("u2", "2024-01-01 09:00:00", VIEW, 100, None, None, None),
        ],
    )
    steps = add_gap_buckets(collapse_steps(events))
    got = sorted(
        (r[schema.USER_ID], r[STEP_POS], r[schema.PRODUCT_ID], r["hms"], r[EVENT_CODE], r[GAP_BUCKET])
        for r in steps.withColumn("hms", F.date_format(STEP_TIME, "HH:mm:ss")).collect()
    )
    code = schema.EVENT_CODE
    # Gaps: 60 s -> 1 + floor(log2 61) = 6; 0 s -> 1; the first step -> 0.
    assert got == [
        ("u1", 1, 100, "10:00:00", code[CART], 0),
        ("u1", 2, 200, "10:01:00", code[VIEW], 6),
        ("u1", 3, 100, "10:02:00", code[VIEW], 6),
        ("u1", 4, 300, "10:03:00", code[BUY], 6),
        ("u1", 5, 500, "10:04:00", code[VIEW], 6),
        ("u1", 6, 400, "10:04:00", code[CART], 1),  # cart outranks remove_from_cart (code 3 > 2)
        ("u2", 1, 100, "09:00:00", code[VIEW], 0),
        ("u2", 2, 200, "09:00:00", code[REMOVE], 1),
    ]


def test_gap_bucket_is_one_plus_floor_log2_capped(spark):
    seconds = [None, 0, 1, 2, 3, 4, 7, 8, 1000, 2**21 - 1, 2**22 - 1, 2**22, 10**9]
    expected = [0, 1, 2, 2, 3, 3, 4, 4, 10, 22, 23, 23, 23]
    df = spark.createDataFrame([(i, s) for i, s in enumerate(seconds)], "i int, s long")
    got = [r[0] for r in df.orderBy("i").select(gap_bucket(F.col("s"))).collect()]
    assert got == expected
    assert max(expected) == schema.NUM_GAP_BUCKETS - 1


# ----------------------------------------------------------------------------- cutoffs


def test_cutoffs_are_whole_days_back_from_the_last_day():
    cutoffs = compute_cutoffs(t("2024-01-01 08:00:00"), t("2024-01-06 15:30:00"), validation_days=2, test_days=2)
    assert (cutoffs.test, cutoffs.validation) == (t("2024-01-05 00:00:00"), t("2024-01-03 00:00:00"))
    one = compute_cutoffs(t("2024-01-01 08:00:00"), t("2024-01-06 15:30:00"), validation_days=1, test_days=1)
    assert (one.test, one.validation) == (t("2024-01-06 00:00:00"), t("2024-01-05 00:00:00"))
    assert cutoffs.as_dict()["test_cutoff"] == "2024-01-05T00:00:00+00:00"
    with pytest.raises(InputError, match="no training period"):
        compute_cutoffs(t("2024-01-03 08:00:00"), t("2024-01-06 15:30:00"), validation_days=2, test_days=2)


def test_data_range_reads_utc_instants(spark):
    events = clean_events(
        spark,
        [("u", "2024-01-02 23:30:00", VIEW, 1, None, None, None), ("u", "2024-01-01 00:15:00", VIEW, 2, None, None, None)],
    )
    assert data_range(events) == (t("2024-01-01 00:15:00"), t("2024-01-02 23:30:00"))


# ----------------------------------------------------------------------------- vocabularies


def empty_vocab(spark, spec):
    return spark.createDataFrame([], spec.schema)


def test_item_vocab_counts_order_oov_and_side_features_from_train_only(spark):
    train_day, val_day, test_day = "2024-01-02 10:00:00", "2024-01-03 10:00:00", "2024-01-05 10:00:00"
    # (product, day, category, brand, price) per event; each event is also one step here.
    rows = [
        (10, train_day, 7, "acme", 1.0), (10, train_day, 7, None, 3.0), (10, train_day, 8, None, None),
        (10, val_day, 9, "zeta", 50.0), (10, val_day, 9, "zeta", 50.0), (10, val_day, 9, "zeta", 50.0),
        (20, train_day, 8, "zeta", 100.0), (20, train_day, 9, "acme", 100.0), (20, train_day, None, None, 100.0),
        (60, train_day, 8, "zeta", 2.0), (60, train_day, 8, "zeta", 2.0), (60, train_day, 8, "zeta", 2.0),
        (30, train_day, None, None, None), (30, train_day, None, None, None), (30, test_day, 7, "acme", 9.0),
        (40, train_day, 7, "acme", 5.0), (40, val_day, 7, "acme", 5.0),
        (50, test_day, 7, "acme", 5.0), (50, test_day, 7, "acme", 5.0),
    ]
    events = clean_events(spark, [("u", day, VIEW, p, c, b, price) for p, day, c, b, price in rows])
    steps = events.select(schema.PRODUCT_ID, F.col(schema.EVENT_TIME).alias(STEP_TIME))
    train_events = events.where(F.col(schema.EVENT_TIME) < F.lit(CUTOFFS.validation))
    # Training events per category: 8 -> 5 (10, 20, 60 x3), 7 -> 3 (10 x2, 40), 9 -> 1 (20).
    categories = vocab.build_value_vocab(train_events, vocab.CATEGORY, min_count=1)
    assert sorted(tuple(r) for r in categories.collect()) == [(2, 8, 5), (3, 7, 3), (4, 9, 1)]
    # Brands: zeta -> 4 (20, 60 x3), acme -> 3 (10, 20, 40): below min_count=4, so OOV.
    brands = vocab.build_value_vocab(train_events, vocab.BRAND, min_count=4)
    assert [tuple(r) for r in brands.collect()] == [(2, "zeta", 4)]
    item_vocab = vocab.build_item_vocab(steps, events, CUTOFFS, min_item_count=2, price_buckets=3,
                               categories=categories, brands=brands)

    assert item_vocab.schema.simpleString() == schema.ITEM_VOCAB_SCHEMA.simpleString()
    got = sorted(tuple(r) for r in item_vocab.collect())
    # train counts: 10 -> 3, 20 -> 3, 60 -> 3, 30 -> 2 (idx by count desc, then product id);
    # 40 (1 train step) and 50 (test only) stay out of vocabulary.
    # Modes over train events: 10 -> category 7 (idx 3), brand acme (OOV 1); 20 -> 8 (idx 2)
    # and acme (tie with zeta: the smaller); 60 -> 8, zeta (2); 30 -> none (0, 0). 10's
    # validation events in category 9 do not count.
    # prices (median of train events): 10 -> 2.0, 60 -> 2.0, 20 -> 100.0, 30 none;
    # bucket = ceil(3 * k / 3) with k priced items at or below: 2.0 -> 2, 100.0 -> 3.
    assert got == [
        (2, 10, 3, schema.VOCAB_OOV_INDEX, 2, 3, 6),
        (3, 20, 2, schema.VOCAB_OOV_INDEX, 3, 3, 3),
        (4, 60, 2, 2, 2, 3, 3),
        (5, 30, schema.VOCAB_NULL_INDEX, schema.VOCAB_NULL_INDEX, 0, 2, 2),
    ]
    encoded = encode_items(spark.createDataFrame([(10,), (40,), (50,)], "product_id long"), item_vocab)
    assert dict((r[schema.PRODUCT_ID], r[schema.ITEM_IDX]) for r in encoded.collect()) == {10: 2, 40: schema.OOV_INDEX, 50: schema.OOV_INDEX}


def test_logq_popularity_counts_only_training_steps(spark):
    """train_count (the logQ correction's popularity) ignores every step at or after the cutoff."""
    before_cut = [("u", "2024-01-02 10:00:00", VIEW, 10, None, None, None)] * 2
    later = [("u", "2024-01-03 00:00:00", VIEW, 10, None, None, None), ("u", "2024-01-06 10:00:00", VIEW, 10, None, None, None)]
    counts = {}
    for name, rows in (("train only", before_cut), ("with later steps", before_cut + later)):
        events = clean_events(spark, rows)
        steps = events.select(schema.PRODUCT_ID, F.col(schema.EVENT_TIME).alias(STEP_TIME))
        item_vocab = vocab.build_item_vocab(steps, events, CUTOFFS, 1, 2, empty_vocab(spark, vocab.CATEGORY), empty_vocab(spark, vocab.BRAND))
        counts[name] = [(r[schema.TRAIN_COUNT], r[schema.PRETEST_COUNT]) for r in item_vocab.collect()]
    # The step at exactly the validation cutoff counts for pretest (before the test cutoff) only.
    assert counts == {"train only": [(2, 2)], "with later steps": [(2, 3)]}


# ----------------------------------------------------------------------------- training windows


def _train_steps(spark):
    rows = [("a", i, f"2024-01-01 10:0{i}:00", 10 + i, VIEW if i % 2 else CART, i) for i in range(1, 9)]
    rows += [("b", 1, "2024-01-02 10:00:00", 21, VIEW, 0), ("b", 2, "2024-01-02 11:00:00", 22, BUY, 5)]
    rows += [("c", 1, "2024-01-02 10:00:00", 31, VIEW, 0)]
    rows += [
        ("d", 1, "2024-01-02 10:00:00", 41, VIEW, 0),
        ("d", 2, "2024-01-02 11:00:00", schema.OOV_INDEX, VIEW, 3),
        ("d", 3, "2024-01-02 23:59:59", 43, VIEW, 4),
        ("d", 4, "2024-01-03 00:00:00", 44, VIEW, 5),  # at the validation cutoff: not training
    ]
    return encoded_steps(spark, rows)


def test_train_windows_chunk_from_the_end_overlap_by_one_and_left_pad(spark):
    windows = train_windows(_train_steps(spark), CUTOFFS.validation, max_seq_len=3, max_windows_per_user=5)
    got = {(r[schema.USER_ID], r[WINDOW_NO]): (r[schema.ITEM_SEQ], r[schema.EVENT_SEQ], r[schema.GAP_SEQ]) for r in windows.collect()}
    view, cart, buy = schema.EVENT_CODE[VIEW], schema.EVENT_CODE[CART], schema.EVENT_CODE[BUY]
    # a: 8 steps, L = 3: windows [5..8], [2..5], [1..2] (1-based); each step after the first
    # is a target ([1:]) exactly once. c has one step: no window. d's step at the cutoff is out.
    assert got == {
        ("a", 0): ([15, 16, 17, 18], [view, cart, view, cart], [5, 6, 7, 8]),
        ("a", 1): ([12, 13, 14, 15], [cart, view, cart, view], [2, 3, 4, 5]),
        ("a", 2): ([0, 0, 11, 12], [0, 0, view, cart], [0, 0, 1, 2]),
        ("b", 0): ([0, 0, 21, 22], [0, 0, view, buy], [0, 0, 0, 5]),
        ("d", 0): ([0, 41, schema.OOV_INDEX, 43], [0, view, view, view], [0, 0, 3, 4]),
    }
    capped = train_windows(_train_steps(spark), CUTOFFS.validation, max_seq_len=3, max_windows_per_user=2)
    assert sorted((r[schema.USER_ID], r[WINDOW_NO]) for r in capped.collect()) == [("a", 0), ("a", 1), ("b", 0), ("d", 0)]


# ----------------------------------------------------------------------------- evaluation rows


def _eval_steps(spark):
    rows = [
        ("p", 1, "2024-01-01 10:00:00", 5, VIEW, 0),
        ("p", 2, "2024-01-01 11:00:00", 6, CART, 3),
        ("p", 3, "2024-01-02 10:00:00", schema.OOV_INDEX, VIEW, 4),
        ("p", 4, "2024-01-02 12:00:00", 7, VIEW, 5),
        ("p", 5, "2024-01-03 10:00:00", 6, VIEW, 6),  # validation window from here: 6 is seen
        ("p", 6, "2024-01-03 11:00:00", 9, VIEW, 7),
        ("p", 7, "2024-01-03 12:00:00", 8, CART, 8),
        ("p", 8, "2024-01-04 10:00:00", 9, BUY, 9),
        ("p", 9, "2024-01-04 11:00:00", 8, REMOVE, 10),  # cart stays the strongest on 8
        ("p", 10, "2024-01-04 12:00:00", schema.OOV_INDEX, BUY, 11),
        ("p", 11, "2024-01-05 10:00:00", 10, VIEW, 12),  # test window
        ("q", 1, "2024-01-03 10:00:00", 5, VIEW, 0),  # nothing before the window
        ("r", 1, "2024-01-02 10:00:00", 5, VIEW, 0),
        ("r", 2, "2024-01-03 10:00:00", 5, BUY, 1),  # only a seen item in the window
        ("r", 3, "2024-01-03 11:00:00", schema.OOV_INDEX, VIEW, 2),
        ("s", 1, "2024-01-02 10:00:00", 7, VIEW, 0),
        ("s", 2, "2024-01-03 10:00:00", 8, VIEW, 1),
        ("s", 3, "2024-01-03 11:00:00", 9, VIEW, 2),
        ("s", 4, "2024-01-03 12:00:00", 8, REMOVE, 3),
    ]
    return encoded_steps(spark, rows)


def test_validation_rows_history_seen_and_new_in_vocab_targets(spark):
    rows = eval_rows(_eval_steps(spark), CUTOFFS.validation, CUTOFFS.test, max_seq_len=3)
    got = by_user(rows, schema.HIST_ITEMS, schema.HIST_EVENTS, schema.HIST_GAPS, schema.SEEN_ITEMS, schema.TARGET_ITEMS, schema.TARGET_EVENTS)
    code = schema.EVENT_CODE
    assert got == {
        "p": ([6, schema.OOV_INDEX, 7], [code[CART], code[VIEW], code[VIEW]], [3, 4, 5], [5, 6, 7], [9, 8], [code[BUY], code[CART]]),
        "s": ([0, 0, 7], [0, 0, code[VIEW]], [0, 0, 0], [7], [8, 9], [code[REMOVE], code[VIEW]]),
    }


def test_test_rows_history_includes_validation_steps_and_user_history_everything(spark):
    steps = _eval_steps(spark)
    test_rows = eval_rows(steps, CUTOFFS.test, None, max_seq_len=3)
    got = by_user(test_rows, schema.HIST_ITEMS, schema.SEEN_ITEMS, schema.TARGET_ITEMS, schema.TARGET_EVENTS)
    assert got == {"p": ([9, 8, schema.OOV_INDEX], [5, 6, 7, 8, 9], [10], [schema.EVENT_CODE[VIEW]])}

    history = by_user(history_rows(steps, None, max_seq_len=3), schema.HIST_ITEMS, schema.SEEN_ITEMS)
    assert history == {
        "p": ([8, schema.OOV_INDEX, 10], [5, 6, 7, 8, 9, 10]),
        "q": ([0, 0, 5], [5]),
        "r": ([5, 5, schema.OOV_INDEX], [5]),
        "s": ([8, 9, 8], [7, 8, 9]),
    }


# ----------------------------------------------------------------------------- leakage guard


def _bare_events(steps):
    """Events for build_item_vocab: one per step, without side features."""
    side = [f for f in schema.CLEAN_SCHEMA.fields if f.name in (schema.CATEGORY_ID, schema.BRAND, schema.PRICE)]
    return steps.select(
        F.col(STEP_TIME).alias(schema.EVENT_TIME), schema.PRODUCT_ID, *[F.lit(None).cast(f.dataType).alias(f.name) for f in side]
    )


def _guard_inputs(spark):
    # Item ids double as product ids here: the guard only compares counts per product.
    steps = _eval_steps(spark).withColumn(schema.PRODUCT_ID, F.col(schema.ITEM_IDX).cast("long"))
    return {
        "train": train_windows(steps, CUTOFFS.validation, 3, 5),
        "item_vocab": _vocab(steps, CUTOFFS),
        "steps": steps,
        "validation": eval_rows(steps, CUTOFFS.validation, CUTOFFS.test, 3),
        "test": eval_rows(steps, CUTOFFS.test, None, 3),
    }


def _vocab(steps, cutoffs):
    spark = steps.sparkSession
    return vocab.build_item_vocab(steps, _bare_events(steps), cutoffs, 1, 2, empty_vocab(spark, vocab.CATEGORY),
                              empty_vocab(spark, vocab.BRAND))


def _late_history(rows):
    return rows.withColumn(
        HIST_END, F.when(F.col(schema.USER_ID) == "p", F.lit(t("2024-01-05 10:00:00"))).otherwise(F.col(HIST_END))
    )


@pytest.mark.parametrize(
    "table, planted, message",
    [
        # Windows cut at the test cutoff: p's latest two, r's and s's windows hold later steps.
        ("train", lambda inputs: train_windows(inputs["steps"], CUTOFFS.test, 3, 5), "4 of 5 rows"),
        # p's one training window with its steps reversed: targets before their inputs.
        ("train", lambda inputs: inputs["train"].withColumn(WINDOW_TIMES, F.reverse(WINDOW_TIMES)), "1 of 1 rows"),
        # Counted up to the test cutoff: 5, 6, 1, 9, 8 gain steps; only 7 keeps its count.
        ("item_vocab", lambda inputs: _vocab(
            inputs["steps"], Cutoffs(CUTOFFS.data_start, CUTOFFS.data_end, CUTOFFS.test, CUTOFFS.test)), "5 of 6 rows"),
        ("validation", lambda inputs: _late_history(inputs["validation"]), "1 of 2 rows"),
        ("test", lambda inputs: _late_history(inputs["test"]), "1 of 1 rows"),
    ],
)
def test_leakage_guard_names_the_table_and_the_offending_rows(spark, table, planted, message):
    inputs = _guard_inputs(spark)
    assert check_no_leakage(**inputs, cutoffs=CUTOFFS)["train_windows"] == 1  # clean inputs pass
    inputs[table] = planted(inputs)
    with pytest.raises(DataQualityError, match=f"leakage in {table}: {message}"):
        check_no_leakage(**inputs, cutoffs=CUTOFFS)


def test_leakage_guard_checks_each_row_against_its_own_users_cutoffs(spark):
    # leave_last_out: p's cutoffs two days before the global ones; r and s keep the global ones.
    inputs = _guard_inputs(spark)
    early = {"p": (t("2024-01-01 00:00:00"), t("2024-01-03 00:00:00"))}
    users = spark.createDataFrame(
        [(user, *early.get(user, (CUTOFFS.validation, CUTOFFS.test))) for user in ("p", "q", "r", "s")],
        schema.USER_SPLIT_SCHEMA)
    split = Split("leave_last_out", CUTOFFS.data_start, CUTOFFS.data_end, users=users)
    # The tables built on the global cutoffs: p's training window and validation history now
    # lie after p's own validation target.
    with pytest.raises(DataQualityError, match=r"^leakage in train: 1 of 1 rows hold a step at or after each user's "
                       r"validation target"):
        check_no_leakage(**{**inputs, "steps": split.attach(inputs["steps"])}, cutoffs=split)
    # Built on the per-user cutoffs, they pass.
    steps = split.attach(inputs["steps"])
    rebuilt = {
        "train": train_windows(steps, split.validation, 3, 5),
        "item_vocab": _vocab(steps, split),
        "steps": steps,
        "validation": eval_rows(steps, split.validation, split.test, 3),
        "test": eval_rows(steps, split.test, None, 3),
    }
    counts = check_no_leakage(**rebuilt, cutoffs=split)
    assert counts["train_windows"] == inputs["train"].count() - 1  # p has no step before 01-01


def _feature_events(spark):
    return clean_events(spark, [
        ("u1", "2024-01-01 10:00:00", VIEW, 10, 7, "acme", 5.0),
        ("u1", "2024-01-02 10:00:00", BUY, 10, 7, "acme", 5.0),
        ("u1", "2024-01-04 10:00:00", VIEW, 20, 7, "acme", 9.0),  # validation period
        ("u2", "2024-01-02 12:00:00", CART, 20, 7, "acme", 9.0),
        ("u2", "2024-01-05 10:00:00", VIEW, 10, 7, "acme", 5.0),  # test period
    ])


@pytest.mark.parametrize("table", ["item_features", "user_features"])
def test_leakage_guard_catches_features_computed_past_their_as_of(spark, table):
    events = _feature_events(spark)
    vocabs = {spec.kind: empty_vocab(spark, spec) for spec in vocab.SPECS}
    build = {
        "item_features": lambda as_of: item_features(events, "train", as_of, 10, 2, vocabs),
        "user_features": lambda as_of: user_features(events, "train", as_of, vocabs["user"]),
    }[table]
    inputs = {**_guard_inputs(spark), "events": events, "popularity_days": 10}
    counts = check_no_leakage(**inputs, cutoffs=CUTOFFS, **{table: build(CUTOFFS.validation)})
    assert counts[table.replace("features", "feature_rows")] == 2  # products 10, 20 / users u1, u2
    # Computed as of the test cutoff but labelled as of the validation cutoff: product 20 and
    # user u1 use their 01-04 event; product 10 and u2 have nothing between the cutoffs.
    planted = build(CUTOFFS.test).withColumn(schema.AS_OF, F.lit(CUTOFFS.validation))
    with pytest.raises(DataQualityError, match=f"leakage in {table}: 1 of 2 rows use an event at or after"):
        check_no_leakage(**inputs, cutoffs=CUTOFFS, **{table: planted})
    # A count taken over later events while first/last seen look right: caught by the recount.
    key, first, column = (schema.PRODUCT_ID, 10, schema.POPULARITY) if table == "item_features" else (schema.USER_ID, "u1", schema.N_EVENTS)
    inflated = build(CUTOFFS.validation).withColumn(column, F.col(column) + F.when(F.col(key) == first, 1).otherwise(0))
    with pytest.raises(DataQualityError, match=f"leakage in {table}: 1 of 2 rows .* other than its recount"):
        check_no_leakage(**inputs, cutoffs=CUTOFFS, **{table: inflated})


# ----------------------------------------------------------------------------- the stage


def test_run_writes_every_table_with_its_schema_and_the_metadata(spark, tmp_path):
    # Days 01-02 train, 03 validation, 04 test (one day each). All views but one cart.
    visits = [
        ("u1", "01 10", 100), ("u1", "01 11", 200), ("u1", "02 12", 100), ("u1", "02 13", 300),
        ("u1", "03 14", 200), ("u1", "03 15", 400), ("u1", "04 16", 500),
        ("u2", "01 10", 200), ("u2", "01 11", 300), ("u2", "02 12", 400), ("u2", "03 13", 100), ("u2", "04 14", 600),
        ("u3", "02 10", 300), ("u3", "02 11", 300), ("u3", "02 12", 200), ("u3", "03 13", 500), ("u3", "04 14", 100),
    ]
    rows = [
        (user, f"2024-01-{when}:00:00", CART if (user, when) == ("u3", "02 11") else VIEW, product, 7, "acme", 1.0 * product)
        for user, when, product in visits
    ]
    overrides = [
        f"paths.root={tmp_path}",
        "featurize.validation_days=1",
        "featurize.test_days=1",
        "featurize.max_seq_len=3",
        "featurize.min_item_count=1",
        "featurize.train_files=2",
        "featurize.row_group_mb=1",
        "featurize.min_brand_count=1",
        "featurize.dq_min_drift_events=1",  # drift of a 4-event period is enforced here
        "featurize.min_eval_users=1",
    ]
    cfg = load_config(None, overrides)
    io.write_partitioned(clean_events(spark, rows), cfg.paths.resolve("clean"), schema.EVENT_DATE)

    # The default thresholds stop the job: the validation day has no cart (train: 1 in 10 steps).
    with pytest.raises(DataQualityError, match=r"^data quality check drift.event_mix_psi.validation = 0.7\d* exceeds "
                       r"featurize.dq_max_event_mix_psi = 0.25( and \d more check\(s\))?(: [^()]*)? \(report: .*featurize_quality.json\) "
                       r"\(to accept it: featurize.dq_max_event_mix_psi=0.7\d*[^()]*\)$"):
        featurize.run(spark, cfg)
    failed = json.loads((tmp_path / "reports" / schema.FEATURE_QUALITY_REPORT).read_text())
    assert failed["passed"] is False and failed["events"] == {"train": 10, "validation": 4, "test": 3}
    assert not (tmp_path / "features").exists()

    loose = ["featurize.dq_max_event_mix_psi=1.0", "featurize.dq_max_popularity_psi=20", "featurize.dq_max_oov_rate=1.0"]
    cfg = load_config(None, overrides + loose)
    summary = featurize.run(spark, cfg)

    root = cfg.paths.resolve("features")
    schemas = {"item_vocab": schema.ITEM_VOCAB_SCHEMA, "train": schema.TRAIN_TABLE_SCHEMA, "validation": schema.EVAL_SCHEMA,
               "test": schema.EVAL_SCHEMA, "user_history": schema.USER_HISTORY_SCHEMA,
               "category_vocab": schema.CATEGORY_VOCAB_SCHEMA, "brand_vocab": schema.BRAND_VOCAB_SCHEMA,
               "user_vocab": schema.USER_VOCAB_SCHEMA, "item_features": schema.ITEM_FEATURES_SCHEMA,
               "user_features": schema.USER_FEATURES_SCHEMA, "user_split": schema.USER_SPLIT_SCHEMA,
               "feedback_counts": schema.FEEDBACK_COUNTS_SCHEMA}
    assert set(schemas) == set(schema.FEATURE_TABLES)
    tables = {}
    for name, struct in schemas.items():
        tables[name] = spark.read.parquet(io.feature_path(root, name))
        assert tables[name].schema.simpleString() == struct.simpleString(), name
    metadata = json.loads((tmp_path / "features" / schema.FEATURE_METADATA).read_text())

    # Train steps (before 01-03): 100 x2 (u1), 200 x3, 300 x3 (u3's view+cart is one step),
    # 400 x1 -> idx 200: 2, 300: 3, 100: 4, 400: 5; 500, 600 never in training -> OOV.
    item_vocab = {r[schema.PRODUCT_ID]: (r[schema.ITEM_IDX], r[schema.TRAIN_COUNT], r[schema.PRETEST_COUNT]) for r in tables["item_vocab"].collect()}
    assert item_vocab == {200: (2, 3, 4), 300: (3, 3, 3), 100: (4, 2, 3), 400: (5, 1, 2)}
    # Windows (L = 3): u1 [100 200 100 300], u2 [200 300 400], u3 [300 200].
    assert sorted(r[schema.ITEM_SEQ] for r in tables["train"].collect()) == [[0, 0, 3, 2], [0, 2, 3, 5], [4, 2, 4, 3]]
    assert len(list((tmp_path / "features" / "train").glob("*.parquet"))) == 2
    # Validation: u1 200 (seen), 400 (new); u2 100 (new); u3 500 (OOV) -> dropped.
    assert by_user(tables["validation"], schema.TARGET_ITEMS) == {"u1": ([5],), "u2": ([4],)}
    # Test: u1 500 and u2 600 are OOV; u3 100 is new.
    assert by_user(tables["test"], schema.HIST_ITEMS, schema.SEEN_ITEMS, schema.TARGET_ITEMS) == {"u3": ([3, 2, 1], [2, 3], [4])}
    # u1's last three steps: 200, 400, 500 (OOV).
    assert by_user(tables["user_history"], schema.HIST_ITEMS, schema.SEEN_ITEMS)["u1"] == ([2, 5, 1], [2, 3, 4, 5])
    assert tables["user_history"].count() == 3

    # Users by training events: u1 4, u2 3, u3 3 -> 2, 3, 4 (ties by id).
    assert sorted(tuple(r) for r in tables["user_vocab"].collect()) == [(2, "u1", 4), (3, "u2", 3), (4, "u3", 3)]
    # u3 as of the validation cutoff: 2 views and a cart in one session, the last at 01-02 12:00.
    [u3] = tables["user_features"].where("snapshot = 'train' and user_id = 'u3'").collect()
    assert (u3[schema.USER_IDX], u3["n_view"], u3["n_cart"], u3[schema.N_EVENTS], u3[schema.N_SESSIONS], u3[schema.PURCHASE_RATE],
            u3[schema.RECENCY_DAYS]) == (4, 2, 1, 3, 1, 0.0, 0.5)
    assert {r[0]: r[1] for r in tables["user_features"].groupBy(schema.SNAPSHOT).count().collect()} == {
        "train": 3, "test": 3, "serve": 3}

    vocab_meta = metadata.pop("vocab")
    assert {k: (v["size"], v["num_indices"]) for k, v in vocab_meta.items()} == {
        "item": (4, 6), "category": (1, 3), "brand": (1, 3), "user": (3, 5)}
    assert all(len(v["version"]) == 16 for v in vocab_meta.values()) and len(metadata.pop("vocab_version")) == 16
    assert metadata.pop("quality_report").endswith(schema.FEATURE_QUALITY_REPORT)
    assert metadata == {
        "num_items": 6, "num_categories": 3, "num_brands": 3, "num_users": 5, "num_price_buckets": 11,
        "num_event_codes": schema.NUM_EVENT_CODES, "num_gap_buckets": schema.NUM_GAP_BUCKETS, "max_seq_len": 3,
        "data_start": "2024-01-01T10:00:00+00:00", "data_end": "2024-01-04T16:00:00+00:00",
        "validation_cutoff": "2024-01-03T00:00:00+00:00", "test_cutoff": "2024-01-04T00:00:00+00:00",
        "snapshots": {"train": "2024-01-03T00:00:00+00:00", "test": "2024-01-04T00:00:00+00:00",
                      "serve": "2024-01-05T00:00:00+00:00"},
        "train_files": 2, "vocab_from": "", "vocab_mode": "build", "protocol": "temporal",
        "protocol_reason": "evaluate.protocol=auto: validation and test hold 3 and 3 users",
        "counts": {"steps": 16, "users": 3, "items_in_vocab": 4, "train_windows": 3,
                   "validation_users": 2, "test_users": 1, "item_feature_rows": 4 + 5 + 6,
                   "user_feature_rows": 9, "training_steps": 4 + 3 + 2, "unused_training_steps": 0},
    }
    assert summary["train_windows"] == 3 and summary["train"] == io.feature_path(root, "train")

    client = mlflow.MlflowClient(cfg.tracking_uri)
    [stage_run] = client.search_runs(
        [client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id], "tags.stage = 'featurize' and attributes.status = 'FINISHED'"
    )
    assert stage_run.data.metrics["train_windows"] == 3 and stage_run.data.metrics["test_users"] == 1
    artifacts = [a.path for a in client.list_artifacts(stage_run.info.run_id)]
    assert schema.FEATURE_METADATA in artifacts and schema.FEATURE_QUALITY_REPORT in artifacts
    assert stage_run.data.params["vocab.item.version"] == vocab_meta["item"]["version"]


# The toy log of the test above: u1 new items 100 200 300 400 500, u2 200 300 400 100 600,
# u3 300 (view + cart: one step) 200 500 100.
TOY_VISITS = [
    ("u1", "01 10", 100), ("u1", "01 11", 200), ("u1", "02 12", 100), ("u1", "02 13", 300),
    ("u1", "03 14", 200), ("u1", "03 15", 400), ("u1", "04 16", 500),
    ("u2", "01 10", 200), ("u2", "01 11", 300), ("u2", "02 12", 400), ("u2", "03 13", 100), ("u2", "04 14", 600),
    ("u3", "02 10", 300), ("u3", "02 11", 300), ("u3", "02 12", 200), ("u3", "03 13", 500), ("u3", "04 14", 100),
]
LOOSE_QUALITY = ["featurize.dq_max_event_mix_psi=1.0", "featurize.dq_max_popularity_psi=20",
                 "featurize.dq_max_oov_rate=1.0", "featurize.min_brand_count=1"]


def write_toy(spark, cfg, visits=TOY_VISITS):
    rows = [
        (user, f"2024-01-{when}:00:00", CART if (user, when) == ("u3", "02 11") else VIEW, product, 7, "acme", 1.0 * product)
        for user, when, product in visits
    ]
    io.write_partitioned(clean_events(spark, rows), cfg.paths.resolve("clean"), schema.EVENT_DATE)


def test_leave_last_out_splits_each_user_at_their_last_two_new_items(spark, tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}", "evaluate.protocol=leave_last_out", "featurize.max_seq_len=3",
                             "featurize.min_item_count=1", "featurize.train_files=2", "featurize.row_group_mb=1",
                             "featurize.min_eval_users=1", *LOOSE_QUALITY])
    write_toy(spark, cfg)
    summary = featurize.run(spark, cfg)
    root = cfg.paths.resolve("features")
    read = lambda name: spark.read.parquet(io.feature_path(root, name))  # noqa: E731

    # Validation / test targets: u1 400 (03 15) / 500 (04 16), u2 100 (03 13) / 600 (04 14),
    # u3 500 (03 13) / 100 (04 14). Training: u1 100 200 100 300 200, u2 200 300 400, u3 300 200.
    split = {r[schema.USER_ID]: (r[schema.VALIDATION_AT].day, r[schema.VALIDATION_AT].hour, r[schema.TEST_AT].day, r[schema.TEST_AT].hour)
             for r in read("user_split").collect()}
    assert split == {"u1": (3, 15, 4, 16), "u2": (3, 13, 4, 14), "u3": (3, 13, 4, 14)}
    # Training steps: 200 x4, 300 x3, 100 x2, 400 x1 -> 2, 3, 4, 5. Before each test target:
    # 100 3, 200 4, 300 3, 400 2 (and 500 once, outside the vocabulary).
    item_vocab = {r[schema.PRODUCT_ID]: (r[schema.ITEM_IDX], r[schema.TRAIN_COUNT], r[schema.PRETEST_COUNT]) for r in read("item_vocab").collect()}
    assert item_vocab == {200: (2, 4, 4), 300: (3, 3, 3), 100: (4, 2, 3), 400: (5, 1, 2)}
    # L = 3: u1's five steps make two windows [200 100 300 200] and [100 200]; the temporal
    # split gave u1 one window, without its step of 01-03 14:00.
    assert sorted(r[schema.ITEM_SEQ] for r in read("train").collect()) == [
        [0, 0, 3, 2], [0, 0, 4, 2], [0, 2, 3, 5], [2, 4, 3, 2]]
    assert by_user(read("validation"), schema.TARGET_ITEMS) == {"u1": ([5],), "u2": ([4],)}  # u3's 500: OOV
    assert by_user(read("test"), schema.HIST_ITEMS, schema.SEEN_ITEMS, schema.TARGET_ITEMS) == {"u3": ([3, 2, 1], [2, 3], [4])}
    # The "train" snapshot counts each user's events before their validation target.
    n_events = {r[schema.USER_ID]: r[schema.N_EVENTS] for r in read("user_features").where("snapshot = 'train'").collect()}
    assert n_events == {"u1": 5, "u2": 3, "u3": 3}
    metadata = json.loads((tmp_path / "features" / schema.FEATURE_METADATA).read_text())
    assert (metadata["protocol"], metadata["validation_cutoff"], metadata["test_cutoff"]) == ("leave_last_out", None, None)
    assert metadata["counts"]["validation_users"] == 2 and metadata["counts"]["test_users"] == 1
    assert summary["protocol"] == "leave_last_out" and "warning" not in summary


def test_auto_switches_to_leave_last_out_when_the_test_period_is_thin_and_says_so(spark, tmp_path):
    # Five users over days 1-3 (user i visits products 10..15 from 10 + i on, two a day), and u1
    # on day 5 (999, new and unknown, then 11): the temporal test period would hold one user in
    # five, below featurize.min_eval_user_share = 0.5.
    visits = [(f"u{i + 1}", f"0{k // 2 + 1} 1{k % 2}", 10 + (k + i) % 6) for i in range(5) for k in range(6)]
    visits += [("u1", "05 10", 999), ("u1", "05 11", 11)]
    overrides = [f"paths.root={tmp_path}", "featurize.validation_days=1", "featurize.test_days=1",
                 "featurize.min_item_count=1", "featurize.min_eval_users=1", "featurize.min_eval_user_share=0.5",
                 *LOOSE_QUALITY]
    cfg = load_config(None, overrides)
    write_toy(spark, cfg, visits)
    summary = featurize.run(spark, cfg)
    assert summary["protocol"] == "leave_last_out"
    assert summary["warning"].startswith("evaluate.protocol=auto chose leave_last_out: the temporal split's periods "
                                         "hold too few users with a new item (validation 0, test 1 of 5 users; "
                                         "at least 3 needed")
    # Test targets: u1 999 (outside the vocabulary: no row), u2..u5 their sixth product, which
    # other users trained on; validation targets: every user's second-to-last new product.
    root = cfg.paths.resolve("features")
    assert {r[schema.USER_ID] for r in spark.read.parquet(io.feature_path(root, "test")).collect()} == {"u2", "u3", "u4", "u5"}
    assert spark.read.parquet(io.feature_path(root, "validation")).count() == 5

    explicit = load_config(None, [*overrides, "evaluate.protocol=temporal"])
    with pytest.raises(DataQualityError, match=r"^featurize: the temporal split's periods hold too few users .*: set "
                       r"evaluate.protocol=leave_last_out \(or auto\), or give the periods more days$"):
        featurize.run(spark, explicit)


def test_auto_uses_leave_last_out_on_a_log_too_short_for_the_temporal_split(spark, tmp_path):
    # One day: u1 visits 10..14, u2 12, 13, 14, 10, 11 (each trains the other's targets).
    visits = [(user, f"01 1{slot}", 10 + (slot + 2 * i) % 5) for i, user in enumerate(("u1", "u2")) for slot in range(5)]
    cfg = load_config(None, [f"paths.root={tmp_path}", "featurize.min_item_count=1", "featurize.min_eval_users=1",
                             *LOOSE_QUALITY])
    write_toy(spark, cfg, visits)
    summary = featurize.run(spark, cfg)
    assert summary["protocol"] == "leave_last_out" and "leaves no training period" in summary["warning"]
    with pytest.raises(InputError, match="featurize.validation_days"):
        featurize.run(spark, load_config(None, [*cfg_overrides(cfg), "evaluate.protocol=temporal"]))


def cfg_overrides(cfg) -> list[str]:
    return [f"paths.root={cfg.paths.root}", "featurize.min_item_count=1", "featurize.min_eval_users=1", *LOOSE_QUALITY]


def test_a_window_length_below_one_is_rejected_with_the_config(tmp_path):
    with pytest.raises(ConfigError, match="featurize.max_seq_len must be >= 1"):
        load_config(None, [f"paths.root={tmp_path}", "featurize.max_seq_len=0"])


def test_too_few_evaluation_users_stop_naming_the_keys():
    cutoffs = temporal_split(CUTOFFS)
    fc = load_config(None, ["featurize.min_eval_users=100", "featurize.test_days=3"]).featurize
    featurize.check_eval_users({"validation_users": 100, "test_users": 100}, cutoffs, fc)
    with pytest.raises(DataQualityError, match=r"^featurize: the test period \(3 day\(s\) from .*\) holds 14 user\(s\) "
                       r"with a new item, fewer than featurize.min_eval_users=100: .*featurize.test_days=6\), "
                       r"evaluate.protocol=leave_last_out or more data \(to accept it: featurize.min_eval_users=14\)$"):
        featurize.check_eval_users({"validation_users": 100, "test_users": 14}, cutoffs, fc)
    with pytest.raises(DataQualityError, match=r"the validation period .* holds 0 user\(s\).*more data$"):
        featurize.check_eval_users({"validation_users": 0, "test_users": 100}, cutoffs, fc)


def test_training_steps_in_no_window_warn_then_stop_and_no_window_at_all_stops():
    fc = load_config(None, ["featurize.max_unused_step_share=0.5"]).featurize
    counts = {"users": 10, "train_windows": 4, "training_steps": 100}
    assert featurize.check_training_steps({**counts, "unused_training_steps": 10}, fc) == ""
    warning = featurize.check_training_steps({**counts, "unused_training_steps": 30}, fc)
    assert warning.startswith("30.0% of the 100 training steps are in no training window (30: a user's only step")
    assert warning.endswith("the stop is at featurize.max_unused_step_share=0.5")
    with pytest.raises(DataQualityError, match=r"^featurize: 62\.0% .*more than featurize\.max_unused_step_share=0\.5: "
                                               r".*\(to accept it: featurize\.max_unused_step_share=0\.62\)$"):
        featurize.check_training_steps({**counts, "unused_training_steps": 62}, fc)
    with pytest.raises(DataQualityError, match="^featurize: no training window: none of the 10 users has two steps"):
        featurize.check_training_steps({**counts, "train_windows": 0, "unused_training_steps": 10}, fc)


def test_unused_training_steps_are_single_steps_and_steps_past_the_window_cap(spark):
    # L = 2, at most 1 window: u1's 5 training steps -> the last 3 in its window, 2 unused;
    # u2's single training step is unused; u3 has 2 (both used) and one after the cutoff.
    rows = [("u1", f"2024-01-01 0{i}:00:00") for i in range(5)] + [("u2", "2024-01-01 05:00:00")] + [
        ("u3", "2024-01-01 06:00:00"), ("u3", "2024-01-01 07:00:00"), ("u3", "2024-01-03 07:00:00")]
    steps = spark.createDataFrame(rows, "user_id string, t string").select(
        "user_id", F.to_timestamp("t").alias(STEP_TIME))
    fc = load_config(None, ["featurize.max_seq_len=2", "featurize.max_windows_per_user=1"]).featurize
    day = [dt.datetime(2024, 1, d, tzinfo=dt.timezone.utc) for d in (1, 2, 3, 4)]
    split = temporal_split(Cutoffs(day[0], day[3], day[1], day[2]), "test")
    assert featurize.unused_training_steps(steps, split, fc) == {"training_steps": 8, "unused_training_steps": 3}
