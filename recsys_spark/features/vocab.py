"""Vocabularies of items, categories, brands and users, built from the training period only.

Every vocabulary maps a raw value to a dense index: 0 is padding (items) or "no value"
(categories, brands, users), 1 is out of vocabulary (rarer than the minimum count, or unseen in
training), and real values take 2, 3, ... by descending training count, ties by the value. A
vocabulary's *version* is a digest of its (value, index) pairs, so that a model trained on one
vocabulary can refuse inputs encoded with another. Reusing a saved vocabulary on new data keeps
every known value at its index and maps every new value to OOV.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.features.row_numbers import row_numbers
from recsys_spark.features.sequences import STEP_TIME
from recsys_spark.features.split import Cutoffs, Split, before

_RANK = "_rank"


@dataclass(frozen=True)
class VocabSpec:
    """One vocabulary: its table, raw column, index column, schema and null/OOV indices."""

    kind: str
    table: str
    key: str
    index: str
    schema: T.StructType
    oov_index: int
    first_index: int


ITEM = VocabSpec("item", "item_vocab", schema.PRODUCT_ID, schema.ITEM_IDX, schema.ITEM_VOCAB_SCHEMA, schema.OOV_INDEX, schema.FIRST_ITEM_INDEX)
CATEGORY = VocabSpec("category", "category_vocab", schema.CATEGORY_ID, schema.CATEGORY_IDX, schema.CATEGORY_VOCAB_SCHEMA,
                     schema.VOCAB_OOV_INDEX, schema.VOCAB_FIRST_INDEX)
BRAND = VocabSpec("brand", "brand_vocab", schema.BRAND, schema.BRAND_IDX, schema.BRAND_VOCAB_SCHEMA,
                  schema.VOCAB_OOV_INDEX, schema.VOCAB_FIRST_INDEX)
USER = VocabSpec("user", "user_vocab", schema.USER_ID, schema.USER_IDX, schema.USER_VOCAB_SCHEMA,
                 schema.VOCAB_OOV_INDEX, schema.VOCAB_FIRST_INDEX)
SPECS = (ITEM, CATEGORY, BRAND, USER)


def index_by_count(counts: DataFrame, spec: VocabSpec, min_count: int) -> DataFrame:
    """Index the values with ``train_count >= min_count`` from ``spec.first_index`` on.

    Args:
        counts: one row per non-null value: ``spec.key`` and ``train_count`` (and any others).
        spec: which vocabulary.
        min_count: the minimum training count.

    Returns:
        ``counts``' kept rows with ``spec.index`` (int), by descending count, ties by value.
    """
    kept = counts.where(F.col(schema.TRAIN_COUNT) >= min_count)
    ranked = row_numbers(kept, [F.desc(schema.TRAIN_COUNT), F.asc(spec.key)], _RANK, start=spec.first_index)
    return ranked.withColumn(spec.index, F.col(_RANK).cast("int")).drop(_RANK)


def build_value_vocab(train_events: DataFrame, spec: VocabSpec, min_count: int) -> DataFrame:
    """The vocabulary of a category, brand or user column: its training events per value.

    Args:
        train_events: clean events before the validation cutoff.
        spec: CATEGORY, BRAND or USER.
        min_count: minimum training events for a value to get its own index.

    Returns:
        ``spec.schema`` rows.
    """
    counts = (
        train_events.where(F.col(spec.key).isNotNull())
        .groupBy(spec.key)
        .agg(F.count("*").cast("long").alias(schema.TRAIN_COUNT))
    )
    return schema.conform(index_by_count(counts, spec, min_count), spec.schema)


def lookup(values: Column, vocab: DataFrame, spec: VocabSpec, frame: DataFrame, out: str) -> DataFrame:
    """Add ``out`` to ``frame``: the index of ``values`` in ``vocab`` (null -> 0, unknown -> OOV).

    ``vocab`` is broadcast: vocabularies of categories, brands and items are small; a user
    vocabulary is joined the same way (Spark falls back to a shuffle join when it is large).
    """
    index = vocab.select(F.col(spec.key).alias("_vocab_key"), F.col(spec.index).alias("_vocab_idx"))
    if spec is not USER:
        index = F.broadcast(index)
    joined = frame.join(index, values == F.col("_vocab_key"), "left")
    null_index = schema.PAD_INDEX if spec is ITEM else schema.VOCAB_NULL_INDEX
    code = (
        F.when(values.isNull(), F.lit(null_index))
        .when(F.col("_vocab_idx").isNull(), F.lit(spec.oov_index))
        .otherwise(F.col("_vocab_idx"))
    )
    return joined.withColumn(out, code.cast("int")).drop("_vocab_key", "_vocab_idx")


def build_item_vocab(
    steps: DataFrame,
    events: DataFrame,
    cutoffs: Cutoffs | Split,
    min_item_count: int,
    price_buckets: int,
    categories: DataFrame,
    brands: DataFrame,
) -> DataFrame:
    """The item vocabulary with each item's side features.

    Items with at least ``min_item_count`` training steps get item_idx = FIRST_ITEM_INDEX..
    by descending training count (ties by product_id). An item's category and brand are its
    most frequent non-null values in training events (ties by the smaller value), looked up in
    ``categories`` / ``brands`` (0 without one, 1 when rare); its price the median training
    price; price_bucket 1..price_buckets by quantiles of price over vocabulary items, 0
    without a price.

    Args:
        steps: steps with product_id and step_time (see sequences.collapse_steps).
        events: clean events (schema.CLEAN_SCHEMA), for category, brand and price.
        cutoffs: the split; training = before ``cutoffs.validation`` (under leave_last_out,
            ``steps`` and ``events`` carry each user's cutoffs: see split.Split.attach).
        min_item_count: minimum training steps for an item to get its own index.
        price_buckets: number of price buckets.
        categories, brands: schema.CATEGORY_VOCAB_SCHEMA / BRAND_VOCAB_SCHEMA.

    Returns:
        DataFrame with schema.ITEM_VOCAB_SCHEMA, one row per vocabulary item.
    """
    items = index_by_count(item_counts(steps, cutoffs), ITEM, min_item_count)
    side = item_side_features(events.where(before(F.col(schema.EVENT_TIME), cutoffs.validation)))
    items = items.join(side, schema.PRODUCT_ID, "left")
    items = lookup(F.col(schema.CATEGORY_ID), categories, CATEGORY, items, schema.CATEGORY_IDX)
    items = lookup(F.col(schema.BRAND), brands, BRAND, items, schema.BRAND_IDX)
    return schema.conform(add_price_buckets(items, price_buckets), schema.ITEM_VOCAB_SCHEMA)


def extend(previous: DataFrame, fresh: DataFrame, spec: VocabSpec) -> DataFrame:
    """A vocabulary grown append-only: ``previous``' values keep their index, values only in
    ``fresh`` get the next indices, in ``fresh``'s index order (by training count).

    Every other column (counts, an item's side features) comes from ``fresh`` where it holds the
    value, else from ``previous``: a known item's category or price follows the new data, its
    index never moves, and a value gone from the new data keeps its row.

    Args:
        previous: the vocabulary to extend (e.g. the one the registered model was trained on).
        fresh: the same vocabulary built on this run's data, its cross-references (an item's
            category_idx, brand_idx) already looked up in the extended category and brand
            vocabularies.
        spec: which vocabulary; both frames have ``spec.schema``.

    Returns:
        ``spec.schema`` rows: indices ``previous``' plus ``top + 1 ..`` for the new values, where
        ``top`` is ``previous``' largest index (or the one before ``spec.first_index``).
    """
    top = previous.agg(F.max(spec.index)).first()[0]
    start = (int(top) if top is not None else spec.first_index - 1) + 1
    added = fresh.join(previous.select(spec.key), spec.key, "left_anti")
    added = row_numbers(added, [F.asc(spec.index), F.asc(spec.key)], _RANK, start=start)
    added = added.withColumn(spec.index, F.col(_RANK).cast("int")).drop(_RANK)
    others = [f.name for f in spec.schema.fields if f.name not in (spec.key, spec.index)]
    kept = previous.alias("p").join(fresh.alias("f"), spec.key, "left").select(
        F.col(spec.key), F.col(f"p.{spec.index}").alias(spec.index),
        *[F.coalesce(F.col(f"f.{c}"), F.col(f"p.{c}")).alias(c) for c in others],
    )
    return schema.conform(kept.unionByName(schema.conform(added, spec.schema)), spec.schema)


def item_counts(steps: DataFrame, cutoffs: Cutoffs | Split) -> DataFrame:
    """product_id, train_count (steps before the validation cutoff), pretest_count (before test).

    Products with no step before the test cutoff are left out.
    """
    return (
        steps.where(before(F.col(STEP_TIME), cutoffs.test))
        .groupBy(schema.PRODUCT_ID)
        .agg(
            _count_if(before(F.col(STEP_TIME), cutoffs.validation)).alias(schema.TRAIN_COUNT),
            F.count("*").cast("long").alias(schema.PRETEST_COUNT),
        )
    )


def recount_items(item_vocab: DataFrame, steps: DataFrame, cutoffs: Cutoffs | Split) -> DataFrame:
    """A reused item vocabulary with train_count / pretest_count counted on ``steps``.

    Indices and side features stay as saved; the counts (the logQ popularity of training and
    the popularity baseline of evaluation) always come from this run's training period.
    """
    counts = item_counts(steps, cutoffs)
    kept = item_vocab.drop(schema.TRAIN_COUNT, schema.PRETEST_COUNT).join(counts, schema.PRODUCT_ID, "left")
    return schema.conform(kept.fillna(0, [schema.TRAIN_COUNT, schema.PRETEST_COUNT]), schema.ITEM_VOCAB_SCHEMA)


def item_side_features(events: DataFrame) -> DataFrame:
    """Per product: its most frequent category and brand (ties by the smaller value) and
    median price over ``events`` (nulls skipped; null when it never has one)."""
    return events.groupBy(schema.PRODUCT_ID).agg(
        F.mode(schema.CATEGORY_ID, deterministic=True).alias(schema.CATEGORY_ID),
        F.mode(schema.BRAND, deterministic=True).alias(schema.BRAND),
        F.median(schema.PRICE).alias(schema.PRICE),
    )


def add_price_buckets(items: DataFrame, price_buckets: int) -> DataFrame:
    """Add price_bucket = ceil(B * k / n): k = priced items at or below this price, n = priced items.

    Counted in integers (not from a rounded ``cume_dist``): priced items are numbered by
    (price, product_id) and k is the largest number at the item's price, so equal prices share
    a bucket. Items without a price get 0.
    """
    priced = items.where(F.col(schema.PRICE).isNotNull()).select(schema.PRODUCT_ID, schema.PRICE)
    numbered = row_numbers(priced, [F.asc(schema.PRICE), F.asc(schema.PRODUCT_ID)], _RANK)
    n = numbered.count()
    at_or_below = numbered.groupBy(schema.PRICE).agg(F.max(_RANK).alias(_RANK))
    bucket = F.ceil(F.col(_RANK) * price_buckets / F.lit(max(n, 1)))
    with_rank = items.join(F.broadcast(at_or_below), schema.PRICE, "left")
    return with_rank.withColumn(
        schema.PRICE_BUCKET, F.when(F.col(schema.PRICE).isNull(), F.lit(0)).otherwise(bucket).cast("int")
    ).drop(_RANK)


def version(vocab: DataFrame, spec: VocabSpec) -> dict[str, int | str]:
    """The size and content digest of a vocabulary, from one aggregation.

    The digest is order-independent (XOR of two 64-bit hashes of every (value, index) pair),
    so it does not depend on how the table is partitioned, and it changes when any value
    changes index.

    Returns:
        {"version": 16 hex digits, "size": number of indexed values, "num_indices": embedding
        table size (largest index + 1)}.
    """
    pair = [F.col(spec.key).cast("string"), F.col(spec.index)]
    row = vocab.agg(
        F.count("*").alias("n"),
        F.max(spec.index).alias("top"),
        F.bit_xor(F.xxhash64(F.lit("a"), *pair)).alias("a"),
        F.bit_xor(F.xxhash64(F.lit("b"), *pair)).alias("b"),
    ).first()
    n, a, b = int(row["n"]), row["a"] or 0, row["b"] or 0
    digest = hashlib.sha256(f"{spec.kind}:{n}:{a}:{b}".encode()).hexdigest()[:16]
    top = row["top"] if row["top"] is not None else spec.oov_index
    return {"version": digest, "size": n, "num_indices": int(top) + 1}


def _count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0)).cast("long")
