"""String product ids (``clean.id_types.product_id=string``): a 63-bit key inside, the original at the edges.

Every layer from ``paths.clean`` to the scoring internals holds a product as a whole number
(int64 arrays, sorted searches, -1 for "none"). Under string ids, clean gives each product the key
:func:`product_key` of its text (the xxhash64 of the trimmed id with the sign bit cleared: stable,
non-negative, a function of the text alone) and writes the key -> original table
``paths.product_ids`` (schema.PRODUCT_IDS_SCHEMA, by event_date, like the clean events). Two
different ids with the same key stop clean (:func:`check_collisions`). What leaves the pipeline or
comes back into it from the shop carries the original id: the recommendations' item_id
(:func:`originals`), the feedback contract and feedback_counts (they copy the recommendations'
item_id), and ``score.exclude_items_path``; readers turn it into the key again with :func:`keys`.
Under integer ids (the default) the id is its own key and nothing here changes a value.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, schema
from recsys_spark.errors import DataQualityError

# The sign bit cleared: keys are non-negative (-1 means "no item" in the scoring arrays).
KEY_MASK = 0x7FFF_FFFF_FFFF_FFFF
PATHS_KEY = "paths.product_ids"


def is_string(id_type: str) -> bool:
    return id_type == schema.ID_STRING


def product_key(text: Column) -> Column:
    """The 63-bit key of a product id's text (trimmed by the caller), as a long; null for null."""
    return F.xxhash64(text).bitwiseAND(F.lit(KEY_MASK))


def keys(ids: Column, id_type: str) -> Column:
    """The key of an original product id column as it comes back from outside (exclusions,
    feedback): the trimmed text's :func:`product_key` under string ids (null when empty), the
    value cast to a long under integer ids (null when it is not a whole number)."""
    if is_string(id_type):
        text = F.trim(ids.cast("string"))
        return F.when(text != "", product_key(text))
    return ids.try_cast("long")


def read_table(spark: SparkSession, path: str) -> DataFrame:
    """``paths.product_ids``: distinct (product_id = the key, original_id)."""
    return (io.read_table(spark, path, schema.PRODUCT_IDS_SCHEMA, PATHS_KEY)
            .select(schema.PRODUCT_ID, schema.ORIGINAL_ID).distinct())


def check_collisions(pairs: DataFrame) -> None:
    """Raise DataQualityError, in one line naming two of the ids, when two different original
    ids of ``pairs`` (product_id = key, original_id) share a key."""
    clash = (pairs.select(schema.PRODUCT_ID, schema.ORIGINAL_ID).distinct().groupBy(schema.PRODUCT_ID)
             .agg(F.count(F.lit(1)).alias("n"), F.sort_array(F.collect_set(schema.ORIGINAL_ID)).alias("ids"))
             .where(F.col("n") > 1).orderBy(schema.PRODUCT_ID).first())
    if clash is not None:
        first, second = clash["ids"][:2]
        raise DataQualityError(
            f"clean: product ids {first!r} and {second!r} have the same 63-bit key {clash[schema.PRODUCT_ID]} "
            f"(clean.id_types.product_id=string): rename one of them in the source; nothing was published")


def originals(df: DataFrame, column: str, table: DataFrame | None) -> DataFrame:
    """``df`` with its key ``column`` replaced (in place, same column order) by the original id
    of ``table`` (:func:`read_table`); ``table`` None (integer ids): ``df`` unchanged.

    A key missing from the table becomes null: the writer's contract (non-null ids) catches it.
    """
    if table is None:
        return df
    lookup = table.select(F.col(schema.PRODUCT_ID).alias("_key"), F.col(schema.ORIGINAL_ID).alias("_original"))
    joined = df.join(lookup, df[column] == lookup["_key"], "left")
    return joined.select(*[F.col("_original").alias(c) if c == column else F.col(c) for c in df.columns])
