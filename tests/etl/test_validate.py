"""validate: one reason code per rejected row, typed UTC values, aliases, the processed window."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.config import CleanConfig
from recsys_spark.errors import ConfigError
from recsys_spark.etl.validate import (
    BUCKET, IN_WINDOW, MICROS, ORIGINAL, EventWindow, Rules, parse_events, valid_events,
)

pytestmark = pytest.mark.unit

UTC = dt.timezone.utc
# What adapters.read_files returns: the text contract, the parser's corrupt line, the file and
# its date. The tests put a row label in source_file.
RAW_FRAME_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType(), True) for c in [*schema.RAW_COLUMNS, schema.CORRUPT_RECORD, schema.SOURCE_FILE]]
    + [T.StructField(schema.LOAD_DATE, T.DateType(), True)]
)
OK = "2019-10-01 10:00:00 UTC"  # epoch 1569924000
OK_MICROS = 1_569_924_000_000_000
OCT1, OCT2 = dt.date(2019, 10, 1), dt.date(2019, 10, 2)
WINDOW = EventWindow(OCT1, OCT2, dt.datetime(2019, 10, 2, 12, 0, tzinfo=UTC))
RULES = Rules(max_price=1000.0, event_aliases={"addtocart": "cart", "transaction": "purchase"})


def raw_row(label, time=OK, kind="view", product="100", category="7", code="electronics", brand="acme",
            price="9.99", user="5", session="s1", corrupt=None, load_date=None):
    return (time, kind, product, category, code, brand, price, user, session, corrupt, label, load_date)


def raw_frame(spark, rows):
    return spark.createDataFrame(rows, RAW_FRAME_SCHEMA)


def micros(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000


# label -> (raw row, expected reason: None = valid)
CASES = {
    "valid": (raw_row("valid"), None),
    "malformed": (raw_row("malformed", category=None, code=None, brand=None, price=None, user=None, session=None,
                          corrupt=f"{OK},view,100"), schema.REASON_MALFORMED),
    "hour25": (raw_row("hour25", time="2019-10-01 25:00:00 UTC"), schema.REASON_BAD_TIME),
    "date_only": (raw_row("date_only", time="2019-10-01"), schema.REASON_BAD_TIME),
    "words_and_no_user": (raw_row("words_and_no_user", time="yesterday", user=None), schema.REASON_BAD_TIME),
    "late_in_its_file": (raw_row("late_in_its_file", time="2019-10-01 23:59:59 UTC", load_date=OCT2),
                         schema.REASON_OUT_OF_WINDOW),
    "in_its_file": (raw_row("in_its_file", load_date=OCT1), None),
    "future": (raw_row("future", time="2019-10-02 12:00:01 UTC"), schema.REASON_FUTURE),
    "at_not_after": (raw_row("at_not_after", time="2019-10-02T12:00:00Z"), None),
    "blank_user": (raw_row("blank_user", user="  "), schema.REASON_NULL_USER),
    "no_product": (raw_row("no_product", product=None), schema.REASON_NULL_PRODUCT),
    "user_5x": (raw_row("user_5x", user="5x"), schema.REASON_BAD_ID),
    "category_abc": (raw_row("category_abc", category="abc"), schema.REASON_BAD_ID),
    "product_decimal": (raw_row("product_decimal", product="1.0"), schema.REASON_BAD_ID),
    "click": (raw_row("click", kind="click"), schema.REASON_UNKNOWN_EVENT),
    "addtocart_alias": (raw_row("addtocart_alias", kind=" AddToCart"), None),
    "no_type_bad_price": (raw_row("no_type_bad_price", kind=None, price="-5"), schema.REASON_UNKNOWN_EVENT),
    "iso_offset_cart": (raw_row("iso_offset_cart", time="2019-10-01T12:00:00+02:00", kind=" CART ", category="",
                                price=None), None),
    "negative_price": (raw_row("negative_price", price="-1"), schema.REASON_BAD_PRICE),
    "price_text": (raw_row("price_text", price="abc"), schema.REASON_BAD_PRICE),
    "price_over_max": (raw_row("price_over_max", price="1000.01"), schema.REASON_BAD_PRICE),
    "price_nan": (raw_row("price_nan", price="NaN"), schema.REASON_BAD_PRICE),
    "price_at_max_naive_iso": (raw_row("price_at_max_naive_iso", time="2019-10-01T23:59:59.5", price="1000"), None),
}


@pytest.fixture(scope="module")
def parsed(spark):
    raw = raw_frame(spark, [row for row, _ in CASES.values()])
    return parse_events(raw, WINDOW, RULES).cache()


def test_every_row_gets_the_first_reason_it_breaks(parsed):
    got = {r[schema.SOURCE_FILE]: r[schema.REASON] for r in parsed.select(
        F.coalesce(schema.SOURCE_FILE, F.lit("?")).alias(schema.SOURCE_FILE), schema.REASON).collect()}
    # source_file is kept for rejected rows only
    expected = {label: reason for label, (_, reason) in CASES.items() if reason is not None}
    assert {k: v for k, v in got.items() if k != "?"} == expected
    assert set(schema.REASON_CODES) <= set(expected.values())


def test_valid_rows_are_typed_in_utc(parsed):
    columns = [MICROS, *[c for c in schema.RAW_COLUMNS if c != schema.EVENT_TIME], schema.EVENT_DATE]
    valid = valid_events(parsed)
    assert valid.columns == [MICROS, *schema.RAW_COLUMNS, schema.EVENT_DATE, BUCKET]
    got = sorted((tuple(r[c] for c in columns) for r in valid.collect()), key=repr)
    ten = (OK_MICROS, "view", 100, 7, "electronics", "acme", 9.99, 5, "s1", OCT1)
    expected = [
        ten,  # valid
        ten,  # in_its_file
        (micros("2019-10-02 12:00:00"), "view", 100, 7, "electronics", "acme", 9.99, 5, "s1", OCT2),
        (OK_MICROS, "cart", 100, 7, "electronics", "acme", 9.99, 5, "s1", OCT1),  # " AddToCart": an alias
        # 12:00 at +02:00 is 10:00 UTC; an empty category is no category
        (OK_MICROS, "cart", 100, None, "electronics", "acme", None, 5, "s1", OCT1),
        # no offset: UTC, so still 1 October
        (micros("2019-10-01 23:59:59") + 500_000, "view", 100, 7, "electronics", "acme", 1000.0, 5, "s1", OCT1),
    ]
    assert got == sorted(expected, key=repr)
    # A valid row's load date is its event date.
    in_window_valid = parsed.where(F.col(schema.REASON).isNull() & F.col(IN_WINDOW))
    assert in_window_valid.where(F.col(schema.LOAD_DATE) != F.col(schema.EVENT_DATE)).count() == 0


def test_rejected_rows_keep_their_original_text(parsed):
    rejected = {r[schema.SOURCE_FILE]: r for r in parsed.where(F.col(schema.REASON).isNotNull()).collect()}
    assert rejected["malformed"][schema.CORRUPT_RECORD] == f"{OK},view,100"
    assert rejected["blank_user"][ORIGINAL][schema.USER_ID] == "  "
    assert rejected["hour25"][ORIGINAL][schema.EVENT_TIME] == "2019-10-01 25:00:00 UTC"
    assert parsed.where(F.col(schema.REASON).isNull() & F.col(ORIGINAL).isNotNull()).count() == 0


def test_undated_rows_outside_the_window_are_not_this_runs(spark):
    raw = raw_frame(spark, [raw_row("old", time="2019-09-30 23:59:59 UTC"),
                            raw_row("inside", time="2019-10-02 00:00:00 UTC"),
                            raw_row("after", time="2019-10-03 00:00:00 UTC"),
                            raw_row("bad_time_undated", time="?"),
                            raw_row("malformed_dated", corrupt="x", load_date=OCT1)])
    got = sorted((r[IN_WINDOW], r[schema.REASON] or "", str(r[schema.LOAD_DATE]))
                 for r in parse_events(raw, WINDOW, RULES).collect())
    assert got == [(False, "", "2019-09-30"), (False, schema.REASON_FUTURE, "2019-10-03"), (True, "", "2019-10-02"),
                   (True, schema.REASON_BAD_TIME, "None"), (True, schema.REASON_MALFORMED, "2019-10-01")]


def test_naive_times_are_read_in_the_configured_zone(spark):
    raw = raw_frame(spark, [raw_row("berlin", time="2019-10-01 10:00:00")])
    rules = Rules(max_price=1000.0, naive_timezone="Europe/Berlin")
    row = parse_events(raw, WINDOW, rules).first()
    assert row[MICROS] == micros("2019-10-01 08:00:00")  # CEST is UTC+2


def test_rules_and_window_check_their_config():
    now = dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert EventWindow.from_config("2019-10-01", "", now) == EventWindow(OCT1, None, now)
    assert EventWindow.from_config("2019-10-01", "2019-10-02", now).dates() == [OCT1, OCT2]
    with pytest.raises(ConfigError, match="clean.end_date"):
        EventWindow.from_config("", "1 Oct", now)
    with pytest.raises(ConfigError, match="after"):
        EventWindow.from_config("2019-10-02", "2019-10-01", now)
    with pytest.raises(ConfigError, match="clean.event_aliases.addtocart: 'basket'"):
        CleanConfig(event_aliases={"addtocart": "basket"})
    with pytest.raises(ConfigError, match="clean.output_files_per_day"):
        CleanConfig(output_files_per_day=0)
    with pytest.raises(ConfigError, match="clean.start_date 2019-10-02 is after clean.end_date 2019-10-01"):
        CleanConfig(start_date="2019-10-02", end_date="2019-10-01")
