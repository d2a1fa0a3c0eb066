"""Keyed pseudonyms for user ids: HMAC-SHA256 (RFC 2104) written in Spark SQL, no Python UDF.

The key comes from the environment and is never logged; it reaches the executors as a
broadcast one-row table (two padded key blocks), so it appears in no query plan or UI page.
"""

from __future__ import annotations

import hashlib
import logging
import os

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.errors import InputError

log = logging.getLogger(__name__)

# Publicly known: pseudonyms made with it can be reversed by anyone who has the raw ids.
DEV_KEY = b"recsys_spark-dev-key-NOT-SECRET"
PSEUDONYM_HEX_CHARS = 16
_BLOCK_SIZE = 64  # SHA-256 block size in bytes


def pseudonym_key(env_name: str, allow_dev_key: bool) -> bytes:
    """The HMAC key held by environment variable ``env_name`` (UTF-8).

    Raises:
        InputError: the variable is unset or empty and ``allow_dev_key`` is false.
    """
    secret = os.environ.get(env_name, "")
    if secret:
        return secret.encode("utf-8")
    if not allow_dev_key:
        raise InputError(
            f"environment variable {env_name} (config clean.pseudonym_key_env) holds no pseudonymisation key; "
            "set it, or set clean.allow_dev_key=true for a local demo"
        )
    log.warning("%s is not set: pseudonymising user ids with the public development key", env_name)
    return DEV_KEY


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The inner and outer padded key blocks of HMAC-SHA256 (RFC 2104).

    Returns:
        (key XOR 0x36..., key XOR 0x5c...), 64 bytes each; a key longer than 64 bytes is
        first replaced by its SHA-256 digest, a shorter one is padded with zero bytes.
    """
    if len(key) > _BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK_SIZE, b"\x00")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


# Columns that carry the padded key blocks next to the data (see with_key).
KEY_IPAD = "_key_ipad"
KEY_OPAD = "_key_opad"


def with_key(df: DataFrame, key: bytes) -> DataFrame:
    """``df`` with the two HMAC key blocks as columns, from a broadcast one-row table.

    A literal would print the key blocks (hence the key) in every query plan, in ``explain``
    and in the Spark UI; a broadcast join shows only the column names.
    """
    k_ipad, k_opad = hmac_pads(key)
    schema = T.StructType([T.StructField(KEY_IPAD, T.BinaryType(), False),
                           T.StructField(KEY_OPAD, T.BinaryType(), False)])
    # From pandas (through Arrow) the table is a local relation in the plan, broadcast by the
    # driver; from a Python list it was an RDD, and building the broadcast ran a Spark job that
    # started Python workers, each time.
    keys = df.sparkSession.createDataFrame(pd.DataFrame({KEY_IPAD: [k_ipad], KEY_OPAD: [k_opad]}), schema)
    return df.crossJoin(F.broadcast(keys))


def hmac_sha256_hex(message: Column, hex_chars: int = PSEUDONYM_HEX_CHARS) -> Column:
    """HMAC-SHA256 of ``message`` (its UTF-8 text) as lowercase hex, first ``hex_chars`` kept.

    Needs the key columns of :func:`with_key`. Equals
    ``hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:hex_chars]``.
    """
    inner = F.unhex(F.sha2(F.concat(F.col(KEY_IPAD), message.cast("string").cast("binary")), 256))
    outer = F.sha2(F.concat(F.col(KEY_OPAD), inner), 256)
    return F.substring(outer, 1, hex_chars)


def pseudonymise(df: DataFrame, column: str, key: bytes) -> DataFrame:
    """Replace ``column`` (a user id, any type; its text is hashed) by its keyed pseudonym.

    Returns:
        ``df`` with ``column`` as a string of PSEUDONYM_HEX_CHARS hex characters.
    """
    keyed = with_key(df, key)
    return keyed.withColumn(column, hmac_sha256_hex(F.col(column))).drop(KEY_IPAD, KEY_OPAD)


def pseudonym_or_empty(text: Column) -> Column:
    """The pseudonym of trimmed ``text``; empty or blank text is kept as it is (no id to hide)."""
    trimmed = F.trim(text)
    return F.when(trimmed != "", hmac_sha256_hex(trimmed)).otherwise(text)


def redact_csv_line(line: Column, field: int) -> Column:
    """A comma-separated line with field number ``field`` (0-based) replaced by its pseudonym.

    Applied to lines that could not be parsed: the field at the user id's position is
    replaced whole or cut short (a truncated line), so no digits of a user id remain there.
    Lines with fewer fields are kept as they are. Needs the key columns of :func:`with_key`.
    """
    parts = F.split(line, ",", -1)
    n = F.size(parts)
    before = F.slice(parts, 1, field) if field > 0 else F.array().cast("array<string>")
    after = F.slice(parts, field + 2, F.greatest(n - field - 1, F.lit(0)))
    replaced = F.concat_ws(",", before, pseudonym_or_empty(F.element_at(parts, field + 1)), after)
    return F.when(n > field, replaced).otherwise(line)


_JSON_USER = r'"user_id"\s*:\s*"?([^",}]*)"?'


def redact_json_line(line: Column) -> Column:
    """A JSON line with the value of ``user_id`` replaced by its pseudonym (as a string)."""
    value = F.regexp_extract(line, _JSON_USER, 1)
    replacement = F.concat(F.lit('"user_id":"'), pseudonym_or_empty(value), F.lit('"'))
    return F.when(value != "", F.regexp_replace(line, F.lit(_JSON_USER), replacement)).otherwise(line)
