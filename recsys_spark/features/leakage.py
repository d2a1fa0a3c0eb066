"""The leakage guard: nothing a model learns from, or conditions on, crosses the split."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema as S
from recsys_spark.errors import DataQualityError
from recsys_spark.features.sequences import HIST_END, STEP_TIME, WINDOW_TIMES
from recsys_spark.features.split import Cutoffs, before

_RECOUNT = "recount"


def check_no_leakage(
    *,
    train: DataFrame,
    item_vocab: DataFrame,
    steps: DataFrame,
    validation: DataFrame,
    test: DataFrame,
    cutoffs: Cutoffs,
) -> dict[str, int]:
    """Check the split on the computed frames, before the time columns are dropped.

    - ``train``: no window holds a step at or after the validation cutoff (step_times);
    - ``item_vocab``: every train_count equals the item's steps before the validation cutoff;
    - ``validation`` / ``test``: every history (hist_end) ends before its window starts.

    Args:
        train: sequences.train_windows output (with step_times).
        item_vocab: schema.ITEM_VOCAB_SCHEMA.
        steps: the step frame (product_id, step_time).
        validation, test: sequences.eval_rows output (with hist_end).
        cutoffs: the split.

    Returns:
        Row counts: {"train_windows", "items_in_vocab", "validation_users", "test_users"}
        (each from the same pass as its check).

    Raises:
        DataQualityError: naming the table and the number of offending rows.
    """
    recount = (
        steps.where(before(F.col(STEP_TIME), cutoffs.validation))
        .groupBy(S.PRODUCT_ID)
        .agg(F.count("*").alias(_RECOUNT))
    )
    vocab = item_vocab.join(recount, S.PRODUCT_ID, "left")
    checks = [
        ("train", "train_windows", train, ~before(F.array_max(WINDOW_TIMES), cutoffs.validation),
         f"hold a step at or after the validation cutoff {cutoffs.validation.isoformat()}"),
        ("item_vocab", "items_in_vocab", vocab, F.col(S.TRAIN_COUNT) != F.coalesce(F.col(_RECOUNT), F.lit(0)),
         f"have a train_count other than their steps before {cutoffs.validation.isoformat()}"),
        ("validation", "validation_users", validation, ~before(F.col(HIST_END), cutoffs.validation),
         f"have a history step at or after the window start {cutoffs.validation.isoformat()}"),
        ("test", "test_users", test, ~before(F.col(HIST_END), cutoffs.test),
         f"have a history step at or after the window start {cutoffs.test.isoformat()}"),
    ]
    counts = {}
    for table, count_name, df, leaks, what in checks:
        total, offending = _count(df, leaks)
        if offending:
            raise DataQualityError(f"leakage in {table}: {offending} of {total} rows {what}")
        counts[count_name] = total
    return counts


def _count(df: DataFrame, condition: Column) -> tuple[int, int]:
    row = df.agg(F.count("*"), F.count(F.when(condition, 1))).first()
    return int(row[0]), int(row[1])
