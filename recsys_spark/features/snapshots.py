"""Point-in-time item and user features.

A snapshot is computed from the events strictly before its ``as_of`` instant and nothing else:
"train" as of the validation cutoff (what training and validation may condition on), "test" as
of the test cutoff, "serve" as of the midnight after the last event (what batch scoring sees).
Under leave_last_out, whose cutoffs are per user, every snapshot is as of the serve instant and
"train" / "test" are computed from the events of the split's part only (featurize passes them).
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.features import vocab
from recsys_spark.features.split import Cutoffs, Split, before

_SECONDS_PER_DAY = 86_400.0


def snapshot_times(cutoffs: Cutoffs | Split) -> dict[str, dt.datetime]:
    """{"train": validation cutoff, "test": test cutoff, "serve": the midnight after data_end};
    all three the serve instant for a per-user split."""
    last_day = cutoffs.data_end.replace(hour=0, minute=0, second=0, microsecond=0)
    serve = last_day + dt.timedelta(days=1)
    if isinstance(cutoffs, Split):
        if cutoffs.per_user:
            return {"train": serve, "test": serve, "serve": serve}
        cutoffs = cutoffs.cutoffs
    return {"train": cutoffs.validation, "test": cutoffs.test, "serve": serve}


def _days_between(earlier: Column, later: Column) -> Column:
    return (F.unix_micros(later) - F.unix_micros(earlier)) / 1e6 / _SECONDS_PER_DAY


def item_features(
    events: DataFrame,
    name: str,
    as_of: dt.datetime,
    popularity_days: int,
    price_buckets: int,
    vocabs: dict[str, DataFrame],
) -> DataFrame:
    """One item snapshot: every product with an event before ``as_of``.

    - popularity: its events in ``[as_of - popularity_days, as_of)``;
    - log_price_z: ``(log1p(p) - mean) / std`` of the median price p over the snapshot's priced
      products (population std; 0.0 without a price or when all prices are equal);
    - price_bucket: quantile bucket of p among the snapshot's priced products (0 without one);
    - category_idx, brand_idx: the most frequent category / brand looked up in the training
      vocabularies (0 none, 1 out of vocabulary); item_idx likewise (1 = OOV);
    - age_days: from the first event to ``as_of``; first_seen / last_seen: its first and last
      event (both before ``as_of``: the leakage guard checks it).

    Args:
        events: clean events (schema.CLEAN_SCHEMA).
        name: the snapshot's name ("train", "test", "serve").
        as_of: aware datetime.
        popularity_days: the popularity window.
        price_buckets: number of price buckets.
        vocabs: {"item", "category", "brand"} vocabulary frames.

    Returns:
        schema.ITEM_FEATURES_SCHEMA rows.
    """
    past = events.where(before(F.col(schema.EVENT_TIME), as_of))
    window_start = as_of - dt.timedelta(days=popularity_days)
    stats = past.groupBy(schema.PRODUCT_ID).agg(
        F.count(F.when(F.col(schema.EVENT_TIME) >= F.lit(window_start), 1)).cast("long").alias(schema.POPULARITY),
        F.min(schema.EVENT_TIME).alias(schema.FIRST_SEEN),
        F.max(schema.EVENT_TIME).alias(schema.LAST_SEEN),
    )
    items = stats.join(vocab.item_side_features(past), schema.PRODUCT_ID)
    log_price = F.log1p(F.col(schema.PRICE))
    moments = items.agg(F.avg(log_price).alias("mean"), F.stddev_pop(log_price).alias("std")).first()
    mean, std = moments["mean"] or 0.0, moments["std"] or 0.0
    z = (log_price - F.lit(mean)) / F.lit(std) if std > 0 else F.lit(0.0)
    items = vocab.add_price_buckets(items, price_buckets).withColumn(schema.LOG_PRICE_Z, F.coalesce(z, F.lit(0.0)))
    items = vocab.lookup(F.col(schema.PRODUCT_ID), vocabs["item"], vocab.ITEM, items, schema.ITEM_IDX)
    items = vocab.lookup(F.col(schema.CATEGORY_ID), vocabs["category"], vocab.CATEGORY, items, schema.CATEGORY_IDX)
    items = vocab.lookup(F.col(schema.BRAND), vocabs["brand"], vocab.BRAND, items, schema.BRAND_IDX)
    return schema.conform(
        items.withColumn(schema.SNAPSHOT, F.lit(name))
        .withColumn(schema.AS_OF, F.lit(as_of))
        .withColumn(schema.AGE_DAYS, _days_between(F.col(schema.FIRST_SEEN), F.col(schema.AS_OF))),
        schema.ITEM_FEATURES_SCHEMA,
    )


def user_features(events: DataFrame, name: str, as_of: dt.datetime, users: DataFrame) -> DataFrame:
    """One user snapshot: every user with an event before ``as_of``.

    Counts of each event type and in all, distinct sessions, purchase_rate (purchases /
    events), recency_days (from the last event to ``as_of``), first_seen / last_seen, and
    user_idx from the training user vocabulary (1 = OOV).

    Args:
        events: clean events (schema.CLEAN_SCHEMA).
        name, as_of: the snapshot.
        users: schema.USER_VOCAB_SCHEMA.

    Returns:
        schema.USER_FEATURES_SCHEMA rows.
    """
    past = events.where(before(F.col(schema.EVENT_TIME), as_of))
    by_type = [
        F.count(F.when(F.col(schema.EVENT_TYPE) == kind, 1)).cast("long").alias(schema.EVENT_COUNT_COLUMNS[kind])
        for kind in schema.EVENT_TYPES
    ]
    stats = past.groupBy(schema.USER_ID).agg(
        *by_type,
        F.count("*").cast("long").alias(schema.N_EVENTS),
        F.countDistinct(schema.SESSION_ID).cast("long").alias(schema.N_SESSIONS),
        F.min(schema.EVENT_TIME).alias(schema.FIRST_SEEN),
        F.max(schema.EVENT_TIME).alias(schema.LAST_SEEN),
    )
    stats = vocab.lookup(F.col(schema.USER_ID), users, vocab.USER, stats, schema.USER_IDX)
    return schema.conform(
        stats.withColumn(schema.SNAPSHOT, F.lit(name))
        .withColumn(schema.AS_OF, F.lit(as_of))
        .withColumn(schema.PURCHASE_RATE, F.col(schema.EVENT_COUNT_COLUMNS["purchase"]) / F.col(schema.N_EVENTS))
        .withColumn(schema.RECENCY_DAYS, _days_between(F.col(schema.LAST_SEEN), F.col(schema.AS_OF))),
        schema.USER_FEATURES_SCHEMA,
    )
