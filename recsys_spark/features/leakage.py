"""The leakage guard: nothing a model learns from, or conditions on, crosses the split."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.errors import DataQualityError
from recsys_spark.features.sequences import HIST_END, STEP_TIME, WINDOW_TIMES
from recsys_spark.features.split import Cutoffs, Split, before

_RECOUNT = "recount"


def check_no_leakage(
    *,
    train: DataFrame,
    item_vocab: DataFrame,
    steps: DataFrame,
    validation: DataFrame,
    test: DataFrame,
    cutoffs: Cutoffs | Split,
    item_features: DataFrame | None = None,
    user_features: DataFrame | None = None,
    events: DataFrame | None = None,
    popularity_days: int = 0,
    train_as_of: dt.datetime | None = None,
) -> dict[str, int]:
    """Check the split on the computed frames, before the time columns are dropped.

    - ``train`` (examples): no window holds a step at or after the validation cutoff, and its
      steps are in time order, so each target follows every input before it (step_times);
    - ``item_vocab`` (the statistic behind logQ correction and the vocabulary order): every
      train_count equals the item's steps before the validation cutoff;
    - ``validation`` / ``test``: every history (hist_end) ends before its window starts;
    - ``item_features`` / ``user_features`` (point-in-time features): every row's first and
      last event lie strictly before its as_of, and in the "train" snapshot every user's
      n_events and every item's popularity equal their recount on ``events`` before as_of.

    Args:
        train: sequences.train_windows output (with step_times).
        item_vocab: schema.ITEM_VOCAB_SCHEMA.
        steps: the step frame (product_id, step_time).
        validation, test: sequences.eval_rows output (with hist_end).
        cutoffs: the split; a per-user :class:`Split` (leave_last_out) checks every row against
            its user's cutoffs (``steps`` and ``events`` carry them; the other frames are joined).
        item_features, user_features: schema.ITEM_FEATURES_SCHEMA / USER_FEATURES_SCHEMA rows
            (optional; with them, ``events``: the clean events, and ``popularity_days``).
        train_as_of: the "train" snapshot's as_of (default: the validation cutoff).

    Returns:
        Row counts: {"train_windows", "items_in_vocab", "validation_users", "test_users"} and,
        when given, {"item_feature_rows", "user_feature_rows"} (each from its check's pass).

    Raises:
        DataQualityError: naming the table and the number of offending rows.
    """
    split = cutoffs if isinstance(cutoffs, Split) else None
    validation_cutoff = split.describe("validation") if split else f"the validation cutoff {cutoffs.validation.isoformat()}"
    checks = _sequence_checks(train, item_vocab, steps, validation, test, cutoffs, validation_cutoff)
    checks += _snapshot_checks(item_features, user_features, events, cutoffs, popularity_days,
                               train_as_of or cutoffs.validation, validation_cutoff)
    counts = {}
    for table, count_name, df, leaks, what in checks:
        total, offending = _count(df, leaks)
        if offending:
            raise DataQualityError(f"leakage in {table}: {offending} of {total} rows {what}")
        counts[count_name] = total
    return counts


# (table, name of its row count, the rows, the condition of a leaking row, what such rows do)
_Check = tuple[str, str, DataFrame, Column, str]


def _sequence_checks(train: DataFrame, item_vocab: DataFrame, steps: DataFrame, validation: DataFrame,
                     test: DataFrame, cutoffs: Cutoffs | Split, validation_cutoff: str) -> list[_Check]:
    """The checks of the training windows, the item vocabulary's counts and the evaluation
    histories (see :func:`check_no_leakage`); ``validation_cutoff`` names the cutoff in messages."""
    split = cutoffs if isinstance(cutoffs, Split) else None
    attach = split.attach if split is not None else (lambda frame: frame)
    test_cutoff = split.describe("test") if split else f"the test cutoff {cutoffs.test.isoformat()}"
    recount = (
        steps.where(before(F.col(STEP_TIME), cutoffs.validation))
        .groupBy(schema.PRODUCT_ID)
        .agg(F.count("*").alias(_RECOUNT))
    )
    vocab = item_vocab.join(recount, schema.PRODUCT_ID, "left")
    late_step = ~before(F.array_max(WINDOW_TIMES), cutoffs.validation)
    return [
        ("train", "train_windows", attach(train),
         late_step | (F.col(WINDOW_TIMES) != F.array_sort(WINDOW_TIMES)),
         f"hold a step at or after {validation_cutoff} or steps out of time order"),
        ("item_vocab", "items_in_vocab", vocab, F.col(schema.TRAIN_COUNT) != F.coalesce(F.col(_RECOUNT), F.lit(0)),
         f"have a train_count other than their steps before {validation_cutoff}"),
        ("validation", "validation_users", attach(validation), ~before(F.col(HIST_END), cutoffs.validation),
         f"have a history step at or after {validation_cutoff}"),
        ("test", "test_users", attach(test), ~before(F.col(HIST_END), cutoffs.test),
         f"have a history step at or after {test_cutoff}"),
    ]


def _snapshot_checks(item_features: DataFrame | None, user_features: DataFrame | None, events: DataFrame | None,
                     cutoffs: Cutoffs | Split, popularity_days: int, train_as_of: dt.datetime,
                     validation_cutoff: str) -> list[_Check]:
    """The checks of the point-in-time feature snapshots given (see :func:`check_no_leakage`).

    Raises:
        ValueError: a snapshot without ``events`` to recount.
    """
    seen_late = (F.col(schema.LAST_SEEN) >= F.col(schema.AS_OF)) | (F.col(schema.FIRST_SEEN) >= F.col(schema.AS_OF))
    # The "train" snapshot's events: before the validation cutoff (each user's, per-user).
    past = (events.where(before(F.col(schema.EVENT_TIME), cutoffs.validation) & before(F.col(schema.EVENT_TIME), train_as_of))
            if events is not None else None)
    recounts = {
        "item_features": (schema.PRODUCT_ID, schema.POPULARITY, lambda e: e.where(
            F.col(schema.EVENT_TIME) >= F.lit(train_as_of - dt.timedelta(days=popularity_days)))),
        "user_features": (schema.USER_ID, schema.N_EVENTS, lambda e: e),
    }
    checks = []
    for table, count_name, df in (("item_features", "item_feature_rows", item_features),
                                  ("user_features", "user_feature_rows", user_features)):
        if df is None:
            continue
        if past is None:
            raise ValueError(f"check_no_leakage: {table} needs events to recount")
        key, column, counted = recounts[table]
        recount = counted(past).groupBy(key).agg(F.count("*").alias(_RECOUNT))
        rows = df.join(recount, key, "left")
        wrong = (F.col(schema.SNAPSHOT) == "train") & (F.col(column) != F.coalesce(F.col(_RECOUNT), F.lit(0)))
        checks.append((table, count_name, rows, seen_late | wrong,
                       f"use an event at or after their as_of (or, in the train snapshot, "
                       f"have a {column} other than its recount before {validation_cutoff})"))
    return checks


def _count(df: DataFrame, condition: Column) -> tuple[int, int]:
    row = df.agg(F.count("*"), F.count(F.when(condition, 1))).first()
    return int(row[0]), int(row[1])
