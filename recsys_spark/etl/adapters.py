"""Raw inputs of ``clean``: the REES46 contract and two other public layouts mapped onto it.

Every layout is read with an explicit schema (never inferred) into the *raw text frame*:
the contract's columns as text, ``_corrupt_record`` (the original line when the parser could
not split it, else null), ``source_file`` and ``load_date``.

Layouts (``clean.input_layout``):
  rees46        the contract itself: CSV (also ``.csv.gz``), JSON lines or Parquet.
  retailrocket  ``events.csv``: timestamp (epoch ms), visitorid, event (view / addtocart /
                transaction), itemid, transactionid. visitorid is the user, there are no
                sessions (clean makes them by inactivity), addtocart / transaction are mapped by
                ``clean.event_aliases``; transactionid and item properties are not used.
  yoochoose     ``*clicks*`` (session id, ISO time, item id, category) and ``*buys*`` (session
                id, ISO time, item id, price, quantity), comma-separated, no header. The session
                is the only identity, so it is both user_id and user_session; a click is a
                view, a buy a purchase (one event whatever the quantity); the category field
                holds a category (1-12), ``S`` (special offer, kept as category_code), ``0``
                (unknown) or a brand id (longer numbers, kept as brand).

A file whose name holds a date (``events-2019-10-01.csv``) belongs to that date: a run over a
date range reads only the files of those dates (and the undated ones).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.errors import ConfigError, InputError
from recsys_spark.io import HadoopFs

LAYOUTS = ("rees46", "retailrocket", "yoochoose")
RETAILROCKET_COLUMNS = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
YOOCHOOSE_CLICK_COLUMNS = ["session_id", "timestamp", "item_id", "category"]
YOOCHOOSE_BUY_COLUMNS = ["session_id", "timestamp", "item_id", "price", "quantity"]
# Position of the user id in a raw CSV line of each layout: a quarantined line that could not be
# parsed has that field replaced by its pseudonym (see pseudonym.redact_line).
USER_FIELD = {"rees46": schema.RAW_COLUMNS.index(schema.USER_ID), "retailrocket": 1, "yoochoose": 0}
_FILE_NAME = "_file_name"
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")
_YOOCHOOSE_MAX_CATEGORY = 12
# Epoch milliseconds to text that keeps the instant whatever the session time zone.
_ISO_WITH_OFFSET = "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"


@dataclass(frozen=True)
class InputFile:
    path: str
    load_date: dt.date | None  # from the file name


def file_date(path: str) -> dt.date | None:
    """The first ``YYYY-MM-DD`` in the file's name, if it is a real date."""
    match = _DATE_IN_NAME.search(_name(path))
    if not match:
        return None
    try:
        return dt.date.fromisoformat(match.group(1))
    except ValueError:
        return None


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _uri_name(spark: SparkSession, path: str) -> str:
    """The file name as Spark's ``_metadata.file_name`` spells it: URI-encoded (a space as %20)."""
    return _name(HadoopFs(spark, path).uri(path))


def list_input_files(spark: SparkSession, root: str) -> list[InputFile]:
    """Every data file under ``root`` (a file or a folder, searched recursively), sorted.

    Names starting with ``.`` or ``_`` (Spark's markers, temporary files) are skipped.
    """
    fs = HadoopFs(spark, root)
    if not fs.exists(root):
        raise InputError(f"input path {root} does not exist (config key paths.raw)")
    return [InputFile(p, file_date(p)) for p in fs.files(root)]


def in_window(files: list[InputFile], start: dt.date | None, end: dt.date | None) -> list[InputFile]:
    """The files of the run: undated ones, and dated ones inside ``start..end`` (None = open)."""
    return [
        f for f in files
        if f.load_date is None or ((start is None or f.load_date >= start) and (end is None or f.load_date <= end))
    ]


def check_header(spark: SparkSession, path: str, expected: list[str]) -> None:
    """Raise a one-line InputError unless the CSV header of ``path`` is exactly ``expected``."""
    got = [c.strip().strip('"') for c in HadoopFs(spark, path).first_line(path).split(",")]
    if got == expected:
        return
    missing = [c for c in expected if c not in got]
    unexpected = [c for c in got if c not in expected]
    detail = []
    if missing:
        detail.append(f"missing {', '.join(missing)}")
    if unexpected:
        detail.append(f"unexpected {', '.join(unexpected) or repr('')}")
    if not detail:
        detail.append(f"columns out of order ({', '.join(got)})")
    raise InputError(f"{path}: CSV header does not match the input layout: {'; '.join(detail)} "
                     f"(expected {','.join(expected)})")


def _text_schema(columns: list[str]) -> T.StructType:
    return T.StructType([T.StructField(c, T.StringType(), True) for c in [*columns, schema.CORRUPT_RECORD]])


def _file_name() -> Column:
    """The name of the row's file (no folder, URI-encoded): the key of its load date in read_files."""
    return F.col("_metadata.file_name").alias(_FILE_NAME)


def _csv(spark: SparkSession, paths: list[str], columns: list[str], header: bool) -> DataFrame:
    """The files as text columns plus ``_corrupt_record`` and the file name."""
    df = (
        spark.read.schema(_text_schema(columns))
        .option("header", str(header).lower())
        .option("enforceSchema", "true")  # the header was checked by name above
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", schema.CORRUPT_RECORD)
        .csv(paths)
    )
    return df.select("*", _file_name())


def typed_schema(id_types: Mapping[str, str] | None = None) -> T.StructType:
    """schema.RAW_TYPED_SCHEMA with the id columns that ``clean.id_types`` makes strings as text
    (a Parquet log of SKUs stores them as strings)."""
    strings = {c for c, kind in (id_types or {}).items() if kind == schema.ID_STRING}
    return T.StructType([T.StructField(f.name, T.StringType(), True) if f.name in strings else f
                         for f in schema.RAW_TYPED_SCHEMA.fields])


def _rees46(spark: SparkSession, paths: list[str], fmt: str, id_types: Mapping[str, str] | None = None) -> DataFrame:
    if fmt == "csv":
        for path in paths:
            check_header(spark, path, schema.RAW_COLUMNS)
        return _csv(spark, paths, schema.RAW_COLUMNS, header=True)
    if fmt == "json":
        df = (
            spark.read.schema(_text_schema(schema.RAW_COLUMNS))
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", schema.CORRUPT_RECORD)
            .option("primitivesAsString", "true")
            .json(paths)
        )
        return df.select("*", _file_name())
    if fmt == "parquet":
        df = spark.read.schema(typed_schema(id_types)).parquet(*paths)
        return df.select(*[F.col(c).cast("string").alias(c) for c in schema.RAW_COLUMNS],
                         F.lit(None).cast("string").alias(schema.CORRUPT_RECORD), _file_name())
    raise ConfigError(f"clean.input_format {fmt!r} is not one of 'csv', 'json', 'parquet'")


def _null() -> Column:
    return F.lit(None).cast("string")


def epoch_millis_text(millis: Column) -> Column:
    """Epoch milliseconds (text) as ISO text with an offset; anything else is passed through."""
    digits = F.trim(millis)
    as_time = F.date_format(F.timestamp_millis(digits.try_cast("bigint")), _ISO_WITH_OFFSET)
    return F.when(digits.rlike(r"^[0-9]{1,15}$"), as_time).otherwise(millis)


def _retailrocket(spark: SparkSession, paths: list[str]) -> DataFrame:
    for path in paths:
        check_header(spark, path, RETAILROCKET_COLUMNS)
    df = _csv(spark, paths, RETAILROCKET_COLUMNS, header=True)
    return df.select(
        epoch_millis_text(F.col("timestamp")).alias(schema.EVENT_TIME),
        F.col("event").alias(schema.EVENT_TYPE),
        F.col("itemid").alias(schema.PRODUCT_ID),
        _null().alias(schema.CATEGORY_ID),
        _null().alias(schema.CATEGORY_CODE),
        _null().alias(schema.BRAND),
        _null().alias(schema.PRICE),
        F.col("visitorid").alias(schema.USER_ID),
        _null().alias(schema.USER_SESSION),
        F.col(schema.CORRUPT_RECORD),
        F.col(_FILE_NAME),
    )


def _yoochoose(spark: SparkSession, paths: list[str]) -> DataFrame:
    buys = [p for p in paths if "buys" in p.rsplit("/", 1)[-1].lower()]
    clicks = [p for p in paths if p not in buys]
    parts = []
    if clicks:
        c = _csv(spark, clicks, YOOCHOOSE_CLICK_COLUMNS, header=False)
        category = F.trim(F.col("category"))
        is_number = category.rlike(r"^[0-9]+$")
        small = is_number & (F.length(category) <= 2) & (category.try_cast("int") <= _YOOCHOOSE_MAX_CATEGORY)
        parts.append(c.select(
            F.col("timestamp").alias(schema.EVENT_TIME),
            F.lit("view").alias(schema.EVENT_TYPE),
            F.col("item_id").alias(schema.PRODUCT_ID),
            F.when(small & (category != "0"), category).alias(schema.CATEGORY_ID),
            F.when(category == "S", F.lit("special_offer")).alias(schema.CATEGORY_CODE),
            F.when(is_number & ~small, category).alias(schema.BRAND),
            _null().alias(schema.PRICE),
            F.col("session_id").alias(schema.USER_ID),
            F.col("session_id").alias(schema.USER_SESSION),
            F.col(schema.CORRUPT_RECORD),
            F.col(_FILE_NAME),
        ))
    if buys:
        b = _csv(spark, buys, YOOCHOOSE_BUY_COLUMNS, header=False)
        parts.append(b.select(
            F.col("timestamp").alias(schema.EVENT_TIME),
            F.lit("purchase").alias(schema.EVENT_TYPE),
            F.col("item_id").alias(schema.PRODUCT_ID),
            _null().alias(schema.CATEGORY_ID),
            _null().alias(schema.CATEGORY_CODE),
            _null().alias(schema.BRAND),
            F.col("price").alias(schema.PRICE),
            F.col("session_id").alias(schema.USER_ID),
            F.col("session_id").alias(schema.USER_SESSION),
            F.col(schema.CORRUPT_RECORD),
            F.col(_FILE_NAME),
        ))
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def read_files(spark: SparkSession, files: list[InputFile], layout: str, fmt: str,
               id_types: Mapping[str, str] | None = None) -> DataFrame:
    """The raw text frame of ``files`` in ``layout`` (``id_types``: clean.id_types, for the
    Parquet contract's id columns, see :func:`typed_schema`).

    All files are read by one reader (Spark packs small files into few tasks); each row's
    ``load_date`` is looked up by its file's name in a map built from :func:`file_date`.

    Returns:
        RAW_COLUMNS (text), ``_corrupt_record``, ``source_file`` and ``load_date`` (date, null
        for undated files).

    Raises:
        InputError: no files, or a CSV header that does not match the layout (names the columns).
        ConfigError: an unknown layout or format.
    """
    if not files:
        raise InputError("no input files to clean under paths.raw for the processed window "
                         "(config keys paths.raw, clean.start_date, clean.end_date)")
    if layout not in LAYOUTS:
        raise ConfigError(f"clean.input_layout {layout!r} is not one of {', '.join(map(repr, LAYOUTS))}")
    paths = [f.path for f in files]
    if layout == "rees46":
        df = _rees46(spark, paths, fmt, id_types)
    elif layout == "retailrocket":
        df = _retailrocket(spark, paths)
    else:
        df = _yoochoose(spark, paths)
    dated = {_uri_name(spark, f.path): f.load_date for f in files if f.load_date is not None}
    if dated:
        by_name = F.create_map(*[x for name, day in sorted(dated.items()) for x in (F.lit(name), F.lit(day))])
        load_date = F.try_element_at(by_name, F.col(_FILE_NAME))
    else:
        load_date = F.lit(None).cast("date")
    return df.select(
        *[c for c in df.columns if c != _FILE_NAME],
        F.input_file_name().alias(schema.SOURCE_FILE),
        load_date.cast("date").alias(schema.LOAD_DATE),
    )
