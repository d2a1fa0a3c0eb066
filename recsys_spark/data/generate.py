"""``recsys generate``: a synthetic e-commerce clickstream in the raw (REES46) contract.

The data has the structure that makes sequential recommendation worth doing, so that a
SASRec-style model has something to learn beyond popularity and co-occurrence:

* items have Zipf popularity, a category (dotted code, some null), a brand (some null) and a
  log-normal price around their category's level;
* every user has a taste over categories that drifts over the period (a mix of two Dirichlet
  draws whose weight moves with time), so recent history predicts better than old history;
* inside a session the next item is often one of a fixed, small list of *complements* of the
  previous item (an order-dependent signal), else from the same category, else a fresh one;
* views lead to carts and carts to purchases or removals; activity per user is heavy-tailed.

On top come the faults of real logs, each at its configured rate and counted: exact duplicate
lines, malformed lines, empty ids, unknown event types, missing sessions and a few bots
(``defects=false`` turns all of them off, whatever the rates say).

Other shapes of real logs, each off by default (the default output does not change):
``user_active_days`` (users active in a short window each: a thin tail of recent users),
``burst_share`` (ratings-like bursts of 100-300 distinct items a user-minute's pace),
``empty_columns``, ``event_types`` (e.g. purchases only), ``item_id_offset`` (ids near 2^62),
``naive_timestamps``, ``string_ids`` (UUID visitors, SKU and zero-padded product ids) and
``format=parquet``. :func:`regime_overrides` names a few mixes.

Everything is vectorised with numpy across the sessions of a day and generated day by day, so
memory stays bounded by one day of events; a seed gives byte-identical files.

The world (catalogue, users, schedule) is drawn in world.py, each day's clean events in
clickstream.py, their text and faults in raw_text.py; this module is the stage, which writes
the files.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from recsys_spark import schema
from recsys_spark.config import Config, GenerateConfig, is_uri
from recsys_spark.data.clickstream import generate_events
from recsys_spark.data.raw_text import (
    DIRT_KINDS, DirtRates, inject_dirt, inject_row_faults, to_raw_text, with_duplicates,
)
from recsys_spark.data.world import World, build_world, effective_config
from recsys_spark.errors import ConfigError
from recsys_spark.io import HadoopFs

# What the stage offers its callers (benchmarks, tests, notebooks), the world's and the raw
# text's among them.
__all__ = ["REGIMES", "regime_overrides", "run", "build_world", "effective_config", "generate_events", "to_raw_text",
           "day_file_name", "parquet_bytes"]

log = logging.getLogger(__name__)


REGIMES: dict[str, tuple[str, ...]] = {
    "demo": (),
    # MovieLens-like: many ratings at once, users active for two months of four, no brand or price.
    "ratings": (
        "generate.days=120",
        "generate.user_active_days=60",
        "generate.burst_share=0.5",
        "generate.empty_columns=[brand,price,category_code]",
    ),
    "long_tail": ("generate.n_items=20000", "generate.zipf_exponent=0.8"),
    # A shop's session log: anonymous visitors with one session each, over two months, and a
    # catalogue so large and flat that most products are seen once (issue 31's real log: 11,000
    # views of 7,000 products by 3,000 visitors).
    "session_log": ("generate.sessions_per_user=1", "generate.days=60", "generate.n_items=20000",
                    "generate.zipf_exponent=0.6"),
}


def regime_overrides(name: str) -> list[str]:
    """The dotted overrides of a named data shape (``demo``: none; ``ratings``; ``long_tail``;
    ``session_log``).

    Put them before the caller's own overrides, which then win:
    ``load_config(path, [*regime_overrides("ratings"), "generate.n_users=200"])``.

    Raises:
        ConfigError: an unknown name.
    """
    if name not in REGIMES:
        raise ConfigError(f"unknown generator regime {name!r} (one of {', '.join(sorted(REGIMES))})")
    return list(REGIMES[name])


# ----------------------------------------------------------------------------- stage


def day_file_name(day: dt.date, fmt: str, compression: str) -> str:
    """``events-YYYY-MM-DD.csv``, ``.csv.gz``, ``.json``, ``.json.gz`` or ``.parquet``."""
    suffix = ".gz" if compression == "gzip" and fmt != "parquet" else ""
    return f"events-{day.isoformat()}.{fmt}{suffix}"


def parquet_bytes(rows: pd.DataFrame, compression: str) -> bytes:
    """One Parquet file of text rows, typed as ``schema.RAW_TYPED_SCHEMA`` (what clean reads).

    Args:
        rows: text rows with the columns ``schema.RAW_COLUMNS`` (None for null), numeric
            columns holding numbers (an unknown event type is fine: event_type is text).
        compression: ``"gzip"`` (Parquet's own codec) or ``"none"``.
    """
    arrays = [pa.array(rows[f.name].to_numpy(dtype=object), type=pa.string()).cast(f.type) for f in schema.RAW_ARROW_SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=schema.RAW_ARROW_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="gzip" if compression == "gzip" else "none")
    return sink.getvalue().to_pybytes()


def run(spark: SparkSession | None, cfg: Config) -> dict:
    """Write the synthetic clickstream, one file per day, to ``paths.raw``.

    A day's file replaces the one of an earlier run (written to a temporary name, then
    renamed; files of the same day in another format are removed). A URI destination is
    written through the Hadoop file system of the Spark session, with the same layout.
    Parquet files hold no malformed lines (``malformed_rate`` is ignored, the count is 0).

    Args:
        spark: the session; only used when ``paths.raw`` is a URI (None will do otherwise).
        cfg: the whole config; ``generate`` and ``paths`` are read.

    Returns:
        raw_path, files, events (lines or Parquet rows written, headers excluded), users and
        items (distinct, in the clean events), days, and dirt: the count of each injected fault.
    """
    gen = effective_config(cfg.generate)
    world = build_world(gen)
    raw_path = cfg.paths.resolve("raw")
    rates = DirtRates.from_config(gen)
    tally = Tally(seen_items=np.zeros(world.n_items, dtype=bool))
    for day, events in generate_events(gen, world):
        protected = events[schema.USER_ID].isin(world.bot_user_ids).to_numpy()
        data, written, counts = day_file(events, day, gen, rates, protected)
        tally.add(world, events, counts, protected, written)
        name = day_file_name(day, gen.format, gen.compression)
        if is_uri(raw_path):
            _write_day_hadoop(spark, raw_path.rstrip("/"), day, name, data)
        else:
            _write_day_local(Path(raw_path), day, name, data)
    summary = tally.summary(raw_path, gen.days)
    log.info("wrote %d %s file(s), %d rows, to %s; dirt %s", tally.files, gen.format, tally.events, raw_path, tally.dirt)
    return summary


def day_file(events: pd.DataFrame, day: dt.date, gen: GenerateConfig, rates: DirtRates,
             protected: np.ndarray) -> tuple[bytes, int, dict[str, int]]:
    """One day's file: the day's events as raw text with their faults (a random stream of the
    day's own), as CSV or JSON lines (gzipped under ``compression=gzip``) or as Parquet.

    Args:
        protected: bool [len(events)], the bots' rows, left without faults.

    Returns:
        (the file's bytes, the lines or Parquet rows in it, the count of each injected fault).
    """
    rng = np.random.default_rng([gen.seed, 2, day.toordinal()])
    text = to_raw_text(events, gen.naive_timestamps, tuple(gen.empty_columns), gen.string_ids)
    if gen.format == "parquet":
        rows, duplicated, counts = inject_row_faults(text, rates, rng, protected)
        rows = with_duplicates(rows, duplicated)
        return parquet_bytes(rows, gen.compression), len(rows), counts
    lines, counts = inject_dirt(text, rates, gen.format, rng, protected)
    header = ",".join(schema.RAW_COLUMNS) if gen.format == "csv" else None
    return _day_bytes(lines, header, gen.compression), len(lines), counts


@dataclass
class Tally:
    """What :func:`run` has written so far: files, rows, the count of each fault, and which users
    and items (bool [n_items]) its clean events hold."""

    seen_items: np.ndarray
    seen_users: set[int] = field(default_factory=set)
    dirt: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRT_KINDS, 0))
    files: int = 0
    events: int = 0

    def add(self, world: World, events: pd.DataFrame, counts: dict[str, int], protected: np.ndarray,
            written: int) -> None:
        """Count one day's file: its faults, its bots' rows, its users and items, its rows."""
        for key, value in counts.items():
            self.dirt[key] += value
        self.dirt["bot_events"] += int(protected.sum())
        self.seen_users.update(np.unique(events[schema.USER_ID].to_numpy()).tolist())
        self.seen_items[np.isin(world.product_id, events[schema.PRODUCT_ID].to_numpy())] = True
        self.files += 1
        self.events += written

    def summary(self, raw_path: str, days: int) -> dict:
        """The summary :func:`run` returns."""
        return {
            "raw_path": raw_path,
            "files": self.files,
            "events": self.events,
            "users": len(self.seen_users),
            "items": int(self.seen_items.sum()),
            "days": days,
            "dirt": self.dirt,
        }


def _day_bytes(lines: np.ndarray, header: str | None, compression: str) -> bytes:
    body = "\n".join(([header] if header else []) + lines.tolist())
    data = (body + "\n").encode("utf-8") if body else b""
    if compression != "gzip":
        return data
    buffer = io.BytesIO()
    # mtime=0 and no file name in the header: the same seed gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()


def _other_names(day: dt.date, name: str) -> list[str]:
    """The file names the same day has in the other formats, removed on a re-run."""
    names = {day_file_name(day, f, c) for f in ("csv", "json", "parquet") for c in ("none", "gzip")}
    return sorted(names - {name})


def _write_day_local(folder: Path, day: dt.date, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
    for other in _other_names(day, name):
        (folder / other).unlink(missing_ok=True)


def _write_day_hadoop(spark: SparkSession, folder: str, day: dt.date, name: str, data: bytes) -> None:
    """The same single file per day, through the Hadoop file system of the URI.

    Not ``DataFrame.write``: that makes a folder per day, which a plain ``spark.read.csv``
    of ``paths.raw`` does not descend into.
    """
    fs = HadoopFs(spark, folder)
    fs.write_bytes(f"{folder}/{name}", data)
    for other in _other_names(day, name):
        fs.delete(f"{folder}/{other}", recursive=False)
