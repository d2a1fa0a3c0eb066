"""What a user may not be recommended: the items they had an excluding event on (e.g. a
purchase). The score stage excludes them from each user's lists (``score.exclude_event_types``,
as product ids; :func:`recsys_spark.scoring.inputs.user_context`) and the evaluate stage from
each ranking it measures (``evaluate.exclude_seen_event_types``, as item indices before each
user's cutoff; :func:`excluded_items`). Both count an event by :func:`excluding`.
"""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.features.split import before
from recsys_spark.schema import EXCLUDE_ITEMS



def excluding(event_types: Sequence[str]) -> Column:
    """True on the events that exclude their item for the user: those of ``event_types``."""
    return F.col(schema.EVENT_TYPE).isin(list(event_types))


def excluded_items(events: DataFrame, item_vocab: DataFrame, cutoff: dt.datetime | Column,
                   event_types: Sequence[str]) -> DataFrame:
    """Per user, the vocabulary items they had one of ``event_types`` on before ``cutoff``.

    Args:
        events: clean events (schema.CLEAN_SCHEMA), with the cutoff column when it is one.
        item_vocab: schema.ITEM_VOCAB_SCHEMA (small, broadcast).
        cutoff: aware datetime, or a timestamp column (each user's); events strictly before it count.
        event_types: e.g. ["purchase"].

    Returns:
        user_id, exclude_items (sorted distinct item_idx).
    """
    index = F.broadcast(item_vocab.select(schema.PRODUCT_ID, schema.ITEM_IDX))
    return (
        events.where(before(F.col(schema.EVENT_TIME), cutoff) & excluding(event_types))
        .join(index, schema.PRODUCT_ID)
        .groupBy(schema.USER_ID)
        .agg(F.array_sort(F.collect_set(F.col(schema.ITEM_IDX).cast("int"))).alias(EXCLUDE_ITEMS))
    )


def with_exclusions(rows: DataFrame, excluded: DataFrame | None) -> DataFrame:
    """``rows`` with an ``exclude_items`` column (empty for users without any), or unchanged
    when ``excluded`` is None (seen_items are excluded)."""
    if excluded is None:
        return rows
    empty = F.array().cast(T.ArrayType(T.IntegerType()))
    joined = rows.join(excluded, schema.USER_ID, "left")
    return joined.withColumn(EXCLUDE_ITEMS, F.coalesce(F.col(EXCLUDE_ITEMS), empty))
