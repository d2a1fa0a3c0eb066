"""adapters: the contract's formats, RetailRocket and YOOCHOOSE on small hand-written files, header checks."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from recsys_spark import schema
from recsys_spark.errors import InputError
from recsys_spark.etl import adapters

pytestmark = pytest.mark.unit

HEADER = ",".join(schema.RAW_COLUMNS)


def rows(df):
    return sorted(tuple(r[c] for c in schema.RAW_COLUMNS) for r in df.where(f"{schema.CORRUPT_RECORD} is null").collect())


def read(spark, folder, layout="rees46", fmt="csv", start=None, end=None):
    files = adapters.in_window(adapters.list_input_files(spark, str(folder)), start, end)
    return files, adapters.read_files(spark, files, layout, fmt)


def test_file_dates_and_window():
    assert adapters.file_date("/x/events-2019-10-01.csv.gz") == dt.date(2019, 10, 1)
    assert adapters.file_date("/x/2019-13-01/events.csv") is None  # folders and bad dates do not count
    files = [adapters.InputFile("a", dt.date(2019, 10, 1)), adapters.InputFile("b", dt.date(2019, 10, 3)),
             adapters.InputFile("c", None)]
    assert [f.path for f in adapters.in_window(files, dt.date(2019, 10, 2), None)] == ["b", "c"]


def test_contract_csv_gzip_json_and_parquet_give_the_same_rows(spark, tmp_path):
    line = "2019-10-01 10:00:00 UTC,view,100,7,electronics,acme,9.99,541312140,s1"
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "events-2019-10-01.csv").write_text(f"{HEADER}\n{line}\n")
    with gzip.open(tmp_path / "csv" / "more.csv.gz", "wt") as out:
        out.write(f"{HEADER}\n{line.replace('s1', 's2')}\nnot,enough\n")
    (tmp_path / "csv" / "_SUCCESS").write_text("")
    files, df = read(spark, tmp_path / "csv")
    assert [f.load_date for f in files] == [dt.date(2019, 10, 1), None]
    expected = [("2019-10-01 10:00:00 UTC", "view", "100", "7", "electronics", "acme", "9.99", "541312140", s)
                for s in ("s1", "s2")]
    assert rows(df) == expected
    assert [r[schema.CORRUPT_RECORD] for r in df.where(f"{schema.CORRUPT_RECORD} is not null").collect()] == ["not,enough"]
    assert sorted(str(r[schema.LOAD_DATE]) for r in df.collect()) == ["2019-10-01", "None", "None"]

    # A name that a URI would encode still finds its date (rows are dated by the file's name).
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "shop a+b 100% 2019-10-02.csv").write_text(f"{HEADER}\n{line}\n")
    (odd / "events-2019-10-03.csv").write_text(f"{HEADER}\n{line}\n")
    files, df = read(spark, odd)
    assert [f.load_date for f in files] == [dt.date(2019, 10, 3), dt.date(2019, 10, 2)]
    assert sorted((r[schema.SOURCE_FILE].rsplit("/", 1)[-1], str(r[schema.LOAD_DATE])) for r in df.collect()) == [
        ("events-2019-10-03.csv", "2019-10-03"), ("shop%20a+b%20100%25%202019-10-02.csv", "2019-10-02")]

    (tmp_path / "json").mkdir()
    record = dict(zip(schema.RAW_COLUMNS, line.split(",")), product_id=100, category_id=7, price=9.99, user_id=541312140)
    (tmp_path / "json" / "e.json").write_text(json.dumps(record) + "\n" + json.dumps({**record, "user_session": "s2"})
                                             + "\n{broken\n")
    _, df = read(spark, tmp_path / "json", fmt="json")
    assert rows(df) == expected and df.count() == 3

    typed = spark.createDataFrame([(v[0], v[1], 100, 7, v[4], v[5], 9.99, 541312140, v[8]) for v in expected],
                                  schema.RAW_TYPED_SCHEMA)
    typed.write.parquet(str(tmp_path / "parquet"))
    _, df = read(spark, tmp_path / "parquet", fmt="parquet")
    assert rows(df) == expected


def test_parquet_with_string_ids_is_read_as_text_under_string_id_types(spark, tmp_path):
    string_ids = {schema.USER_ID: schema.ID_STRING, schema.PRODUCT_ID: schema.ID_STRING}
    typed = adapters.typed_schema(string_ids)
    assert [f.name for f in typed.fields if f.dataType != schema.RAW_TYPED_SCHEMA[f.name].dataType] == [
        schema.PRODUCT_ID, schema.USER_ID]
    assert adapters.typed_schema({schema.USER_ID: schema.ID_INTEGER}) == schema.RAW_TYPED_SCHEMA
    visitor = "0b6f3c3e-8f1d-4c1e-9a57-2f6f1b2d9e01"
    row = ("2019-10-01 10:00:00 UTC", "view", "0035789", 7, None, "acme", 9.99, visitor, "s1")
    spark.createDataFrame([row], typed).write.parquet(str(tmp_path / "parquet"))
    files = adapters.list_input_files(spark, str(tmp_path / "parquet"))
    df = adapters.read_files(spark, files, "rees46", "parquet", string_ids)
    assert rows(df) == [("2019-10-01 10:00:00 UTC", "view", "0035789", "7", None, "acme", "9.99", visitor, "s1")]


def test_a_csv_header_that_does_not_match_fails_in_one_line(spark, tmp_path):
    (tmp_path / "events.csv").write_text("event_time,event_type,product_id,user_id,price\n")
    with pytest.raises(InputError) as err:
        read(spark, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "events.csv" in message
    assert "missing category_id, category_code, brand, user_session" in message
    assert "columns out of order" not in message


def test_retailrocket(spark, tmp_path):
    (tmp_path / "events.csv").write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433193500981,121688,transaction,15335,16\n"
        "soon,1,view,2,\n"
    )
    _, df = read(spark, tmp_path, layout="retailrocket")
    got = sorted((r[schema.EVENT_TIME], r[schema.EVENT_TYPE], r[schema.PRODUCT_ID], r[schema.USER_ID], r[schema.USER_SESSION], r[schema.PRICE])
                 for r in df.collect())
    assert got == [
        ("2015-06-01T21:18:20.981Z", "transaction", "15335", "121688", None, None),
        ("2015-06-02T05:02:12.117Z", "view", "355908", "257597", None, None),
        ("2015-06-02T05:50:14.164Z", "addtocart", "248676", "992329", None, None),
        ("soon", "view", "2", "1", None, None),  # left for clean to reject as bad_event_time
    ]


def test_yoochoose(spark, tmp_path):
    (tmp_path / "yoochoose-clicks.dat").write_text(
        "1,2014-04-07T10:51:09.277Z,214536502,0\n"
        "1,2014-04-07T10:54:09.868Z,214536500,S\n"
        "2,2014-04-07T13:56:37.614Z,214662742,3\n"
        "3,2014-04-07T13:57:19.373Z,214825110,2053239000\n"
    )
    (tmp_path / "yoochoose-buys.dat").write_text("2,2014-04-07T14:00:00.000Z,214662742,1046,2\n")
    _, df = read(spark, tmp_path, layout="yoochoose")
    got = sorted(tuple(r[c] for c in [schema.EVENT_TIME, schema.EVENT_TYPE, schema.PRODUCT_ID, schema.CATEGORY_ID, schema.CATEGORY_CODE,
                                      schema.BRAND, schema.PRICE, schema.USER_ID, schema.USER_SESSION]) for r in df.collect())
    assert got == [
        ("2014-04-07T10:51:09.277Z", "view", "214536502", None, None, None, None, "1", "1"),
        ("2014-04-07T10:54:09.868Z", "view", "214536500", None, "special_offer", None, None, "1", "1"),
        ("2014-04-07T13:56:37.614Z", "view", "214662742", "3", None, None, None, "2", "2"),
        ("2014-04-07T13:57:19.373Z", "view", "214825110", None, None, "2053239000", None, "3", "3"),
        ("2014-04-07T14:00:00.000Z", "purchase", "214662742", None, None, None, "1046", "2", "2"),
    ]
