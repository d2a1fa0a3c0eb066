"""Row numbers in a global order without moving every row into one partition.

``row_number().over(Window.orderBy(...))`` has no partition: Spark sends all rows to a single
task (and warns "No Partition Defined for Window operation!"). Here the frame is range-sorted
in parallel instead, each row takes its position inside its sorted partition, and one tiny
aggregate of the partition sizes gives every partition its offset: two passes, both parallel.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark.features.sequences import literal_map

_PART = "_rank_part"
_ID = "_rank_id"
# monotonically_increasing_id() puts the partition index in the upper 31 bits, the record
# number inside the partition in the lower 33.
_RECORD_BITS = 33


def row_numbers(df: DataFrame, order: Sequence[Column | str], out: str, start: int = 1) -> DataFrame:
    """Add ``out``: ``start``, ``start + 1``, ... in the global order ``order``.

    The order must be total (end it with a unique key) for the numbers to be deterministic.
    The sorted frame is materialised once (``localCheckpoint``) so that the partition sizes
    and the positions come from the same sort: re-running a range sort may draw other
    partition bounds.

    Args:
        df: any frame; it keeps all its columns.
        order: sort expressions, as for ``DataFrame.orderBy``.
        out: name of the new long column.
        start: the first number.

    Returns:
        ``df``'s columns and ``out``; one row per input row.
    """
    sorted_rows = (
        df.orderBy(*order)
        .select("*", F.spark_partition_id().alias(_PART), F.monotonically_increasing_id().alias(_ID))
        .localCheckpoint(eager=True)
    )
    sizes = dict(sorted_rows.groupBy(_PART).count().collect())
    parts = sorted(sizes)
    offsets = dict(zip(parts, accumulate((sizes[p] for p in parts[:-1]), initial=0)))
    within = F.col(_ID) - F.shiftleft(F.col(_PART).cast("long"), _RECORD_BITS)
    offset = literal_map({int(p): int(o) for p, o in offsets.items()})[F.col(_PART)] if offsets else F.lit(0)
    number = (offset.cast("long") + within + F.lit(start)).alias(out)
    # Each column re-aliased: the checkpoint keeps the attribute ids of ``df``'s plan, and a join
    # of the result with a frame of the same lineage (add_price_buckets) then fails Spark's
    # analysis ("Failure when resolving conflicting references") when adaptive execution is off.
    return sorted_rows.select(*[F.col(c).alias(c) for c in df.columns], number)
