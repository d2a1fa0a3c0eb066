"""The raw log's text, with the faults of real logs: a day of clean events rendered as the raw
contract's text values (ids as integers or shop-style strings), the field faults, duplicates and
malformed lines injected at their configured rates and counted, and the lines as CSV or JSON.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_spark import schema
from recsys_spark.config import GenerateConfig
from recsys_spark.data.clickstream import SECONDS_PER_DAY

DIRT_KINDS = ("duplicates", "malformed", "null_ids", "unknown_event_types", "bot_events", "missing_sessions")
UNKNOWN_EVENT_TYPES = np.array(["wishlist", "VIEW ", "Purchase", "click", "add_to_cart "], dtype=object)


@dataclass(frozen=True)
class DirtRates:
    """Per-row probabilities of each kind of fault (malformed lines are added, not replaced)."""

    duplicate: float
    malformed: float
    null_id: float
    unknown_event: float
    missing_session: float

    @classmethod
    def from_config(cls, cfg: GenerateConfig) -> DirtRates:
        return cls(
            duplicate=cfg.duplicate_rate,
            malformed=cfg.malformed_rate,
            null_id=cfg.null_id_rate,
            unknown_event=cfg.unknown_event_rate,
            missing_session=cfg.missing_session_rate,
        )


_HMS = np.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(SECONDS_PER_DAY)], dtype=object)
_NUMERIC_COLUMNS = {schema.PRODUCT_ID, schema.CATEGORY_ID, schema.PRICE, schema.USER_ID}
_GARBAGE_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ <>/!?#;:=_-"))


def to_raw_text(events: pd.DataFrame, naive: bool = False, empty_columns: tuple[str, ...] = (),
                string_ids: bool = False) -> pd.DataFrame:
    """Render typed events as the raw contract's text values.

    Args:
        events: a frame from :func:`generate_events`.
        naive: write event_time without its zone (``2019-10-01 00:00:04``).
        empty_columns: columns set to null on every row.
        string_ids: user and product ids as :func:`string_user_id` and :func:`string_product_id`.

    Returns:
        The same rows and columns as text (object dtype, None for null): event_time like
        ``2019-10-01 00:00:04 UTC``, prices with 2 decimals, ids as integers (or strings).
    """
    seconds = (events[schema.EVENT_TIME] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    seconds = seconds.to_numpy(dtype=np.int64)
    days, in_day = np.divmod(seconds, SECONDS_PER_DAY)
    unique_days, inverse = np.unique(days, return_inverse=True)
    epoch = dt.date(1970, 1, 1)
    day_text = np.array([(epoch + dt.timedelta(days=int(d))).isoformat() for d in unique_days], dtype=object)
    cents = np.rint(events[schema.PRICE].to_numpy() * 100).astype(np.int64)
    text = {
        schema.EVENT_TIME: day_text[inverse] + " " + _HMS[in_day] + ("" if naive else " UTC"),
        schema.EVENT_TYPE: events[schema.EVENT_TYPE].to_numpy(dtype=object),
        schema.PRODUCT_ID: _as_text(events[schema.PRODUCT_ID].to_numpy(), string_product_id if string_ids else str),
        schema.CATEGORY_ID: _as_text(events[schema.CATEGORY_ID].to_numpy()),
        schema.CATEGORY_CODE: events[schema.CATEGORY_CODE].to_numpy(dtype=object),
        schema.BRAND: events[schema.BRAND].to_numpy(dtype=object),
        schema.PRICE: _as_text(cents, lambda c: f"{c // 100}.{c % 100:02d}"),
        schema.USER_ID: _as_text(events[schema.USER_ID].to_numpy(), string_user_id if string_ids else str),
        schema.USER_SESSION: events[schema.USER_SESSION].to_numpy(dtype=object),
    }
    for column in empty_columns:
        text[column] = np.full(len(events), None, dtype=object)
    return pd.DataFrame(text, columns=schema.RAW_COLUMNS)


_SIZES = ("XS", "S", "M", "L", "XL")
_STRING_ID_NAMESPACE = uuid.UUID("6f1c1a52-31e4-4c55-9a3e-2d0b1f5e7a90")


def string_user_id(user_id: int) -> str:
    """The UUID visitor id that stands for integer ``user_id`` (generate.string_ids)."""
    return str(uuid.uuid5(_STRING_ID_NAMESPACE, str(user_id)))


def string_product_id(product_id: int) -> str:
    """The shop-style id that stands for integer ``product_id`` (generate.string_ids): a SKU with
    dashes and a zero-padded number (``SKU-012345678-XL``) for two products in three, else the
    number zero-padded to ten digits (``0012345678``): text that looks like an integer but is not one."""
    if product_id % 3:
        return f"SKU-{product_id:09d}-{_SIZES[product_id % len(_SIZES)]}"
    return f"{product_id:010d}"


def _as_text(values: np.ndarray, fmt=str) -> np.ndarray:
    """Format each distinct value once: ids and prices repeat a lot within a day."""
    if len(values) == 0:
        return np.array([], dtype=object)
    codes, uniques = pd.factorize(values)
    return np.array([fmt(v) for v in uniques.tolist()], dtype=object)[codes]


def render_lines(rows: pd.DataFrame, fmt: str) -> np.ndarray:
    """One line per row (no newline): CSV with empty fields for null, or a JSON object.

    Values never hold commas, quotes or backslashes, so neither format needs escaping.

    Args:
        rows: text rows with the columns ``schema.RAW_COLUMNS`` (None for null).
        fmt: ``"csv"`` or ``"json"``.

    Returns:
        object array [len(rows)] of str.
    """
    if len(rows) == 0:
        return np.array([], dtype=object)
    if fmt == "csv":
        cols = [rows[c].fillna("") for c in schema.RAW_COLUMNS]
        return cols[0].str.cat(cols[1:], sep=",").to_numpy(dtype=object)
    tokens = []
    for c in schema.RAW_COLUMNS:
        values = rows[c]
        rendered = values if c in _NUMERIC_COLUMNS else '"' + values + '"'
        tokens.append(f'"{c}":' + rendered.where(values.notna(), "null"))
    return ("{" + tokens[0].str.cat(tokens[1:], sep=",") + "}").to_numpy(dtype=object)


def inject_dirt(
    rows: pd.DataFrame, rates: DirtRates, fmt: str, rng: np.random.Generator, protected: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Add the faults of real logs to one day of text rows and render them as lines.

    Each clean row gets at most one field fault (an empty user_id or product_id, an unknown
    event type, an empty user_session), so every count is exact; only rows left untouched are
    duplicated (the copy right after the original), and malformed lines (truncated, a wrong
    number of fields, or garbage; for JSON also a CSV line) are added at random places.
    Protected rows (the bots') get no fault, so they stay countable.

    Args:
        rows: text rows from :func:`to_raw_text`, time-ordered.
        rates: the per-row probabilities.
        fmt: ``"csv"`` or ``"json"``.
        rng: the random source (one per day, for determinism).
        protected: bool [len(rows)], rows to leave as they are.

    Returns:
        (lines, counts): object array of str, and the number of each fault
        (``duplicates``, ``malformed``, ``null_ids``, ``unknown_event_types``, ``missing_sessions``).
    """
    rows, duplicated, counts = inject_row_faults(rows, rates, rng, protected)
    n = len(rows)
    lines = render_lines(rows, fmt)
    n_malformed = int(rng.binomial(n, rates.malformed)) if np.any(~protected) else 0
    sources = rng.choice(np.flatnonzero(~protected), size=n_malformed) if n_malformed else np.array([], dtype=np.int64)
    malformed = np.array([_malformed(lines[i], rows.iloc[i], fmt, rng) for i in sources], dtype=object)

    # Sort keys place each copy right after its original and each malformed line before a row.
    before_row = rng.integers(0, n + 1, size=n_malformed) - 0.25
    keys = np.concatenate([np.arange(n, dtype=np.float64), duplicated + 0.5, before_row])
    all_lines = np.concatenate([lines, lines[duplicated], malformed])
    return all_lines[np.argsort(keys, kind="stable")], {**counts, "malformed": n_malformed}


def inject_row_faults(
    rows: pd.DataFrame, rates: DirtRates, rng: np.random.Generator, protected: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
    """The field faults of :func:`inject_dirt` and the choice of the rows to duplicate.

    Args:
        rows, rates, rng, protected: as for :func:`inject_dirt`.

    Returns:
        (rows, duplicated, counts): the rows with their field faults (same order), int
        [n_duplicated] the positions of the rows to copy, and the counts of ``duplicates``,
        ``null_ids``, ``unknown_event_types`` and ``missing_sessions``.
    """
    rows = rows.copy()
    n = len(rows)
    u = rng.random(n)
    u[protected] = 2.0
    # One uniform per row, cut at cumulative rates, keeps the field faults disjoint.
    cut_null, cut_unknown = rates.null_id, rates.null_id + rates.unknown_event
    cut_missing = cut_unknown + rates.missing_session
    null_ids = u < cut_null
    unknown = (u >= cut_null) & (u < cut_unknown)
    missing = (u >= cut_unknown) & (u < cut_missing)
    null_user = null_ids & (rng.random(n) < 0.5)
    rows.loc[null_user, schema.USER_ID] = None
    rows.loc[null_ids & ~null_user, schema.PRODUCT_ID] = None
    rows.loc[unknown, schema.EVENT_TYPE] = rng.choice(UNKNOWN_EVENT_TYPES, size=int(unknown.sum()))
    rows.loc[missing, schema.USER_SESSION] = None
    untouched = (u >= cut_missing) & ~protected
    duplicated = np.flatnonzero(untouched & (rng.random(n) < rates.duplicate))
    counts = {
        "duplicates": len(duplicated),
        "null_ids": int(null_ids.sum()),
        "unknown_event_types": int(unknown.sum()),
        "missing_sessions": int(missing.sum()),
    }
    return rows, duplicated, counts


def with_duplicates(rows: pd.DataFrame, duplicated: np.ndarray) -> pd.DataFrame:
    """``rows`` with a copy of each row in ``duplicated`` right after its original."""
    keys = np.concatenate([np.arange(len(rows), dtype=np.float64), duplicated + 0.5])
    both = pd.concat([rows, rows.iloc[duplicated]], ignore_index=True)
    return both.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


def _malformed(line: str, row: pd.Series, fmt: str, rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 3))
    if kind == 0:  # cut short, as by a crashed writer: before the last field separator
        return line[: int(rng.integers(1, line.rindex(",")))]
    if kind == 1:
        if fmt == "csv":
            return line + "," + str(int(rng.integers(0, 1000)))
        return ",".join("" if v is None else str(v) for v in row)
    return "".join(rng.choice(_GARBAGE_ALPHABET, size=int(rng.integers(8, 60))))
