"""The file layout of the training windows: even Petastorm shards for every Horovod rank.

Petastorm shards a dataset by row group: rank r of n reads the row groups whose index is
r modulo n. The windows are therefore written as F files of one row group each, F a multiple
of the number of ranks, with rows spread round-robin: every rank gets F / n row groups whose
sizes differ by at most a few rows, so all ranks run the same number of steps per epoch.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.features.sequences import WINDOW_NO

_SHUFFLE_KEY = "shuffle_key"
# Parquet's in-memory size of one int32 array element (value plus its repetition and
# definition levels, generously) and of a row's fixed overhead: an upper bound, so that a
# planned row group never exceeds row_group_mb.
_BYTES_PER_ELEMENT = 6
_BYTES_PER_ROW = 16


def window_bytes(max_seq_len: int) -> int:
    """Upper bound of one training window's bytes in a Parquet row group (3 arrays of L + 1)."""
    return 3 * (max_seq_len + 1) * _BYTES_PER_ELEMENT + _BYTES_PER_ROW


def plan_train_files(rows: int, row_bytes: int, row_group_mb: int, min_files: int, shards: int) -> int:
    """The number of training files F: at least ``min_files``, enough for each file to hold at
    most ``row_group_mb`` (so one row group), a multiple of ``shards``, and no more files
    than rows (rounded up to ``shards``: Petastorm needs a row group per shard).

    Args:
        rows: training windows.
        row_bytes: :func:`window_bytes`.
        row_group_mb: the largest row group wanted, in MiB.
        min_files: featurize.train_files.
        shards: the number of training processes (train.num_proc).
    """
    by_size = math.ceil(rows * row_bytes / (row_group_mb * 1024 * 1024))
    files = max(min_files, by_size, 1)
    files = min(files, max(rows, 1))
    return math.ceil(files / shards) * shards


def shuffle_for_training(windows: DataFrame, files: int, seed: int,
                         key_columns: tuple[str, ...] = (schema.USER_ID, WINDOW_NO)) -> DataFrame:
    """Spread training windows over ``files`` partitions in a seeded pseudo-random order.

    Round-robin repartitioning gives every file the same number of rows (within the number
    of input partitions), and sorting each by a hash of (user, window, seed) keeps a user's
    windows apart, so that a batch is a mix of users. The order depends only on the data
    and the seed. ``key_columns``: what identifies a window (a written table's windows, which
    lack the user, by their content).
    """
    key = F.xxhash64(*[F.col(c) for c in key_columns], F.lit(seed))
    return (
        windows.withColumn(_SHUFFLE_KEY, key)
        .repartition(files)
        .sortWithinPartitions(_SHUFFLE_KEY)
        .drop(_SHUFFLE_KEY)
    )


def block_mb(row_group_mb: int) -> int:
    """The Parquet block size to write with: twice the planned row group, so that each planned
    file stays one row group even when the estimate is off."""
    return 2 * row_group_mb
