"""The score stage's inputs built in Spark: what each user may not get, which category they
browse, and how popular each product is lately. Pure DataFrame -> DataFrame transforms."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.schema import (
    ALL_USERS,
    CONTEXT_SCHEMA,
    EXCLUDE_PRODUCTS,
    PRODUCT_STATS_SCHEMA,
    RECENT_USERS,
    USER_CATEGORY,
    USER_KEY,
)
from recsys_spark.scoring.exclusions import excluding



def user_context(events: DataFrame, exclude_event_types: Sequence[str]) -> DataFrame:
    """Per user: the products never to recommend to them, and the category they browse now.

    Args:
        events: clean events (schema.CLEAN_SCHEMA).
        exclude_event_types: event types that exclude a product for the user for good
            (e.g. ["purchase"]); empty excludes nothing.

    Returns:
        CONTEXT_SCHEMA: user_id, exclude_products (sorted distinct product ids), user_category
        (category_id of the user's latest event that has one; ties by the larger id; null if none).
    """
    excluded = F.when(excluding(exclude_event_types), F.col(schema.PRODUCT_ID))
    latest = F.max(F.when(F.col(schema.CATEGORY_ID).isNotNull(), F.struct(schema.EVENT_TIME, schema.CATEGORY_ID)))
    out = events.groupBy(schema.USER_ID).agg(
        F.array_sort(F.array_distinct(F.collect_list(excluded))).alias(EXCLUDE_PRODUCTS),  # nulls skipped
        latest[schema.CATEGORY_ID].alias(USER_CATEGORY),
    )
    return schema.conform(out, CONTEXT_SCHEMA)


def product_stats(events: DataFrame, recent_since: dt.datetime) -> DataFrame:
    """Per product: its category and how many users met it lately and ever.

    Args:
        events: clean events.
        recent_since: aware datetime; events at or after it are recent.

    Returns:
        PRODUCT_STATS_SCHEMA; category_id is the product's most frequent one (ties by the
        smaller id), null when it never has one.
    """
    recent = F.col(schema.EVENT_TIME) >= F.lit(recent_since)
    out = events.groupBy(schema.PRODUCT_ID).agg(
        F.mode(schema.CATEGORY_ID, deterministic=True).alias(schema.CATEGORY_ID),
        F.count_distinct(F.when(recent, F.col(schema.USER_ID))).alias(RECENT_USERS),
        F.count_distinct(schema.USER_ID).alias(ALL_USERS),
    )
    return schema.conform(out, PRODUCT_STATS_SCHEMA)


def scoring_rows(histories: DataFrame, context: DataFrame, seed: int, run_date: str) -> DataFrame:
    """The rows scoring tasks read: each user's history with their context and random key.

    Args:
        histories: schema.USER_HISTORY_SCHEMA (one row per user).
        context: CONTEXT_SCHEMA, from :func:`user_context`.
        seed: score.seed.
        run_date: ISO date; with the seed it keys the user's exploration draws, so a re-run of a
            date reproduces its lists and another date explores differently.

    Returns:
        histories' columns plus exclude_products (empty when the user has no context),
        user_category and user_key (long).
    """
    joined = histories.join(context, schema.USER_ID, "left")
    return joined.select(
        *[F.col(c) for c in schema.USER_HISTORY_SCHEMA.fieldNames()],
        F.coalesce(F.col(EXCLUDE_PRODUCTS), F.array().cast(T.ArrayType(T.LongType()))).alias(EXCLUDE_PRODUCTS),
        F.col(USER_CATEGORY),
        F.xxhash64(F.col(schema.USER_ID), F.lit(seed), F.lit(run_date)).alias(USER_KEY),
    )
