"""Per-user item sequences as a raw clickstream that ``clean`` accepts.

The public sequential-recommendation benchmarks ship their data as ``user item`` lines, each
user's lines in the order of that user's events and nothing else: SASRec's ``data/ml-1m.txt``
(MovieLens-1M: 6,040 users, 3,416 items, 999,611 lines), used as is by BERT4Rec and by
Klenitskiy and Vasilev (RecSys 2023). :func:`to_clickstream` turns every line into one ``view``
in the raw (REES46) contract:

* ids as they are in the file (integers): ``user_id``, ``product_id``;
* a user's n-th line (0-based) at ``start + n * gap_seconds``: every user starts at ``start``,
  so time keeps each user's order and nothing else (the file has no time, and a constant gap
  makes the model's time-gap feature carry none);
* a source session (``user_session`` = ``<user>-<n // session_steps>``) of ``session_steps``
  views, so that no user-day trips clean's bot rules (more than
  ``clean.bot_max_events_per_minute`` events in 60 seconds, more than
  ``clean.bot_max_distinct_items_per_session`` items in one session; a user-day without source
  sessions counts as one session, and a MovieLens user rates up to 2,277 films);
* category, brand and price empty.

:func:`write_clickstream` writes it as ``paths.raw`` expects it, one CSV per UTC day
(``events-YYYY-MM-DD.csv``). ``benchmarks/quality_bench.py --movielens PATH`` and the command
line below share it::

    python -m recsys_spark.data.sequences_log ml-1m.txt /data/ml-1m/raw     # then: recsys run paths.raw=...

MovieLens may not be redistributed: the data is read from where its user put it, never shipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_spark import schema
from recsys_spark.config import CleanConfig
from recsys_spark.errors import ConfigError, InputError, RecsysError

STEP = "step"
# Before every MovieLens rating (2000-04-25 on): any past instant would do.
DEFAULT_START = "2000-01-01T00:00:00+00:00"
# 5 minutes: 1 event in any 60 seconds, and a 24-view session spans 115 minutes, inside clean's
# 240-minute cap on a session (no split).
DEFAULT_GAP_SECONDS = 300
DEFAULT_SESSION_STEPS = 24
_EMPTY = (schema.CATEGORY_ID, schema.CATEGORY_CODE, schema.BRAND, schema.PRICE)


def read_sequences(path: str | Path, max_users: int = 0) -> pd.DataFrame:
    """The ``user item`` lines of ``path``, numbered per user in file order.

    Args:
        path: a text file, one ``user item`` pair of integers per line (any whitespace), each
            user's lines in event order (users may interleave).
        max_users: keep the first this many users, in order of first appearance (0: all).

    Returns:
        user_id, product_id (int64) and step (int64, 0.. per user, the line's rank among the
        user's lines), in file order.

    Raises:
        InputError: a missing file, a line that is not two integers, or no line at all.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (the per-user sequences, 'user item' lines)")
    expected = f"{path}: expected 'user item' lines of two integers"
    try:  # no names: a line with a field too many or too few fails instead of becoming an index or a NaN
        pairs = pd.read_csv(path, sep=r"\s+", header=None, dtype="int64", engine="c")
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise InputError(f"{expected}: {str(exc).strip()}") from exc
    if pairs.shape[1] != 2 or pairs.empty:
        raise InputError(f"{expected}: found {pairs.shape[1]} fields a line")
    pairs.columns = [schema.USER_ID, schema.PRODUCT_ID]
    if max_users:
        first_users = pd.unique(pairs[schema.USER_ID])[:max_users]
        pairs = pairs[pairs[schema.USER_ID].isin(first_users)]
    return pairs.assign(**{STEP: pairs.groupby(schema.USER_ID).cumcount().astype("int64")}).reset_index(drop=True)


def check_spacing(gap_seconds: int, session_steps: int, rules: CleanConfig) -> None:
    """Raise ConfigError when views ``gap_seconds`` apart, ``session_steps`` to a session,
    would break one of clean's behaviour rules (a row flagged as a bot's or merged as a
    near-duplicate is not kept).

    Args:
        gap_seconds: seconds between a user's consecutive views (>= 1).
        session_steps: views per source session (>= 1).
        rules: the clean settings the log will be cleaned with.
    """
    if gap_seconds < 1 or session_steps < 1:
        raise ConfigError(f"gap_seconds and session_steps must be >= 1, got {gap_seconds} and {session_steps}")
    per_minute = 60 // gap_seconds + 1  # the most of a user's views in any 60 seconds
    if per_minute > rules.bot_max_events_per_minute:
        raise ConfigError(f"views {gap_seconds} s apart make {per_minute} events a minute, more than "
                          f"clean.bot_max_events_per_minute={rules.bot_max_events_per_minute}: choose a longer gap")
    if session_steps > rules.bot_max_distinct_items_per_session:
        raise ConfigError(f"{session_steps} views a session exceed clean.bot_max_distinct_items_per_session="
                          f"{rules.bot_max_distinct_items_per_session}: choose fewer")
    if gap_seconds <= rules.near_duplicate_seconds:
        raise ConfigError(f"views {gap_seconds} s apart are within clean.near_duplicate_seconds="
                          f"{rules.near_duplicate_seconds}: a repeated item would be merged")


def to_clickstream(sequences: pd.DataFrame, start: dt.datetime, gap_seconds: int = DEFAULT_GAP_SECONDS,
                   session_steps: int = DEFAULT_SESSION_STEPS) -> pd.DataFrame:
    """One ``view`` per sequence step, in the raw contract's text form.

    Args:
        sequences: user_id, product_id, step (from :func:`read_sequences`).
        start: aware datetime, the time of every user's first view.
        gap_seconds: seconds between a user's consecutive views.
        session_steps: views per source session.

    Returns:
        Text rows with the columns ``schema.RAW_COLUMNS`` (None for null), one per input row in
        its order: event_time like ``2000-01-01 00:05:00 UTC``.
    """
    if start.tzinfo is None:
        raise ConfigError(f"start {start.isoformat()} has no time zone")
    steps = sequences[STEP].to_numpy(dtype=np.int64)
    seconds = int(start.timestamp()) + steps * gap_seconds
    times = pd.to_datetime(seconds, unit="s", utc=True).strftime("%Y-%m-%d %H:%M:%S UTC")
    users = sequences[schema.USER_ID].astype(str).to_numpy(dtype=object)
    text = {
        schema.EVENT_TIME: np.asarray(times, dtype=object),
        schema.EVENT_TYPE: np.full(len(sequences), "view", dtype=object),
        schema.PRODUCT_ID: sequences[schema.PRODUCT_ID].astype(str).to_numpy(dtype=object),
        schema.USER_ID: users,
        schema.USER_SESSION: users + "-" + (steps // session_steps).astype(str).astype(object),
    }
    text.update({column: np.full(len(sequences), None, dtype=object) for column in _EMPTY})
    return pd.DataFrame(text, columns=schema.RAW_COLUMNS)


def write_clickstream(rows: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Write raw text rows as one CSV per UTC day, ``events-YYYY-MM-DD.csv`` with the contract's
    header, rows in time order; each file is written to a temporary name, then renamed.

    Args:
        rows: text rows from :func:`to_clickstream`.
        folder: a local folder that is absent or empty (no stale day of another log).

    Returns:
        The files written, by date.

    Raises:
        InputError: ``folder`` holds files already.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder}: not empty; write the clickstream to a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    ordered = rows.sort_values([schema.EVENT_TIME, schema.USER_ID], kind="stable")
    written = []
    for day, part in ordered.groupby(ordered[schema.EVENT_TIME].str.slice(0, 10), sort=True):
        target = folder / f"events-{day}.csv"
        temporary = folder / f".{target.name}.tmp"
        part.to_csv(temporary, index=False, header=True, lineterminator="\n")
        os.replace(temporary, target)
        written.append(target)
    return written


def convert(path: str | Path, folder: str | Path, max_users: int = 0, start: str = DEFAULT_START,
            gap_seconds: int = DEFAULT_GAP_SECONDS, session_steps: int = DEFAULT_SESSION_STEPS,
            rules: CleanConfig | None = None) -> dict:
    """Read ``user item`` sequences and write them as a raw clickstream (see the module's doc).

    Args:
        path: the sequences file.
        folder: the raw folder to write (absent or empty).
        max_users: the first this many users only (0: all).
        start: ISO instant with its offset, every user's first view.
        gap_seconds, session_steps: the spacing, checked against ``rules`` first.
        rules: the clean settings the log will be cleaned with (default: CleanConfig()).

    Returns:
        sequences (the file), raw_path, files, rows (= views = lines read), users, items,
        longest (the most lines of one user), first_event and last_event (ISO).

    Raises:
        ConfigError: a spacing that clean would flag, or a start without a time zone.
        InputError: an unreadable file, a non-empty folder, or a last view not in the past.
    """
    check_spacing(gap_seconds, session_steps, rules or CleanConfig())
    first = dt.datetime.fromisoformat(start)
    sequences = read_sequences(path, max_users)
    longest = int(sequences[STEP].max()) + 1
    last = first + dt.timedelta(seconds=(longest - 1) * gap_seconds)
    if first.tzinfo is None or last >= dt.datetime.now(dt.timezone.utc):
        raise InputError(f"start {start}: the last view ({last.isoformat()}) must lie in the past, with a time "
                         "zone (clean rejects future events)")
    files = write_clickstream(to_clickstream(sequences, first, gap_seconds, session_steps), folder)
    return {
        "sequences": str(path),
        "raw_path": str(folder),
        "files": len(files),
        "rows": len(sequences),
        "users": int(sequences[schema.USER_ID].nunique()),
        "items": int(sequences[schema.PRODUCT_ID].nunique()),
        "longest": longest,
        "first_event": first.isoformat(),
        "last_event": last.isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys_spark.data.sequences_log SEQUENCES RAW_FOLDER [--users N] ...``: print the summary."""
    parser = argparse.ArgumentParser(description="Write 'user item' sequences (SASRec's ml-1m.txt) as a raw "
                                                 "clickstream, one view per line, one CSV per day.")
    parser.add_argument("sequences", type=Path, help="the 'user item' file")
    parser.add_argument("raw_folder", type=Path, help="where to write the day files (absent or empty)")
    parser.add_argument("--users", type=int, default=0, help="the first N users only (default: all)")
    parser.add_argument("--start", default=DEFAULT_START, help=f"every user's first view (default {DEFAULT_START})")
    parser.add_argument("--gap-seconds", type=int, default=DEFAULT_GAP_SECONDS,
                        help=f"between a user's views (default {DEFAULT_GAP_SECONDS})")
    parser.add_argument("--session-steps", type=int, default=DEFAULT_SESSION_STEPS,
                        help=f"views per session (default {DEFAULT_SESSION_STEPS})")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.sequences, args.raw_folder, args.users, args.start, args.gap_seconds, args.session_steps)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
