"""Keyed pseudonyms for user ids: HMAC-SHA256 (RFC 2104) written in Spark SQL, no Python UDF.

The key comes from the environment and never leaves the driver except as the two padded
key blocks inside the query plan; it is never logged.
"""

from __future__ import annotations

import hashlib
import logging
import os

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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


def hmac_sha256_hex(message: Column, key: bytes, hex_chars: int = PSEUDONYM_HEX_CHARS) -> Column:
    """HMAC-SHA256 of ``message`` (its UTF-8 text) as lowercase hex, first ``hex_chars`` kept.

    Equals ``hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:hex_chars]``.
    """
    k_ipad, k_opad = hmac_pads(key)
    inner = F.unhex(F.sha2(F.concat(F.lit(bytearray(k_ipad)), message.cast("string").cast("binary")), 256))
    outer = F.sha2(F.concat(F.lit(bytearray(k_opad)), inner), 256)
    return F.substring(outer, 1, hex_chars)


def pseudonymise(df: DataFrame, column: str, key: bytes) -> DataFrame:
    """Replace ``column`` (a user id, any type; its text is hashed) by its keyed pseudonym.

    Returns:
        ``df`` with ``column`` as a string of PSEUDONYM_HEX_CHARS hex characters.
    """
    return df.withColumn(column, hmac_sha256_hex(F.col(column), key))
