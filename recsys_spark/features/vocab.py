"""Vocabularies of items, categories, brands and price buckets, built from the training period only."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import schema as S
from recsys_spark.features.sequences import STEP_TIME
from recsys_spark.features.split import Cutoffs, before

_N = "n"


def build_item_vocab(
    steps: DataFrame, events: DataFrame, cutoffs: Cutoffs, min_item_count: int, price_buckets: int
) -> DataFrame:
    """The item vocabulary with each item's side features.

    Items with at least ``min_item_count`` training steps get item_idx = FIRST_ITEM_INDEX..
    by descending training count (ties by product_id). An item's category and brand are its
    most frequent non-null values in training events (ties by the smaller value), its price
    the median training price. Category and brand indices start at 1 (0 = unknown), by
    descending training steps of the vocabulary items that carry them (ties by value);
    price_bucket is 1..price_buckets by quantiles of log1p(price) over vocabulary items,
    0 without a price.

    Args:
        steps: steps with product_id and step_time (see sequences.collapse_steps).
        events: clean events (schema.CLEAN_SCHEMA), for category, brand and price.
        cutoffs: the split; training = before ``cutoffs.validation``.
        min_item_count: minimum training steps for an item to get its own index.
        price_buckets: number of price buckets.

    Returns:
        DataFrame with schema.ITEM_VOCAB_SCHEMA, one row per vocabulary item.
    """
    counts = steps.groupBy(S.PRODUCT_ID).agg(
        _count_if(before(F.col(STEP_TIME), cutoffs.validation)).alias(S.TRAIN_COUNT),
        _count_if(before(F.col(STEP_TIME), cutoffs.test)).alias(S.PRETEST_COUNT),
    )
    # A vocabulary is small: ranking it in one partition is fine.
    by_count = Window.orderBy(F.desc(S.TRAIN_COUNT), S.PRODUCT_ID)
    items = counts.where(F.col(S.TRAIN_COUNT) >= min_item_count).withColumn(
        S.ITEM_IDX, F.row_number().over(by_count) + (S.FIRST_ITEM_INDEX - 1)
    )

    # mode and median skip nulls; mode(deterministic) takes the smallest of tied values.
    side = (
        events.where(before(F.col(S.EVENT_TIME), cutoffs.validation))
        .groupBy(S.PRODUCT_ID)
        .agg(
            F.mode(S.CATEGORY_ID, deterministic=True).alias(S.CATEGORY_ID),
            F.mode(S.BRAND, deterministic=True).alias(S.BRAND),
            F.median(S.PRICE).alias(S.PRICE),
        )
    )
    items = items.join(side, S.PRODUCT_ID, "left")
    items = _add_index(items, S.CATEGORY_ID, S.CATEGORY_IDX)
    items = _add_index(items, S.BRAND, S.BRAND_IDX)
    items = items.withColumn(S.PRICE_BUCKET, _price_bucket(price_buckets))
    return S.conform(items, S.ITEM_VOCAB_SCHEMA)


def _count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0)).cast("long")


def _add_index(items: DataFrame, column: str, index: str) -> DataFrame:
    """Index the non-null values of ``column`` 1.. by descending training steps of their items."""
    ranked = (
        items.where(F.col(column).isNotNull())
        .groupBy(column)
        .agg(F.sum(S.TRAIN_COUNT).alias(_N))
        .withColumn(index, F.row_number().over(Window.orderBy(F.desc(_N), column)))
        .select(column, index)
    )
    return items.join(ranked, column, "left").withColumn(index, F.coalesce(F.col(index), F.lit(0)))


def _price_bucket(price_buckets: int) -> Column:
    """ceil(B * k / n): k = priced items at or below this price, n = priced items.

    Counted in integers rather than from ``cume_dist`` (a rounded k / n, which times B can
    land just above a whole number). Partitioning by "has no price" keeps unpriced items out
    of the quantiles; they get 0.
    """
    priced = Window.partitionBy(F.col(S.PRICE).isNull())
    at_or_below = priced.orderBy(F.log1p(S.PRICE))  # RANGE frame: equal prices count together
    bucket = F.ceil(F.count("*").over(at_or_below) * price_buckets / F.count("*").over(priced))
    return F.when(F.col(S.PRICE).isNull(), F.lit(0)).otherwise(bucket)
