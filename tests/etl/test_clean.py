"""clean: reason codes, duplicates, sessions, keyed pseudonyms, the reconciliation and the whole
stage, on a handful of inline raw rows with hand-computed expectations."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import hmac
import json
import logging
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io
from recsys_spark import schema as S
from recsys_spark.config import load_config
from recsys_spark.errors import ConfigError, DataQualityError, InputError
from recsys_spark.etl import clean
from recsys_spark.etl.pseudonym import DEV_KEY, hmac_pads, pseudonym_key, pseudonymise
from recsys_spark.etl.validate import EventWindow, parse_events, quarantine_rows, valid_events

pytestmark = pytest.mark.unit

UTC = dt.timezone.utc
KEY_ENV = "RECSYS_TEST_CLEAN_KEY"
# What io.read_raw returns: the text contract, the parser's corrupt line, the file. The tests
# put a row label in source_file.
RAW_FRAME_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType(), True) for c in [*S.RAW_COLUMNS, S.CORRUPT_RECORD, S.SOURCE_FILE]]
)
OK = "2019-10-01 10:00:00 UTC"  # epoch 1569924000
OK_MICROS = 1_569_924_000_000_000
WINDOW = EventWindow(dt.date(2019, 10, 1), dt.date(2019, 10, 2), dt.datetime(2019, 10, 2, 12, 0, tzinfo=UTC))


def raw_row(label, time=OK, kind="view", product="100", category="7", code="electronics", brand="acme",
            price="9.99", user="5", session="s1", corrupt=None):
    return (time, kind, product, category, code, brand, price, user, session, corrupt, label)


def raw_frame(spark, rows):
    return spark.createDataFrame(rows, RAW_FRAME_SCHEMA)


def micros(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1_000_000


# label -> (raw row, expected reason: None = valid)
CASES = {
    "valid": (raw_row("valid"), None),
    "malformed": (raw_row("malformed", product="100", category=None, code=None, brand=None, price=None,
                          user=None, session=None, corrupt=f"{OK},view,100"), S.REASON_MALFORMED),
    "hour25": (raw_row("hour25", time="2019-10-01 25:00:00 UTC"), S.REASON_BAD_TIME),
    "words_and_no_user": (raw_row("words_and_no_user", time="yesterday", user=None), S.REASON_BAD_TIME),
    "before_start": (raw_row("before_start", time="2019-09-30 23:59:59 UTC"), S.REASON_OUT_OF_WINDOW),
    "after_end": (raw_row("after_end", time="2019-10-03 00:00:00 UTC"), S.REASON_OUT_OF_WINDOW),
    "future": (raw_row("future", time="2019-10-02 12:00:01 UTC"), S.REASON_OUT_OF_WINDOW),
    "at_not_after": (raw_row("at_not_after", time="2019-10-02T12:00:00Z"), None),
    "blank_user": (raw_row("blank_user", user="  "), S.REASON_NULL_USER),
    "no_product": (raw_row("no_product", product=None), S.REASON_NULL_PRODUCT),
    "user_5x": (raw_row("user_5x", user="5x"), S.REASON_BAD_ID),
    "category_abc": (raw_row("category_abc", category="abc"), S.REASON_BAD_ID),
    "product_decimal": (raw_row("product_decimal", product="1.0"), S.REASON_BAD_ID),
    "click": (raw_row("click", kind="click"), S.REASON_UNKNOWN_EVENT),
    "no_type_bad_price": (raw_row("no_type_bad_price", kind=None, price="-5"), S.REASON_UNKNOWN_EVENT),
    "iso_offset_cart": (raw_row("iso_offset_cart", time="2019-10-01T12:00:00+02:00", kind=" CART ", category="",
                                price=None), None),
    "negative_price": (raw_row("negative_price", price="-1"), S.REASON_BAD_PRICE),
    "price_text": (raw_row("price_text", price="abc"), S.REASON_BAD_PRICE),
    "price_over_max": (raw_row("price_over_max", price="1000.01"), S.REASON_BAD_PRICE),
    "price_nan": (raw_row("price_nan", price="NaN"), S.REASON_BAD_PRICE),
    "price_at_max_naive_iso": (raw_row("price_at_max_naive_iso", time="2019-10-01T23:59:59.5", price="1000"), None),
}


@pytest.fixture(scope="module")
def parsed(spark):
    raw = raw_frame(spark, [row for row, _ in CASES.values()])
    return parse_events(raw, WINDOW, max_price=1000.0).cache()


def test_every_row_gets_the_first_reason_it_breaks(parsed):
    got = {r[S.SOURCE_FILE]: r[S.REASON] for r in parsed.select(S.SOURCE_FILE, S.REASON).collect()}
    assert got == {label: reason for label, (_, reason) in CASES.items()}
    assert set(S.REASON_CODES) <= set(got.values())


def test_valid_rows_are_typed_in_utc(parsed):
    rows = {
        r[S.SOURCE_FILE]: r
        for r in parsed.where(F.col(S.REASON).isNull())
        .select("*", F.unix_micros(S.EVENT_TIME).alias("micros"))
        .collect()
    }
    assert set(rows) == {"valid", "at_not_after", "iso_offset_cart", "price_at_max_naive_iso"}
    valid = rows["valid"]
    assert (valid.micros, valid[S.EVENT_TYPE], valid[S.PRODUCT_ID], valid[S.CATEGORY_ID], valid[S.CATEGORY_CODE],
            valid[S.BRAND], valid[S.PRICE], valid[S.USER_ID], valid[S.USER_SESSION], valid[S.EVENT_DATE]) == (
        OK_MICROS, "view", 100, 7, "electronics", "acme", 9.99, 5, "s1", dt.date(2019, 10, 1))
    cart = rows["iso_offset_cart"]  # 12:00 at +02:00 is 10:00 UTC; "" is no category
    assert (cart.micros, cart[S.EVENT_TYPE], cart[S.CATEGORY_ID], cart[S.PRICE]) == (OK_MICROS, "cart", None, None)
    late = rows["price_at_max_naive_iso"]  # no offset: UTC, so still 1 October
    assert (late.micros, late[S.EVENT_DATE], late[S.PRICE]) == (
        micros("2019-10-01 23:59:59") + 500_000, dt.date(2019, 10, 1), 1000.0)
    assert rows["at_not_after"].micros == micros("2019-10-02 12:00:00")


def test_quarantine_keeps_the_original_text(parsed):
    quarantine = quarantine_rows(parsed)
    assert quarantine.columns == [f.name for f in S.QUARANTINE_SCHEMA.fields]
    records = {r[S.SOURCE_FILE]: r for r in quarantine.collect()}
    assert len(records) == sum(reason is not None for _, reason in CASES.values())
    assert records["malformed"][S.RAW_RECORD] == f"{OK},view,100"
    assert json.loads(records["hour25"][S.RAW_RECORD]) == {
        S.EVENT_TIME: "2019-10-01 25:00:00 UTC", S.EVENT_TYPE: "view", S.PRODUCT_ID: "100", S.CATEGORY_ID: "7",
        S.CATEGORY_CODE: "electronics", S.BRAND: "acme", S.PRICE: "9.99", S.USER_ID: "5", S.USER_SESSION: "s1",
    }
    assert json.loads(records["blank_user"][S.RAW_RECORD])[S.USER_ID] == "  "


def test_open_window_rejects_only_the_future(spark):
    window = EventWindow(None, None, dt.datetime(2019, 10, 2, 12, 0, tzinfo=UTC))
    raw = raw_frame(spark, [raw_row("old", time="2001-01-01 00:00:00 UTC"),
                            raw_row("future", time="2019-10-02 12:00:01 UTC")])
    got = {r[S.SOURCE_FILE]: r[S.REASON] for r in parse_events(raw, window, 1000.0).collect()}
    assert got == {"old": None, "future": S.REASON_OUT_OF_WINDOW}


def test_window_from_config_checks_its_dates():
    now = dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert EventWindow.from_config("2019-10-01", "", now) == EventWindow(dt.date(2019, 10, 1), None, now)
    with pytest.raises(ConfigError, match="clean.end_date"):
        EventWindow.from_config("", "1 Oct", now)
    with pytest.raises(ConfigError, match="after"):
        EventWindow.from_config("2019-10-02", "2019-10-01", now)


def test_exact_duplicates_after_parsing_are_counted_and_dropped(spark):
    rows = [
        raw_row("a"),
        raw_row("a_same_after_parsing", kind=" VIEW", price="9.990", user="05"),
        raw_row("a_again"),
        raw_row("b_other_session", session="s2"),
        raw_row("c_nulls", category=None, code=None, brand=None, price=None, session=None),
        raw_row("c_nulls_again", category=None, code=None, brand=None, price=None, session=None),
        raw_row("rejected_copy_of_a", user=None),
    ]
    parsed = parse_events(raw_frame(spark, rows), WINDOW, 1000.0)
    rows_read, rejected, duplicates, dates = clean.count_parsed(parsed)
    assert (rows_read, duplicates, dates) == (7, 3, [dt.date(2019, 10, 1)])
    assert rejected == {**{code: 0 for code in S.REASON_CODES}, S.REASON_NULL_USER: 1}
    kept = clean.drop_exact_duplicates(valid_events(parsed))
    assert sorted((r[S.USER_SESSION] or "") for r in kept.collect()) == ["", "s1", "s2"]


def test_sessions_by_gap_with_the_exact_gap_kept(spark):
    schema = T.StructType([
        T.StructField(S.USER_ID, T.StringType()), T.StructField(S.EVENT_TIME, T.TimestampType()),
        T.StructField(S.USER_SESSION, T.StringType()), T.StructField("label", T.StringType()),
    ])

    def at(text):
        return dt.datetime.fromisoformat(f"2019-10-01 {text}").replace(tzinfo=UTC)

    rows = [
        ("u1", at("10:00:00"), None, "first"),
        ("u1", at("10:15:00"), "s9", "given"),  # has its own session, does not split the others
        ("u1", at("10:30:00"), None, "exactly_30_min_later"),
        ("u1", at("11:00:01"), None, "30_min_1_s_later"),
        ("u1", at("11:10:00"), None, "then_10_min"),
        ("u2", at("10:00:00"), None, "other_user"),
    ]
    got = {r.label: r[S.SESSION_ID] for r in clean.assign_sessions(spark.createDataFrame(rows, schema), 30).collect()}

    def generated(user, start):
        return hashlib.sha256(f"{user}|{micros('2019-10-01 ' + start)}".encode()).hexdigest()[:32]

    assert got == {
        "first": generated("u1", "10:00:00"),
        "given": "s9",
        "exactly_30_min_later": generated("u1", "10:00:00"),
        "30_min_1_s_later": generated("u1", "11:00:01"),
        "then_10_min": generated("u1", "11:00:01"),
        "other_user": generated("u2", "10:00:00"),
    }


@pytest.mark.parametrize("key", [b"test-key-not-secret", b"k" * 100, "clé".encode()])
def test_pseudonym_is_hmac_sha256(spark, key):
    ids = [5, 541312140, 9_000_000_000_000_000_000]
    df = spark.createDataFrame([(i,) for i in ids], T.StructType([T.StructField(S.USER_ID, T.LongType())]))
    got = [r[S.USER_ID] for r in pseudonymise(df, S.USER_ID, key).collect()]
    assert got == [hmac.new(key, str(i).encode(), hashlib.sha256).hexdigest()[:16] for i in ids]


def test_hmac_pads_follow_rfc_2104():
    ipad, opad = hmac_pads(b"\x00\xff")
    assert ipad == b"\x36\xc9" + b"\x36" * 62
    assert opad == b"\x5c\xa3" + b"\x5c" * 62


def test_pseudonym_key_comes_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, "s3cret-value")
    assert pseudonym_key(KEY_ENV, allow_dev_key=False) == b"s3cret-value"
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(InputError, match=KEY_ENV):
        pseudonym_key(KEY_ENV, allow_dev_key=False)
    with caplog.at_level(logging.WARNING):
        assert pseudonym_key(KEY_ENV, allow_dev_key=True) == DEV_KEY
    assert KEY_ENV in caplog.text and DEV_KEY.decode() not in caplog.text


def test_clean_events_have_the_clean_schema_and_no_raw_ids(parsed):
    events = clean.clean_events(parsed, b"k", gap_minutes=30)
    assert [(f.name, f.dataType) for f in events.schema.fields] == [
        (f.name, f.dataType) for f in S.CLEAN_SCHEMA.fields]
    users = {r[S.USER_ID] for r in events.collect()}
    assert users == {hmac.new(b"k", b"5", hashlib.sha256).hexdigest()[:16]}


def test_reconciliation():
    clean.Outcome(rows_read=10, rows_kept=5, duplicates=2, rejected={S.REASON_BAD_ID: 3}).check()
    lost = clean.Outcome(rows_read=10, rows_kept=5, duplicates=1, rejected={S.REASON_BAD_ID: 3})
    with pytest.raises(DataQualityError, match=r"read 10 != kept 5 \+ rejected 3 .* duplicates 1 \(off by 1\)"):
        lost.check()


# ----------------------------------------------------------------------------- the stage

HEADER = ",".join(S.RAW_COLUMNS)
CSV_LINES = [
    "2019-10-01 10:00:00 UTC,view,100,7,electronics.phone,acme,9.99,541312140,s1",
    "2019-10-01 10:00:00 UTC,view,100,7,electronics.phone,acme,9.99,541312140,s1",  # duplicate
    "2019-10-01 10:05:00 UTC,cart,100,7,electronics.phone,acme,9.99,541312140,s1",
    "2019-10-01 23:00:00 UTC,view,200,,,,,541312141,",  # no session: generated
    "2019-10-02 09:00:00 UTC,purchase,100,7,electronics.phone,acme,9.99,541312140,s2",
    "2019-10-02 09:00:00 UTC,view,300,8,,brandx,1.5,541312140,s2,extra-field",  # malformed: too many
    "2019-10-02 09:01:00 UTC,view,300",  # malformed: too few
    "2019-10-02 09:02:00 UTC,click,300,8,,brandx,1.5,541312140,s2",  # unknown event
]
GZ_LINES = [
    "2019-10-02 11:00:00 UTC,view,400,9,,,2.5,541312142,s3",
    "2019-10-02 11:00:00 UTC,view,400,9,,,2.5,,s3",  # no user
]


def _fresh_raw_text_schema(monkeypatch):
    # io.read_raw extends S.RAW_TEXT_SCHEMA in place (StructType.add mutates), so a second
    # read in one process fails with COLUMN_ALREADY_EXISTS; give each read its own copy.
    copy = T.StructType([T.StructField(c, T.StringType(), True) for c in S.RAW_COLUMNS])
    monkeypatch.setattr(S, "RAW_TEXT_SCHEMA", copy)


@pytest.mark.e2e
def test_run_writes_clean_quarantine_and_report_and_is_idempotent(spark, tmp_path, monkeypatch):
    raw = tmp_path / "work" / "raw"
    raw.mkdir(parents=True)
    (raw / "part-a.csv").write_text("\n".join([HEADER, *CSV_LINES]) + "\n")
    with gzip.open(raw / "part-b.csv.gz", "wt") as out:
        out.write("\n".join([HEADER, *GZ_LINES]) + "\n")
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    cfg = load_config(None, [f"paths.root={tmp_path / 'work'}", f"clean.pseudonym_key_env={KEY_ENV}",
                             "clean.output_files_per_day=2"])

    _fresh_raw_text_schema(monkeypatch)
    summary = clean.run(spark, cfg)
    first = sorted(io.read_clean(spark, summary["clean_path"]).collect())
    _fresh_raw_text_schema(monkeypatch)
    again = clean.run(spark, cfg)
    second = sorted(io.read_clean(spark, summary["clean_path"]).collect())

    rejected = {**{code: 0 for code in S.REASON_CODES}, S.REASON_MALFORMED: 2, S.REASON_UNKNOWN_EVENT: 1,
                S.REASON_NULL_USER: 1}
    assert summary["rows_read"] == 10 and summary["rows_kept"] == 5 and summary["duplicates"] == 1
    assert summary["rejected"] == rejected and summary["dates"] == ["2019-10-01", "2019-10-02"]
    assert json.loads(Path(summary["report_path"]).read_text()) == {k: v for k, v in summary.items()
                                                                      if k != "report_path"}
    assert again == summary and first == second and len(first) == 5

    clean_dir = Path(summary["clean_path"])
    for day in ("2019-10-01", "2019-10-02"):
        files = list((clean_dir / f"{S.EVENT_DATE}={day}").glob("*.parquet"))
        assert 1 <= len(files) <= 2
    assert sorted(p.name for p in clean_dir.iterdir() if p.is_dir()) == [
        f"{S.EVENT_DATE}=2019-10-01", f"{S.EVENT_DATE}=2019-10-02"]

    pseudonym = hmac.new(b"e2e-key", b"541312140", hashlib.sha256).hexdigest()[:16]
    assert sum(r[S.USER_ID] == pseudonym for r in first) == 3
    assert all("54131214" not in str(value) for row in first for value in row)
    generated = [r[S.SESSION_ID] for r in first if r[S.PRODUCT_ID] == 200]
    assert len(generated[0]) == 32

    quarantine = spark.read.parquet(summary["quarantine_path"])
    assert [(f.name, f.dataType) for f in quarantine.schema.fields] == [
        (f.name, f.dataType) for f in S.QUARANTINE_SCHEMA.fields]
    got = sorted((r[S.REASON], Path(r[S.SOURCE_FILE]).name, r[S.RAW_RECORD]) for r in quarantine.collect())
    assert [(reason, name) for reason, name, _ in got] == [
        (S.REASON_MALFORMED, "part-a.csv"), (S.REASON_MALFORMED, "part-a.csv"),
        (S.REASON_NULL_USER, "part-b.csv.gz"), (S.REASON_UNKNOWN_EVENT, "part-a.csv")]
    assert {raw_line for reason, _, raw_line in got if reason == S.REASON_MALFORMED} == {CSV_LINES[5], CSV_LINES[6]}


def test_run_without_a_key_fails_before_reading(spark, tmp_path, monkeypatch):
    (tmp_path / "work" / "raw").mkdir(parents=True)
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = load_config(None, [f"paths.root={tmp_path / 'work'}", f"clean.pseudonym_key_env={KEY_ENV}"])
    with pytest.raises(InputError, match=KEY_ENV):
        clean.run(spark, cfg)


def test_run_rejects_zero_files_per_day(spark, tmp_path):
    (tmp_path / "work" / "raw").mkdir(parents=True)
    cfg = load_config(None, [f"paths.root={tmp_path / 'work'}", "clean.output_files_per_day=0"])
    with pytest.raises(ConfigError, match="clean.output_files_per_day"):
        clean.run(spark, cfg)
