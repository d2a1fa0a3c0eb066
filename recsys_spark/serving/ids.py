"""The pipeline's id rules at the service's edge, in plain Python: what clean does to a user id
(the keyed pseudonym), to a product id (its key under string ids) and to an event type, and the
user key the score stage seeds exploration with. Each function is the twin of a Spark expression
and a test holds them equal (tests/serving/test_ids.py):

- :func:`pseudonym` = ``etl.pseudonym.hmac_sha256_hex`` of the id as clean reads it
  (``etl.validate.id_value``: the trimmed text; under integer ids the whole number's text);
- :func:`product_key` = ``product_ids.keys`` (the 63-bit xxhash64 key under string ids, the
  number under integer ids);
- :func:`spark_xxhash64` = ``F.xxhash64`` of strings and literal ints;
- :func:`user_key` = ``scoring.inputs.scoring_rows``' ``xxhash64(user_id, score.seed, run_date)``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Callable, Mapping

from recsys_spark import schema
from recsys_spark.etl.pseudonym import PSEUDONYM_HEX_CHARS
from recsys_spark.product_ids import KEY_MASK

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
SPARK_HASH_SEED = 42  # F.xxhash64's seed

_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P3 = 1609587929392839161
_P4 = 9650029242287828579
_P5 = 2870177450012600261
_M64 = (1 << 64) - 1


class IdError(ValueError):
    """An id or event type the pipeline would reject (clean's bad_id / unknown_event_type)."""


def pseudonym(user_id: str | int, key: bytes, id_type: str = schema.ID_INTEGER) -> str:
    """The pseudonym clean gives ``user_id`` (the user_id of the clean events and the recommendations).

    Args:
        user_id: the shop's id, as text or a number.
        key: the HMAC key (``etl.pseudonym.pseudonym_key``).
        id_type: ``clean.id_types.user_id``.

    Raises:
        IdError: empty, or not a whole number in the long range under integer ids.
    """
    text = id_text(user_id, id_type, "user_id")
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_CHARS]


def id_text(value: str | int, id_type: str, name: str) -> str:
    """The text clean hashes or parses for an id: trimmed; under integer ids the number's text
    (``"+0042"`` -> ``"42"``). Raises: IdError naming ``name``."""
    if isinstance(value, bool):
        raise IdError(f"{name}: {value!r} is not an id")
    text = str(value).strip(" ")
    if not text:
        raise IdError(f"{name} is empty")
    if id_type == schema.ID_STRING:
        return text
    number = _whole_number(text)
    if number is None:
        raise IdError(f"{name}: {_short(text)!r} is not a whole number (clean.id_types.{name}=integer; "
                      f"set clean.id_types.{name}=string for text ids)")
    return str(number)


def product_key(product_id: str | int, id_type: str = schema.ID_INTEGER) -> int:
    """A product id as the pipeline holds it inside (``product_ids.keys``): the number under
    integer ids, the 63-bit key of the trimmed text under string ids. Raises: IdError."""
    text = id_text(product_id, id_type, "product_id")
    if id_type == schema.ID_STRING:
        return spark_xxhash64(text) & KEY_MASK
    return int(text)


def event_type(value: str, aliases: Mapping[str, str]) -> str:
    """``etl.validate.normalise_event_type`` of a trimmed type: lower case, mapped through
    ``clean.event_aliases``. Raises: IdError when the result is no contract event type."""
    return event_types(aliases)(value)


def event_types(aliases: Mapping[str, str]) -> Callable[[str], str]:
    """:func:`event_type` with ``aliases`` read once (a posted session names 50 event types)."""
    mapped = {source.strip().lower(): target for source, target in aliases.items()}
    known: dict[str, str] = {}  # raw text -> its contract type: the few texts a shop sends

    def kind(value: str) -> str:
        found = known.get(value) if isinstance(value, str) else None
        if found is not None:
            return found
        text = str(value).strip(" ").lower()
        result = mapped.get(text, text)
        if result not in schema.EVENT_TYPES:
            raise IdError(f"event_type: {_short(str(value))!r} is not one of {', '.join(schema.EVENT_TYPES)} "
                          f"(or an alias of clean.event_aliases)")
        if isinstance(value, str) and len(known) < 1000:
            known[value] = result
        return result

    return kind


def user_key(user: str, seed: int, run_date: str) -> int:
    """``xxhash64(user_id, score.seed, run_date)`` of scoring_rows: the key of a user's exploration draws."""
    return spark_xxhash64(user, seed, run_date)


def spark_xxhash64(*values: str | int | None) -> int:
    """Spark's ``xxhash64`` of the given values (signed 64-bit), as ``F.xxhash64(F.lit(v), ...)``:
    each value hashed with the previous hash as the seed (42 first), a str as its UTF-8 bytes, an int
    as a 4-byte int when it fits (Spark's literal type), else an 8-byte long; None is skipped."""
    h = SPARK_HASH_SEED
    for value in values:
        if value is None:
            continue
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, int) and not isinstance(value, bool):
            data = struct.pack("<i", value) if INT32_MIN <= value <= INT32_MAX else struct.pack("<q", value)
        else:
            raise TypeError(f"spark_xxhash64 takes str and int, got {type(value).__name__}")
        h = xxh64(data, h & _M64)
        h = h - (1 << 64) if h > INT64_MAX else h
    return h


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` (the reference algorithm, as Spark's XXH64): unsigned 64-bit."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while i + 32 <= n:
            for lane in range(4):
                v[lane] = _round(v[lane], int.from_bytes(data[i:i + 8], "little"))
                i += 8
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for lane in v:
            h = ((h ^ _round(0, lane)) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _M64
        h = (_rotl(h, 23) * _P2 + _P3) & _M64
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M64
        h = (_rotl(h, 11) * _P1) & _M64
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    return h ^ (h >> 32)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M64
    return (_rotl(acc, 31) * _P1) & _M64


def _whole_number(text: str) -> int | None:
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    number = int(text)
    return number if INT64_MIN <= number <= INT64_MAX else None


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
