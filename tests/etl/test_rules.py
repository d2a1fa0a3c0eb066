"""clean's multi-row rules on inline events: duplicates, near-duplicates, sessions, bots, and the
pseudonyms (keyed, absent from query plans)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.etl import rules
from recsys_spark.etl.pseudonym import (
    hmac_pads, pseudonymise, redact_csv_line, redact_json_line, with_key,
)
from recsys_spark.etl.validate import BUCKET, MICROS

pytestmark = pytest.mark.unit

UTC = dt.timezone.utc
DAY = dt.date(2019, 10, 1)
EVENT_SCHEMA = T.StructType([
    T.StructField(MICROS, T.LongType()), T.StructField(schema.EVENT_TIME, T.TimestampType()),
    T.StructField(schema.EVENT_TYPE, T.StringType()), T.StructField(schema.PRODUCT_ID, T.LongType()),
    T.StructField(schema.CATEGORY_ID, T.LongType()), T.StructField(schema.CATEGORY_CODE, T.StringType()),
    T.StructField(schema.BRAND, T.StringType()), T.StructField(schema.PRICE, T.DoubleType()),
    T.StructField(schema.USER_ID, T.LongType()), T.StructField(schema.USER_SESSION, T.StringType()),
    T.StructField(schema.EVENT_DATE, T.DateType()), T.StructField(BUCKET, T.IntegerType()),
    T.StructField("label", T.StringType()),
])
T0 = int(dt.datetime(2019, 10, 1, 10, 0, tzinfo=UTC).timestamp()) * 1_000_000


def event(label, seconds, kind="view", product=1, user=5, session="s1", price=9.99):
    micros = T0 + int(seconds * 1_000_000)
    time = dt.datetime.fromtimestamp(micros / 1e6, UTC)
    return (micros, time, kind, product, 7, "c", "b", price, user, session, DAY, 0, label)


def frame(spark, rows):
    return spark.createDataFrame(rows, EVENT_SCHEMA)


RULES = rules.BehaviourRules(near_duplicate_seconds=2, bot_max_events_per_minute=5,
                             bot_max_distinct_items_per_session=4, session_gap_minutes=30, max_session_minutes=60)


def test_exact_and_near_duplicates(spark):
    rows = [
        event("first", 0),
        event("exact_copy", 0),
        event("double_click_1s", 1),
        event("chained_2s_later", 3),  # 2 s after the previous click: still a burst
        event("3s_later", 6.5),  # 3.5 s after: a new click
        event("other_type", 1, kind="cart"),
        event("other_item", 1, product=2),
        event("other_session", 1, session="s2"),
        event("cheaper_same_time", 0, price=1.0),  # sorts first at 0 s, so "first" is its near-duplicate
    ]
    got = {r.label: (r[rules._DUP], r[rules._NEAR]) for r in rules.flag_duplicates(frame(spark, rows), 2).collect()}
    assert got == {
        "cheaper_same_time": (False, False), "first": (False, True), "exact_copy": (True, False),
        "double_click_1s": (False, True), "chained_2s_later": (False, True), "3s_later": (False, False),
        "other_type": (False, False), "other_item": (False, False), "other_session": (False, False),
    }


def test_distinct_items_and_start_of_source_sessions(spark):
    rows = [event("a", 50, product=1), event("b", 10, product=2), event("b_again", 20, product=2, kind="cart"),
            event("c", 30, product=3), event("other", 5, product=1, session="s2")]
    got = {r.label: (r[rules._DISTINCT], r[rules._SOURCE_START]) for r in
           rules.flag_duplicates(frame(spark, rows), 1).collect()}
    s1 = (3, T0 + 10_000_000)
    assert got == {"a": s1, "b": s1, "b_again": s1, "c": s1, "other": (1, T0 + 5_000_000)}


def _behaviour(spark, rows):
    flagged = rules.flag_duplicates(frame(spark, rows), RULES.near_duplicate_seconds)
    return {r.label: r for r in rules.sessionise_and_flag_bots(flagged, RULES).collect()}


def test_sessions_by_gap_and_overlong_split(spark):
    rows = [
        event("first", 0, session=None),
        event("exactly_30_min", 30 * 60, session=None),
        event("30_min_1_s_later", 60 * 60 + 1, session=None),
        event("given", 61 * 60, session="s9"),  # its own session, does not split the others
        event("25_min_into_it", 60 * 60 + 1 + 25 * 60, session=None),
        event("50_min_into_it", 60 * 60 + 1 + 50 * 60, session=None),
        event("70_min_into_it", 60 * 60 + 1 + 70 * 60, session=None),  # over max_session_minutes=60: piece 1
        event("s9_61_min_later", 122 * 60, session="s9"),
        event("other_user", 0, session=None, user=6),
    ]
    got = {label: (r["_session_start"], r["_piece"]) for label, r in _behaviour(spark, rows).items()}
    second = T0 + (60 * 60 + 1) * 1_000_000
    assert got == {
        "first": (T0, 0), "exactly_30_min": (T0, 0), "30_min_1_s_later": (second, 0),
        "25_min_into_it": (second, 0), "50_min_into_it": (second, 0),
        "given": (T0 + 61 * 60 * 1_000_000, 0), "70_min_into_it": (second, 1),
        "s9_61_min_later": (T0 + 61 * 60 * 1_000_000, 1), "other_user": (T0, 0),
    }


def test_bots_by_rate_and_by_distinct_items(spark):
    rows = [event(f"fast{i}", 10 * i, user=7, product=100 + i % 2) for i in range(6)]  # 6 events in 51 s
    rows += [event(f"paced{i}", 12 * i, user=8, product=100 + i % 2) for i in range(6)]  # 6 in 61 s: 5 per minute
    rows += [event(f"browser{i}", 100 * i, user=9, product=200 + i) for i in range(5)]  # 5 distinct items
    rows += [event(f"two_sessions{i}", 100 * i, user=10, product=300 + i, session=f"x{i % 2}") for i in range(6)]
    rows += [event(f"burst{i}", 0, user=11, product=400 + i % 2, price=1.0 + i) for i in range(6)]  # 6 at one time
    rows += [event(f"tied{i}", 59.5 * (i // 5), user=12, product=400 + i % 2, price=1.0 + i) for i in range(10)]
    got = _behaviour(spark, rows)
    bots = {label.rstrip("0123456789") for label, r in got.items() if r[rules._BOT]}
    # tied: 5 events at 0 s and 5 at 59.5 s, so 10 in some 60 s
    assert bots == {"fast", "browser", "burst", "tied"}  # 3 items per session for user 10: not a bot


def test_clean_events_counts_each_fate_and_hides_raw_ids(spark):
    rows = [event("keep", 0), event("dup", 0), event("near", 1), event("later", 100, product=2)]
    rows += [event(f"bot{i}", i, user=99, product=500 + i) for i in range(6)]  # 6 items: leaves before the rate rule
    rows += [event(f"fast{i}", 3 * i, user=98, product=600 + i % 2) for i in range(6)]  # 2 items, 6 in 15 s
    out, fates = rules.clean_events(frame(spark, rows).drop("label"), b"k", RULES)
    kept = out.collect()
    counts = fates.counts(timeout_s=30)
    # user-days: users 5 (keep, dup, near, later), 99 and 98, one day each
    assert counts == {"valid": 16, "duplicates": 1, "near_duplicates": 1, "user_days": 3, "item_bot_rows": 6,
                      "item_bot_days": 1, "rate_bot_rows": 6, "rate_bot_days": 1, "bot_rows": 12, "kept": 2}
    assert {c.observation._name: c.observation.get for c in fates.counted}["clean_item_bots"] == {
        "user_days": 3, "item_bot_rows": 6, "item_bot_days": 1}
    assert [(f.name, f.dataType) for f in out.schema.fields] == [(f.name, f.dataType) for f in schema.CLEAN_SCHEMA.fields]
    assert {r[schema.USER_ID] for r in kept} == {hmac.new(b"k", b"5", hashlib.sha256).hexdigest()[:16]}
    assert {r[schema.SESSION_ID] for r in kept} == {"s1"}


def test_generated_session_ids_hash_the_pseudonym(spark):
    rows = [event("a", 0, session=None), event("b", 90 * 60, session=None)]  # a 90-minute gap: two sessions
    out, _ = rules.clean_events(frame(spark, rows).drop("label"), b"k", RULES)
    pseudonym = hmac.new(b"k", b"5", hashlib.sha256).hexdigest()[:16]
    expected = {hashlib.sha256(f"{pseudonym}|{T0 + s * 1_000_000}".encode()).hexdigest()[:32] for s in (0, 5400)}
    assert {r[schema.SESSION_ID] for r in out.collect()} == expected


@pytest.mark.parametrize("key", [b"test-key-not-secret", b"k" * 100, "clé".encode()])
def test_pseudonym_is_hmac_sha256(spark, key):
    ids = [5, 541312140, 9_000_000_000_000_000_000]
    df = spark.createDataFrame([(i,) for i in ids], T.StructType([T.StructField(schema.USER_ID, T.LongType())]))
    got = [r[schema.USER_ID] for r in pseudonymise(df, schema.USER_ID, key).collect()]
    assert got == [hmac.new(key, str(i).encode(), hashlib.sha256).hexdigest()[:16] for i in ids]


def test_the_key_is_in_no_query_plan(spark):
    key = b"plan-secret-key"
    rows = [event("a", 0)]
    out, _ = rules.clean_events(frame(spark, rows).drop("label"), key, RULES)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        out.explain("extended")
        out.explain("formatted")
    plan = buffer.getvalue().lower()
    ipad, opad = hmac_pads(key)
    for secret in (key, ipad, opad):
        assert secret.hex() not in plan and secret.hex()[:16] not in plan
    assert "plan-secret" not in plan and "broadcast" in plan


def test_redacting_malformed_lines(spark):
    df = spark.createDataFrame([("a,b,c,d,e,f,g,541312140,s",), ("a,b,c,d,e,f,g,5413",), ("a,b,c",),
                                ('{"user_id": 541312140, "x": 1}',), ("garbage",)], "line string")
    keyed = with_key(df, b"k")
    got = [tuple(r) for r in keyed.select(redact_csv_line(F.col("line"), 7), redact_csv_line(F.col("line"), 0),
                                          redact_json_line(F.col("line"))).collect()]

    def h(text):
        return hmac.new(b"k", text.encode(), hashlib.sha256).hexdigest()[:16]

    assert [g[0] for g in got] == [f"a,b,c,d,e,f,g,{h('541312140')},s", f"a,b,c,d,e,f,g,{h('5413')}", "a,b,c",
                                   '{"user_id": 541312140, "x": 1}', "garbage"]
    assert got[2][1] == f"{h('a')},b,c" and got[4][1] == h("garbage")
    assert got[3][2] == f'{{"user_id":"{h("541312140")}", "x": 1}}'
