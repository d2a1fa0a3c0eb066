"""What clean shows of a rejected row: its quarantine record, and the few offending values the
rejection gate names. The raw user id is never shown: a row's user id becomes its pseudonym.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.etl import adapters
from recsys_spark.etl.pseudonym import KEY_IPAD, KEY_OPAD, pseudonym_or_empty, redact_csv_line, redact_json_line, with_key
from recsys_spark.etl.validate import ORIGINAL, Rules, offending_field

# How many distinct offending values the rejection gate shows, and at most how many characters each.
_SAMPLE_VALUES = 3
_SAMPLE_CHARS = 60


def quarantine_rows(rejected: DataFrame, key: bytes, layout: str, fmt: str) -> DataFrame:
    """Rejected rows of :func:`parse_events` as QUARANTINE_SCHEMA plus ``load_date``.

    ``raw_record`` is the original line of a malformed row, else a JSON object of the row's
    text fields (in the contract layout, untrimmed). In both, the user id is replaced by its
    pseudonym: the JSON's user_id field, or the field at the user id's position of a
    malformed CSV line (whole or cut short), or the ``user_id`` value of a malformed JSON line.
    """
    keyed = with_key(rejected, key)
    original = F.col(ORIGINAL)
    fields = [pseudonym_or_empty(original[c]).alias(c) if c == schema.USER_ID else original[c].alias(c)
              for c in schema.RAW_COLUMNS]
    as_json = F.to_json(F.struct(*fields), {"ignoreNullFields": "false"})
    line = F.col(schema.CORRUPT_RECORD)
    as_csv = redact_csv_line(line, adapters.USER_FIELD[layout])
    if layout == "rees46" and fmt == "json":
        redacted = F.when(F.ltrim(line).startswith("{"), redact_json_line(line)).otherwise(as_csv)
    else:
        redacted = as_csv
    record = F.when(line.isNotNull(), redacted).otherwise(as_json)
    return keyed.select(
        F.col(schema.REASON), record.alias(schema.RAW_RECORD), F.col(schema.SOURCE_FILE), F.col(schema.LOAD_DATE)
    )


def offending_sample(rows: DataFrame, reason: str, key: bytes, rules: Rules, layout: str, fmt: str,
                     limit: int = _SAMPLE_VALUES) -> list[list[str]]:
    """A few distinct values that got rows rejected for ``reason``, safe to show.

    Args:
        rows: rejected rows of :func:`parse_events`, all of ``reason``.
        key: the pseudonymisation key: a user id is shown as its pseudonym, never raw.

    Returns:
        up to ``limit`` [field, value] pairs, sorted (value cut to 60 characters); the field of a
        malformed line is "line" and its value the line as quarantined (user id pseudonymised).
    """
    if reason == schema.REASON_MALFORMED:
        shown = quarantine_rows(rows, key, layout, fmt).select(
            F.lit("line").alias("field"), F.col(schema.RAW_RECORD).alias("value"))
    else:
        keyed = with_key(rows.select(ORIGINAL), key)
        field_ = offending_field(reason, rules)
        named = keyed.select(field_.alias("field"), F.col(ORIGINAL).alias("o"), KEY_IPAD, KEY_OPAD)
        value = F.coalesce(*[F.when(F.col("field") == c, F.col("o")[c]) for c in schema.RAW_COLUMNS])
        hidden = F.when(F.col("field") == schema.USER_ID, pseudonym_or_empty(value)).otherwise(value)
        shown = named.select("field", F.coalesce(hidden, F.lit("")).alias("value"))
    cut = F.substring(F.col("value"), 1, _SAMPLE_CHARS)
    return [[r["field"], r["value"]] for r in shown.select("field", cut.alias("value")).distinct()
            .orderBy("field", "value").limit(limit).collect()]
