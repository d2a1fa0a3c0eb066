"""Behaviour sequences: events collapsed into steps, time-gap buckets, training windows and the
histories of evaluation and scoring.

Everything here is a pure DataFrame -> DataFrame transform built from Spark SQL expressions and
higher-order functions (``transform``, ``filter``, ``slice``, ``sequence``); no Python UDFs.
"""

from __future__ import annotations

import datetime as dt
from typing import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.features.split import before

# Columns of the intermediate step frame (one row per step), internal to this stage.
STEP_POS = "step_pos"  # 1, 2, ... per user, in event order
STEP_TIME = "step_time"  # time of the step's first event
EVENT_STRENGTH = "event_strength"  # the strongest event of the step (schema.EVENT_STRENGTH)
EVENT_CODE = "event_code"  # its code (schema.EVENT_CODE)
GAP_BUCKET = "gap_bucket"
# Carried beside windows and histories for the leakage guard, dropped before writing.
WINDOW_NO = "window_no"  # 0 = a user's latest training window
WINDOW_TIMES = "step_times"  # the (unpadded) step times of a training window
HIST_END = "hist_end"  # the time of the last step a history (and its seen_items) used

_STARTS_STEP = "starts_step"
_STEPS = "steps"


def literal_map(mapping: Mapping) -> Column:
    """A ``map`` literal, for looking a column's value up: ``literal_map(m)[col]``."""
    return F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair])


_CODE_OF_STRENGTH = {schema.EVENT_STRENGTH[t]: schema.EVENT_CODE[t] for t in schema.EVENT_TYPES}


def collapse_steps(events: DataFrame) -> DataFrame:
    """Collapse each run of consecutive events of one user on one product into a step.

    Events are ordered by time; ties by event strength, then event type, then product id, so
    that the order (and so the steps) never depends on how the input was partitioned.

    Args:
        events: clean events (schema.CLEAN_SCHEMA; only user_id, event_time, event_type and
            product_id are used).

    Returns:
        One row per step: user_id, step_pos (int, 1.. per user), step_time (the run's first
        event time), product_id, event_strength and event_code of the run's strongest event.
    """
    order = Window.partitionBy(schema.USER_ID).orderBy(schema.EVENT_TIME, EVENT_STRENGTH, schema.EVENT_TYPE, schema.PRODUCT_ID)
    running = order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    previous = F.lag(schema.PRODUCT_ID).over(order)
    return (
        events.select(
            schema.USER_ID,
            schema.EVENT_TIME,
            schema.EVENT_TYPE,
            schema.PRODUCT_ID,
            literal_map(schema.EVENT_STRENGTH)[F.col(schema.EVENT_TYPE)].alias(EVENT_STRENGTH),
        )
        .withColumn(_STARTS_STEP, (previous.isNull() | (previous != F.col(schema.PRODUCT_ID))).cast("int"))
        .withColumn(STEP_POS, F.sum(_STARTS_STEP).over(running).cast("int"))
        .groupBy(schema.USER_ID, STEP_POS, schema.PRODUCT_ID)
        .agg(F.min(schema.EVENT_TIME).alias(STEP_TIME), F.max(EVENT_STRENGTH).alias(EVENT_STRENGTH))
        .withColumn(EVENT_CODE, literal_map(_CODE_OF_STRENGTH)[F.col(EVENT_STRENGTH)])
    )


def gap_bucket(seconds: Column) -> Column:
    """The time-gap bucket of ``seconds`` since the previous step (null: there is none).

    0 for null, else ``1 + min(floor(log2(1 + seconds)), MAX_GAP_LOG2)``, computed exactly by
    counting the powers of two 2^1..2^MAX_GAP_LOG2 that are <= 1 + seconds (no float log).

    Returns:
        int Column in 0..schema.NUM_GAP_BUCKETS - 1.
    """
    powers = F.array(*[F.lit(2**k) for k in range(1, schema.MAX_GAP_LOG2 + 1)])
    floor_log2 = F.size(F.filter(powers, lambda p: p <= seconds + 1))
    return F.when(seconds.isNull(), F.lit(0)).otherwise(floor_log2 + 1).cast("int")


def add_gap_buckets(steps: DataFrame) -> DataFrame:
    """Add ``gap_bucket``: the bucket of whole seconds since the user's previous step (0 for the first)."""
    order = Window.partitionBy(schema.USER_ID).orderBy(STEP_POS)
    micros = F.unix_micros(F.col(STEP_TIME)) - F.unix_micros(F.lag(STEP_TIME).over(order))
    return steps.withColumn(GAP_BUCKET, gap_bucket(F.floor(micros / 1_000_000)))


def encode_items(steps: DataFrame, item_vocab: DataFrame) -> DataFrame:
    """Add ``item_idx``: the product's vocabulary index, schema.OOV_INDEX when it has none.

    Args:
        steps: any frame with product_id.
        item_vocab: schema.ITEM_VOCAB_SCHEMA (product_id unique); small, so broadcast.
    """
    index = F.broadcast(item_vocab.select(schema.PRODUCT_ID, schema.ITEM_IDX))
    return steps.join(index, schema.PRODUCT_ID, "left").withColumn(
        schema.ITEM_IDX, F.coalesce(F.col(schema.ITEM_IDX), F.lit(schema.OOV_INDEX)).cast("int")
    )


def left_pad(values: Column, length: int) -> Column:
    """Prefix an int array with 0 (padding) up to ``length`` elements."""
    return F.concat(F.array_repeat(F.lit(schema.PAD_INDEX), F.lit(length) - F.size(values)), values)


def _user_sequences(steps: DataFrame) -> DataFrame:
    """user_id and ``steps``: the user's steps as structs, sorted by step_pos."""
    step = F.struct(STEP_POS, schema.ITEM_IDX, EVENT_CODE, GAP_BUCKET, STEP_TIME)
    return steps.groupBy(schema.USER_ID).agg(F.array_sort(F.collect_list(step)).alias(_STEPS))


def _field(name: str):
    return lambda step: step[name]


def train_windows(
    steps: DataFrame, validation_cutoff: dt.datetime, max_seq_len: int, max_windows_per_user: int
) -> DataFrame:
    """Training windows of L+1 steps from the training period, chunked from the end.

    With L = max_seq_len and n training steps, window w (0 = latest) covers steps
    ``[max(0, e - L - 1), e)`` with ``e = n - w * L``: consecutive windows share one step, so
    every step after a user's first is a target (a position of ``[1:]``) exactly once. Only
    windows with at least 2 steps exist (n >= 2); at most ``max_windows_per_user``, the latest.

    Args:
        steps: encoded steps (user_id, step_pos, step_time, item_idx, event_code, gap_bucket).
        validation_cutoff: aware datetime; only steps strictly before it are used.
        max_seq_len: L.
        max_windows_per_user: cap on windows per user.

    Returns:
        user_id, window_no, item_seq / event_seq / gap_seq (int arrays [L + 1], left-padded
        with 0) and step_times (the window's unpadded step times, for the leakage guard).
    """
    width = max_seq_len + 1
    n = F.size(_STEPS)
    count = F.least(F.lit(max_windows_per_user), F.floor((n - 2) / max_seq_len).cast("int") + 1)
    end = n - F.col(WINDOW_NO) * max_seq_len
    start = F.greatest(F.lit(0), end - width)
    window = F.slice(_STEPS, start + 1, end - start)
    return (
        _user_sequences(steps.where(before(F.col(STEP_TIME), validation_cutoff)))
        .where(n >= 2)
        .select(schema.USER_ID, _STEPS, F.explode(F.sequence(F.lit(0), count - 1)).alias(WINDOW_NO))
        .select(
            schema.USER_ID,
            WINDOW_NO,
            left_pad(F.transform(window, _field(schema.ITEM_IDX)), width).alias(schema.ITEM_SEQ),
            left_pad(F.transform(window, _field(EVENT_CODE)), width).alias(schema.EVENT_SEQ),
            left_pad(F.transform(window, _field(GAP_BUCKET)), width).alias(schema.GAP_SEQ),
            F.transform(window, _field(STEP_TIME)).alias(WINDOW_TIMES),
            F.element_at(window, -1)[STEP_TIME].alias(schema.TARGET_TIME),
        )
    )


def history_rows(steps: DataFrame, cutoff: dt.datetime | None, max_seq_len: int) -> DataFrame:
    """Each user's history before ``cutoff`` (None: all steps).

    Args:
        steps: encoded steps.
        cutoff: aware datetime; steps strictly before it are history.
        max_seq_len: L.

    Returns:
        One row per user with at least one step before the cutoff: user_id, hist_items /
        hist_events / hist_gaps (int arrays [L]: the last L steps, left-padded with 0),
        seen_items (sorted distinct in-vocabulary item_idx of all those steps) and hist_end.
    """
    history = steps if cutoff is None else steps.where(before(F.col(STEP_TIME), cutoff))
    last = F.slice(_STEPS, F.greatest(F.lit(1), F.size(_STEPS) - max_seq_len + 1), max_seq_len)
    items = F.transform(_STEPS, _field(schema.ITEM_IDX))
    return _user_sequences(history).select(
        schema.USER_ID,
        left_pad(F.transform(last, _field(schema.ITEM_IDX)), max_seq_len).alias(schema.HIST_ITEMS),
        left_pad(F.transform(last, _field(EVENT_CODE)), max_seq_len).alias(schema.HIST_EVENTS),
        left_pad(F.transform(last, _field(GAP_BUCKET)), max_seq_len).alias(schema.HIST_GAPS),
        F.array_sort(F.array_distinct(F.filter(items, lambda i: i >= schema.FIRST_ITEM_INDEX))).alias(schema.SEEN_ITEMS),
        F.array_max(F.transform(_STEPS, _field(STEP_TIME))).alias(HIST_END),
    )


def eval_rows(
    steps: DataFrame, window_start: dt.datetime, window_end: dt.datetime | None, max_seq_len: int
) -> DataFrame:
    """Evaluation rows: the history before a window and the new items met in it.

    Args:
        steps: encoded steps (with event_strength).
        window_start: aware datetime, inclusive.
        window_end: aware datetime, exclusive; None for "to the end of the data".
        max_seq_len: L.

    Returns:
        schema.EVAL_SCHEMA columns plus hist_end, one row per user with a step before the
        window and at least one in-vocabulary item in it that is not in seen_items;
        target_items in order of first occurrence, target_events the code of the strongest
        event on each.
    """
    history = history_rows(steps, window_start, max_seq_len)
    in_window = ~before(F.col(STEP_TIME), window_start) & (F.col(schema.ITEM_IDX) >= schema.FIRST_ITEM_INDEX)
    if window_end is not None:
        in_window &= before(F.col(STEP_TIME), window_end)
    target = F.struct(STEP_POS, schema.ITEM_IDX, literal_map(_CODE_OF_STRENGTH)[F.col(EVENT_STRENGTH)].alias(EVENT_CODE))
    targets = (
        steps.where(in_window)
        .groupBy(schema.USER_ID, schema.ITEM_IDX)
        .agg(F.min(STEP_POS).alias(STEP_POS), F.max(EVENT_STRENGTH).alias(EVENT_STRENGTH))
        .join(history.select(schema.USER_ID, schema.SEEN_ITEMS), schema.USER_ID)
        .where(~F.array_contains(schema.SEEN_ITEMS, F.col(schema.ITEM_IDX)))
        .groupBy(schema.USER_ID)
        .agg(F.array_sort(F.collect_list(target)).alias(_STEPS))
        .select(
            schema.USER_ID,
            F.transform(_STEPS, _field(schema.ITEM_IDX)).alias(schema.TARGET_ITEMS),
            F.transform(_STEPS, _field(EVENT_CODE)).alias(schema.TARGET_EVENTS),
        )
    )
    return history.join(targets, schema.USER_ID)
