"""Parse the raw text frame into typed events, giving every rejected row one reason code.

A row gets the first reason of ``schema.REASON_CODES`` whose rule it breaks; a row with no
reason is a valid event. Parsing never raises on bad data (``try_*`` functions), so the stage
runs under Spark's ANSI mode, and uses only built-in expressions (no Python UDF).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.product_ids import product_key
from recsys_spark.config import CleanConfig, clean_dates
from recsys_spark.errors import ConfigError

_MICROS_PER_DAY = 86_400 * 1_000_000

# Columns of parse_events that are not in the contract.
MICROS = "_micros"  # event_time as epoch microseconds: the sort key of every window
# A hash of the user into output_files_per_day buckets: one output file each. clean.run
# replaces it by a value that spreads each (day, bucket) over the shuffle partitions.
BUCKET = "_bucket"
ORIGINAL = "_original"  # the text fields of a rejected row (null for valid rows)
IN_WINDOW = "_in_window"  # false for rows of an undated file dated outside the processed window
# Under string product ids: a valid row's product id as it came in (trimmed); product_id is its key.
PRODUCT_TEXT = "_product_text"

# The typed columns of a valid event, in contract order, plus its UTC date.
EVENT_COLUMNS = [*schema.RAW_COLUMNS, schema.EVENT_DATE]


@dataclass(frozen=True)
class EventWindow:
    """The processed window: event dates ``start..end`` (inclusive, UTC; None = open) and
    event times no later than ``not_after`` (an aware datetime, normally "now")."""

    start: dt.date | None
    end: dt.date | None
    not_after: dt.datetime

    @classmethod
    def from_config(cls, start_date: str, end_date: str, now: dt.datetime) -> "EventWindow":
        """Build the window from ``clean.start_date`` / ``clean.end_date`` (ISO dates, "" = open).

        Raises:
            ConfigError: a date that is not ``YYYY-MM-DD``, start after end, or a naive ``now``.
        """
        if now.tzinfo is None:
            raise ConfigError("the processed window needs an aware 'now' (UTC), got a naive datetime")
        start, end = clean_dates(start_date, end_date)
        return cls(start, end, now)

    def dates(self) -> list[dt.date] | None:
        """Every date of a closed window, None when either end is open."""
        if self.start is None or self.end is None:
            return None
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days + 1)]


@dataclass(frozen=True)
class Rules:
    """The validation rules' parameters: CleanConfig's, checked there (defaults are its defaults)."""

    max_price: float = CleanConfig.max_price
    event_aliases: Mapping[str, str] | None = None
    naive_timezone: str = CleanConfig.naive_timezone
    files_per_day: int = CleanConfig.output_files_per_day
    # clean.id_types: column -> schema.ID_INTEGER or ID_STRING (None: both integer).
    id_types: Mapping[str, str] | None = None

    @classmethod
    def from_config(cls, cc: CleanConfig) -> Rules:
        return cls(cc.max_price, dict(cc.event_aliases), cc.naive_timezone, cc.output_files_per_day,
                   dict(cc.id_types))

    def id_type(self, column: str) -> str:
        return (self.id_types or {}).get(column, schema.ID_INTEGER)


def _text(column: str | Column) -> Column:
    """Trimmed text; empty (CSV reads a quoted "" as empty, not null) becomes null."""
    trimmed = F.trim(F.col(column) if isinstance(column, str) else column)
    return F.when(trimmed != "", trimmed)


def parse_event_time(text: Column, naive_timezone: str = "UTC") -> Column:
    """``yyyy-MM-dd[ T]HH:mm:ss[.fraction]`` with an optional zone (``Z``, `` UTC``, ``+hh:mm``)
    to a UTC timestamp; a time without a zone is read in ``naive_timezone``. Anything else
    (a date alone, hour 25, words) is null. Cheap string tests and Spark's own cast, no regex.
    """
    shaped = (F.length(text) >= 19) & F.substring(text, 11, 1).isin(" ", "T") & (F.substring(text, 5, 1) == "-")
    zoned = (
        text.endswith("Z")
        | text.endswith(" UTC")
        | (F.substring(text, -6, 1).isin("+", "-") & (F.substring(text, -3, 1) == ":"))
    )
    with_zone = F.when(zoned, text).otherwise(F.concat(text, F.lit(f" {naive_timezone}")))
    return F.when(shaped, with_zone.try_cast("timestamp"))


def utc_date(timestamp: Column) -> Column:
    """The UTC calendar date of a timestamp, whatever the session time zone."""
    return F.date_from_unix_date(F.floor(F.unix_micros(timestamp) / _MICROS_PER_DAY).cast("int"))


def _as_long(text: Column) -> Column:
    """An integer id: optional sign and ASCII digits, within the long range; else null.

    ``try_cast`` alone: it refuses decimals ("1.5", "1.0"), exponents, hex, separators and
    overflow, as the regex ``^[+-]?[0-9]+$`` it replaced did (that regex cost 2.5 s of a 20 s
    parse of 10M lines). Unlike the regex it strips whitespace that ``_text``'s trim of
    spaces leaves, so an id padded with tabs is accepted.
    """
    return text.try_cast("bigint")


def id_value(text: Column, id_type: str) -> Column:
    """A user or product id of trimmed ``text``: a long under ``schema.ID_INTEGER`` (null when
    it is not a whole number: bad_id), the text itself under ``ID_STRING`` (any form; a product's
    text becomes its key in :func:`parse_events`)."""
    return text if id_type == schema.ID_STRING else _as_long(text)


def product_value(text: Column, id_type: str) -> Column:
    """The product_id of trimmed ``text``: :func:`id_value` under integer ids, the text's 63-bit
    key (product_ids.product_key) under string ids."""
    return product_key(text) if id_type == schema.ID_STRING else _as_long(text)


def normalise_event_type(text: Column, aliases: Mapping[str, str] | None) -> Column:
    """Lower-cased type mapped through ``aliases`` (keys compared trimmed and lower-cased)."""
    kind = F.lower(text)
    if not aliases:
        return kind
    mapped = None
    for source, target in sorted(aliases.items()):
        hit = kind == F.lit(source.strip().lower())
        mapped = F.when(hit, F.lit(target)) if mapped is None else mapped.when(hit, F.lit(target))
    return mapped.otherwise(kind)


def parse_events(raw: DataFrame, window: EventWindow, rules: Rules) -> DataFrame:
    """Type the raw text frame and attach a reason code to every row that breaks a rule.

    Rules, in order: malformed line; unparseable time; event date other than the date of its
    file (out_of_window); time after ``window.not_after`` (future); empty user or product id;
    an id that is not an integer (a category id, and a user or product id of
    ``rules.id_types`` integer: a string id is any text); an event type unknown after aliasing; a price that is
    negative, NaN, unparseable or above ``rules.max_price`` (a missing price is allowed).

    Args:
        raw: the raw text frame of :func:`recsys_spark.etl.adapters.read_files`.
        window: the processed window. Rows of undated files dated outside it are not this
            run's rows: ``_in_window`` is false for them (they get no reason).
        rules: price bound, event aliases, time zone of naive times, output buckets.

    Returns:
        one row per raw row: EVENT_COLUMNS typed as in CLEAN_SCHEMA (user_id still the raw
        id, a long or the text, user_session trimmed text), ``_micros``, ``load_date`` (the file's date, else the
        event date), ``_bucket``, ``_in_window``, ``reason`` (null when valid), and for rejected
        rows only ``_original`` (struct of the original text fields), ``_corrupt_record`` and
        ``source_file``. Under string product ids product_id is the text's 63-bit key and
        ``_product_text`` (valid rows only) the text.
    """
    # Staged projections, each typed value computed once per row and then referenced by name:
    # Spark keeps a projection apart from the next when the next uses a costly column of it
    # more than once, while one select with the expressions inlined recomputed them in every
    # WHEN branch of the reason (subexpression elimination skips conditional branches): the
    # parse was three times slower that way.
    text = {c: f"_text_{c}" for c in schema.RAW_COLUMNS}
    values = _typed_values(raw, text, rules)
    file_date = F.col(schema.LOAD_DATE)
    staged_load_date = schema.LOAD_DATE + "_"
    reason = _reason(text, file_date, window, rules)
    # A malformed line's fields are not trusted: it is attributed to its file's date only.
    load_date = F.when(F.col(schema.CORRUPT_RECORD).isNotNull(), file_date).otherwise(
        F.coalesce(file_date, _typed(schema.EVENT_DATE)))
    in_window = F.lit(True)
    if window.start is not None:
        in_window = in_window & ~(F.col(staged_load_date) < F.lit(window.start)).eqNullSafe(True)
    if window.end is not None:
        in_window = in_window & ~(F.col(staged_load_date) > F.lit(window.end)).eqNullSafe(True)

    dated = values.select("*", load_date.alias(staged_load_date), reason.alias(schema.REASON))
    string_products = rules.id_type(schema.PRODUCT_ID) == schema.ID_STRING
    typed = _contract_columns(dated, text, in_window.alias(IN_WINDOW), string_products)
    rejected = F.col(schema.REASON).isNotNull()
    return typed.select(
        F.unix_micros(schema.EVENT_TIME).alias(MICROS),
        *EVENT_COLUMNS,
        schema.LOAD_DATE,
        F.pmod(F.xxhash64(schema.USER_ID), F.lit(rules.files_per_day)).cast("int").alias(BUCKET),
        IN_WINDOW,
        schema.REASON,
        F.when(rejected, F.col(ORIGINAL)).alias(ORIGINAL),
        F.when(rejected, F.col(schema.CORRUPT_RECORD)).alias(schema.CORRUPT_RECORD),
        F.when(rejected, F.col(schema.SOURCE_FILE)).alias(schema.SOURCE_FILE),
        *([F.when(~rejected, F.col(PRODUCT_TEXT)).alias(PRODUCT_TEXT)] if string_products else []),
    )


def _typed(column: str) -> Column:
    """The typed value of a contract column, as :func:`_typed_values` names it."""
    return F.col(column + "_")


def _typed_values(raw: DataFrame, text: dict[str, str], rules: Rules) -> DataFrame:
    """``raw`` with each contract column's trimmed text (named by ``text``), then its typed
    value (:func:`_typed`) and the event's UTC date: two projections and a column."""
    texts = raw.select("*", *[_text(c).alias(text[c]) for c in schema.RAW_COLUMNS])
    values = texts.select(
        "*",
        parse_event_time(F.col(text[schema.EVENT_TIME]), rules.naive_timezone).alias(schema.EVENT_TIME + "_"),
        normalise_event_type(F.col(text[schema.EVENT_TYPE]), rules.event_aliases).alias(schema.EVENT_TYPE + "_"),
        product_value(F.col(text[schema.PRODUCT_ID]), rules.id_type(schema.PRODUCT_ID)).alias(schema.PRODUCT_ID + "_"),
        id_value(F.col(text[schema.USER_ID]), rules.id_type(schema.USER_ID)).alias(schema.USER_ID + "_"),
        _as_long(F.col(text[schema.CATEGORY_ID])).alias(schema.CATEGORY_ID + "_"),
        F.col(text[schema.PRICE]).try_cast("double").alias(schema.PRICE + "_"),
    )
    return values.withColumn(schema.EVENT_DATE + "_", utc_date(F.col(schema.EVENT_TIME + "_")))


def _reason(text: dict[str, str], file_date: Column, window: EventWindow, rules: Rules) -> Column:
    """The reason code of a row of :func:`_typed_values`: the first rule of schema.REASON_CODES
    it breaks (one CASE WHEN in rule order), null when it breaks none."""
    event_time, event_date, event_type, product_id, category_id, user_id, price = (
        _typed(c) for c in (schema.EVENT_TIME, schema.EVENT_DATE, schema.EVENT_TYPE, schema.PRODUCT_ID,
                            schema.CATEGORY_ID, schema.USER_ID, schema.PRICE)
    )
    broken = {
        schema.REASON_MALFORMED: F.col(schema.CORRUPT_RECORD).isNotNull(),
        schema.REASON_BAD_TIME: event_time.isNull(),
        schema.REASON_OUT_OF_WINDOW: file_date.isNotNull() & (event_date != file_date),
        schema.REASON_FUTURE: event_time > F.lit(window.not_after),
        schema.REASON_NULL_USER: F.col(text[schema.USER_ID]).isNull(),
        schema.REASON_NULL_PRODUCT: F.col(text[schema.PRODUCT_ID]).isNull(),
        schema.REASON_BAD_ID: (
            user_id.isNull() | product_id.isNull() | (F.col(text[schema.CATEGORY_ID]).isNotNull() & category_id.isNull())
        ),
        schema.REASON_UNKNOWN_EVENT: event_type.isNull() | ~event_type.isin(schema.EVENT_TYPES),
        schema.REASON_BAD_PRICE: F.col(text[schema.PRICE]).isNotNull()
        & (price.isNull() | F.isnan(price) | (price < 0) | (price > F.lit(rules.max_price))),
    }
    reason = None
    for code in schema.REASON_CODES:  # one CASE WHEN in rule order: the first rule broken wins
        condition = F.coalesce(broken[code], F.lit(False))
        reason = F.when(condition, F.lit(code)) if reason is None else reason.when(condition, F.lit(code))
    return reason


def _contract_columns(dated: DataFrame, text: dict[str, str], in_window: Column, string_products: bool) -> DataFrame:
    """The contract's columns of a row of ``dated`` (:func:`_typed_values` with its load date and
    reason), in order, then ``in_window``, the reason and the rejected row's original content."""
    return dated.select(
        _typed(schema.EVENT_TIME).alias(schema.EVENT_TIME),
        _typed(schema.EVENT_TYPE).alias(schema.EVENT_TYPE),
        _typed(schema.PRODUCT_ID).alias(schema.PRODUCT_ID),
        _typed(schema.CATEGORY_ID).alias(schema.CATEGORY_ID),
        F.col(text[schema.CATEGORY_CODE]).alias(schema.CATEGORY_CODE),
        F.col(text[schema.BRAND]).alias(schema.BRAND),
        _typed(schema.PRICE).alias(schema.PRICE),
        _typed(schema.USER_ID).alias(schema.USER_ID),
        F.col(text[schema.USER_SESSION]).alias(schema.USER_SESSION),
        _typed(schema.EVENT_DATE).alias(schema.EVENT_DATE),
        F.col(schema.LOAD_DATE + "_").alias(schema.LOAD_DATE),
        in_window,
        F.col(schema.REASON),
        F.struct(*[F.col(c) for c in schema.RAW_COLUMNS]).alias(ORIGINAL),
        F.col(schema.CORRUPT_RECORD),
        F.col(schema.SOURCE_FILE),
        *([F.col(text[schema.PRODUCT_ID]).alias(PRODUCT_TEXT)] if string_products else []),
    )


# The raw field a rejected row is shown by (clean's rejection gate), per reason; bad_id's is
# found per row (offending_field), a malformed line has no trusted field.
_SHOWN_FIELD = {
    schema.REASON_BAD_TIME: schema.EVENT_TIME,
    schema.REASON_OUT_OF_WINDOW: schema.EVENT_TIME,
    schema.REASON_FUTURE: schema.EVENT_TIME,
    schema.REASON_NULL_USER: schema.USER_ID,
    schema.REASON_NULL_PRODUCT: schema.PRODUCT_ID,
    schema.REASON_UNKNOWN_EVENT: schema.EVENT_TYPE,
    schema.REASON_BAD_PRICE: schema.PRICE,
}


def offending_field(reason: str, rules: Rules) -> Column:
    """The name of the raw field that got rows of ``reason`` rejected, over the rejected rows of
    :func:`parse_events` (it reads ``_original``): for bad_id the first of user, product and
    category id that is not a whole number; null for a malformed line."""
    if reason == schema.REASON_MALFORMED:
        return F.lit(None).cast("string")
    if reason != schema.REASON_BAD_ID:
        return F.lit(_SHOWN_FIELD[reason])
    original = F.col(ORIGINAL)
    chosen = F.lit(schema.CATEGORY_ID)
    for column in (schema.PRODUCT_ID, schema.USER_ID):  # built inside out: the user id is tested first
        if rules.id_type(column) == schema.ID_INTEGER:
            chosen = F.when(_as_long(_text(original[column])).isNull(), F.lit(column)).otherwise(chosen)
    return chosen


def valid_events(parsed: DataFrame) -> DataFrame:
    """The rows of :func:`parse_events` without a reason (in the window): ``_micros``, the
    event columns of ``parsed`` (EVENT_COLUMNS less any dropped) and ``_bucket``.

    The rejected rows' columns (reason, original text, source file), null here, and the
    load date (the event date here) are dropped: every sort of clean would carry them.
    """
    keep = [c for c in (MICROS, *EVENT_COLUMNS, BUCKET) if c in parsed.columns]
    return parsed.where(F.col(schema.REASON).isNull() & F.col(IN_WINDOW)).select(*keep)
