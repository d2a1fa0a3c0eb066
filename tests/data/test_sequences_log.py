"""Per-user sequences ('user item' lines, SASRec's ml-1m.txt) as a raw clickstream: the order and
ids kept, one view per line, the day files, the spacing checked against clean's rules, and clean
keeping every row of a user with more views in a day than a session may hold items."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from recsys_spark import schema
from recsys_spark.config import CleanConfig, load_config
from recsys_spark.data import sequences_log
from recsys_spark.errors import ConfigError, InputError

pytestmark = pytest.mark.unit

START = dt.datetime(2000, 1, 1, 23, 50, tzinfo=dt.timezone.utc)
# Users interleave; each user's lines are in event order. User 7's items come back (5 twice).
LINES = "7 5\n3 9\n7 2\n7 5\n3 1\n12 40\n7 8\n"


def write(tmp_path, text=LINES):
    path = tmp_path / "seq.txt"
    path.write_text(text)
    return path


def test_each_line_is_one_view_in_its_users_order_with_the_files_ids(tmp_path):
    rows = sequences_log.to_clickstream(sequences_log.read_sequences(write(tmp_path)), START, gap_seconds=300,
                                        session_steps=2)
    assert list(rows.columns) == schema.RAW_COLUMNS
    assert rows[[schema.USER_ID, schema.PRODUCT_ID, schema.EVENT_TIME, schema.USER_SESSION]].values.tolist() == [
        ["7", "5", "2000-01-01 23:50:00 UTC", "7-0"],
        ["3", "9", "2000-01-01 23:50:00 UTC", "3-0"],
        ["7", "2", "2000-01-01 23:55:00 UTC", "7-0"],
        ["7", "5", "2000-01-02 00:00:00 UTC", "7-1"],
        ["3", "1", "2000-01-01 23:55:00 UTC", "3-0"],
        ["12", "40", "2000-01-01 23:50:00 UTC", "12-0"],
        ["7", "8", "2000-01-02 00:05:00 UTC", "7-1"],
    ]
    assert set(rows[schema.EVENT_TYPE]) == {"view"}
    for column in (schema.CATEGORY_ID, schema.CATEGORY_CODE, schema.BRAND, schema.PRICE):
        assert rows[column].isna().all()


def test_max_users_keeps_the_first_users_of_the_file(tmp_path):
    sequences = sequences_log.read_sequences(write(tmp_path), max_users=2)
    assert sequences.values.tolist() == [[7, 5, 0], [3, 9, 0], [7, 2, 1], [7, 5, 2], [3, 1, 1], [7, 8, 3]]


@pytest.mark.parametrize("text", ["7 5\n3\n", "7 5 1\n", "7 x\n", ""])
def test_a_line_that_is_not_two_integers_is_an_input_error(tmp_path, text):
    with pytest.raises(InputError, match="seq.txt"):
        sequences_log.read_sequences(write(tmp_path, text))


def test_day_files_hold_the_contract_and_a_used_folder_is_refused(tmp_path):
    rows = sequences_log.to_clickstream(sequences_log.read_sequences(write(tmp_path)), START, 300, 2)
    files = sequences_log.write_clickstream(rows, tmp_path / "raw")
    assert [f.name for f in files] == ["events-2000-01-01.csv", "events-2000-01-02.csv"]
    first = pd.read_csv(files[0], dtype=str)
    assert list(first.columns) == schema.RAW_COLUMNS
    assert first[schema.EVENT_TIME].tolist() == sorted(first[schema.EVENT_TIME]) and len(first) == 5
    assert pd.read_csv(files[1], dtype=str)[schema.PRODUCT_ID].tolist() == ["5", "8"]
    with pytest.raises(InputError, match="not empty"):
        sequences_log.write_clickstream(rows, tmp_path / "raw")


@pytest.mark.parametrize("gap, steps, key", [
    (1, 24, "bot_max_events_per_minute"),  # 61 views in a minute
    (300, 101, "bot_max_distinct_items_per_session"),
])
def test_a_spacing_that_clean_would_flag_is_refused_naming_the_key(gap, steps, key):
    with pytest.raises(ConfigError, match=key):
        sequences_log.check_spacing(gap, steps, CleanConfig())
    sequences_log.check_spacing(300, 24, CleanConfig())


def test_a_last_view_in_the_future_is_refused(tmp_path):
    with pytest.raises(InputError, match="in the past"):
        sequences_log.convert(write(tmp_path), tmp_path / "raw", start="2999-01-01T00:00:00+00:00")


@pytest.mark.e2e
def test_clean_keeps_every_view_of_a_user_with_more_items_a_day_than_a_session_may_hold(spark, tmp_path):
    from recsys_spark.etl import clean

    # 150 distinct items in one day: over bot_max_distinct_items_per_session (100) as one session,
    # under it in sessions of 24 views; plus a short user.
    lines = "".join(f"1 {item}\n" for item in range(100, 250)) + "2 7\n2 8\n2 9\n"
    summary = sequences_log.convert(write(tmp_path, lines), tmp_path / "work" / "raw")
    assert (summary["rows"], summary["users"], summary["items"], summary["longest"]) == (153, 2, 153, 150)
    cleaned = clean.run(spark, load_config(None, [f"paths.root={tmp_path / 'work'}", "spark.shuffle_partitions=2"]))
    assert (cleaned["rows_read"], cleaned["rows_kept"], cleaned["bot_rows"], cleaned["duplicates"],
            cleaned["near_duplicates"]) == (153, 153, 0, 0, 0)
    assert cleaned["rejected"] == {code: 0 for code in schema.REASON_CODES}
