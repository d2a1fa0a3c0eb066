"""Training and validation data for one Horovod rank: Petastorm shards and pyarrow rows.

The training windows are read with Petastorm: each rank reads its own shard of row groups.
``BatchedDataLoader`` is used rather than ``DataLoader``: both deliver our variable-length
``list<int32>`` columns (Spark's ``ArrayType``) as int32 tensors [B, L+1], and the batched one
converts whole columns at once (about 7x faster in STACK.md's measurement).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import torch

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.errors import DataQualityError, InputError

TRAIN_COLUMNS = (schema.ITEM_SEQ, schema.EVENT_SEQ, schema.GAP_SEQ)
HISTORY_COLUMNS = (schema.HIST_ITEMS, schema.HIST_EVENTS, schema.HIST_GAPS)


@contextlib.contextmanager
def train_batches(path: str, rank: int, size: int, batch_size: int, seed: int,
                  shuffle_buffer: int = 0) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """One streamed pass over this rank's shard of the training windows (Petastorm).

    Args:
        path: the ``features/train`` Parquet table (local path or URI).
        rank, size: this process's Horovod rank and the world size (the shard and shard count).
        batch_size: windows per batch (the last batch may be smaller).
        seed: shuffles the order of row groups (and rows, through ``shuffle_buffer``).
        shuffle_buffer: rows held for shuffling across row groups; 0 turns it off.

    Yields:
        an iterator of (item_seq, event_seq, gap_seq), each LongTensor[B, L+1].
    """
    # Here, not at the top: petastorm (1 s) is needed only where batches are read, and the
    # driver imports this module too.
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    # Petastorm 0.12 calls pyarrow APIs deprecated since pyarrow 2; they still work on 14.
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")

    with make_batch_reader(
        io.local_uri(path), schema_fields=list(TRAIN_COLUMNS), cur_shard=rank, shard_count=size,
        num_epochs=1, shuffle_row_groups=seed is not None, seed=seed, workers_count=1,
    ) as reader:
        if seed is not None:
            torch.manual_seed(seed)  # BatchedDataLoader's shuffling buffer draws from torch's RNG
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_buffer)
        yield ((b[schema.ITEM_SEQ].long(), b[schema.EVENT_SEQ].long(), b[schema.GAP_SEQ].long()) for b in loader)


# Rows a streamed pass converts at once while loading a shard into memory.
LOAD_BATCH_ROWS = 8192
# Bytes per stored id (the windows are held as int32, as Parquet stores them).
ID_BYTES = 4


class TrainWindows:
    """This rank's shard of the training windows, reshuffled completely every pass.

    The shard is read once through Petastorm into memory (int32 arrays [R, L+1]) when it fits
    in ``memory_mb``, and each pass then visits its rows in a fresh permutation (seeded by the
    pass): a full shuffle, where a streaming buffer only mixes neighbouring row groups. A shard
    above ``memory_mb`` is streamed instead, each pass with a shuffling buffer of as many rows
    as ``memory_mb`` holds.

    Args:
        path: the ``features/train`` Parquet table (local path or URI).
        rank, size: this process's rank and the world size.
        batch_size: windows per batch on this rank.
        memory_mb: the most memory the shard may take.
    """

    def __init__(self, path: str, rank: int, size: int, batch_size: int, memory_mb: int):
        self.path, self.rank, self.size, self.batch_size = path, rank, size, batch_size
        dataset = open_dataset(path)
        self.total_rows = dataset.count_rows()
        width = self._window_width(dataset)
        self.row_bytes = max(1, width) * len(TRAIN_COLUMNS) * ID_BYTES
        self.budget_rows = max(batch_size, memory_mb * (1 << 20) // self.row_bytes)
        # The shards are about even (featurize writes one row group per file, files a multiple of ranks).
        self.in_memory = math.ceil(self.total_rows / size) <= self.budget_rows
        self._arrays: tuple[np.ndarray, ...] | None = None

    @staticmethod
    def _window_width(dataset: ds.Dataset) -> int:
        """L + 1, from the first window (every window is padded to the same length)."""
        for batch in dataset.to_batches(columns=[schema.ITEM_SEQ], batch_size=1):
            if batch.num_rows:
                return len(batch.column(0)[0])
        return 0

    def _load(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            parts: list[list[np.ndarray]] = [[] for _ in TRAIN_COLUMNS]
            with train_batches(self.path, self.rank, self.size, LOAD_BATCH_ROWS, seed=None) as batches:
                for batch in batches:
                    for part, column in zip(parts, batch):
                        part.append(column.numpy().astype(np.int32))
            self._arrays = tuple(np.concatenate(p) if p else np.zeros((0, 0), np.int32) for p in parts)
        return self._arrays

    @contextlib.contextmanager
    def pass_batches(self, seed: int) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """One pass: an iterator of (item_seq, event_seq, gap_seq), each LongTensor[B, L+1]."""
        if not self.in_memory:
            with train_batches(self.path, self.rank, self.size, self.batch_size, seed,
                               shuffle_buffer=self.budget_rows) as batches:
                yield batches
            return
        arrays = self._load()
        order = np.random.default_rng(seed).permutation(len(arrays[0]))

        def batches():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                yield tuple(torch.from_numpy(a[rows]).long() for a in arrays)

        yield batches()


@dataclass(frozen=True)
class EvalRows:
    """Evaluation rows as arrays: histories [R, L] and per-row item lists."""

    hist_items: np.ndarray
    hist_events: np.ndarray
    hist_gaps: np.ndarray
    seen_items: list[np.ndarray]
    target_items: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.target_items)


def read_eval_rows(path: str, rank: int = 0, size: int = 1, limit: int | None = None, seed: int = 0) -> EvalRows:
    """Rows ``i % size == rank`` of an evaluation table (schema.EVAL_SCHEMA), in file order.

    Args:
        path: the ``features/validation`` (or ``test``) Parquet table.
        rank, size: which slice to keep.
        limit: keep a sample of at most this many rows of the table first (the same on every
            rank: drawn with ``seed``, kept in file order); None keeps all.

    Raises:
        InputError: a missing table or column.
    """
    columns = [*HISTORY_COLUMNS, schema.SEEN_ITEMS, schema.TARGET_ITEMS]
    try:
        dataset = open_dataset(path)
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"evaluation table {path} cannot be read: {exc}") from None
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}")
    frame: pd.DataFrame = dataset.to_table(columns=columns).to_pandas()
    if limit is not None and len(frame) > limit:
        frame = frame.sample(n=limit, random_state=seed).sort_index()
    frame = frame.iloc[rank::size]
    return EvalRows(
        hist_items=_stack(frame[schema.HIST_ITEMS]),
        hist_events=_stack(frame[schema.HIST_EVENTS]),
        hist_gaps=_stack(frame[schema.HIST_GAPS]),
        seen_items=[np.asarray(v, dtype=np.int64) for v in frame[schema.SEEN_ITEMS]],
        target_items=[np.asarray(v, dtype=np.int64) for v in frame[schema.TARGET_ITEMS]],
    )


def _stack(column: pd.Series) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack([np.asarray(v, dtype=np.int64) for v in column])


def open_dataset(path: str) -> ds.Dataset:
    """A pyarrow dataset over a Parquet table, for local paths and Hadoop-style URIs alike."""
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(path))
    return ds.dataset(inner, filesystem=filesystem, format="parquet")


def read_metadata(features_root: str) -> dict:
    """``metadata.json`` of the features, read without Spark (inside a training task)."""
    path = io.feature_path(features_root, schema.FEATURE_METADATA)
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(path))
    try:
        with filesystem.open_input_stream(inner) as stream:
            return json.loads(stream.read().decode("utf-8"))
    except (FileNotFoundError, OSError) as exc:
        raise InputError(f"features metadata {path} cannot be read: {exc}") from None


def read_item_vocab(path: str) -> pd.DataFrame:
    """The item vocabulary (schema.ITEM_VOCAB_SCHEMA) as pandas, read without Spark."""
    columns = schema.ITEM_VOCAB_SCHEMA.fieldNames()
    dataset = open_dataset(path)
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}")
    return dataset.to_table(columns=columns).to_pandas().sort_values(schema.ITEM_IDX, ignore_index=True)


def item_feature_arrays(item_vocab: pd.DataFrame, num_items: int) -> dict[str, np.ndarray]:
    """Item side features and training counts as arrays indexed by item_idx.

    Args:
        item_vocab: rows of schema.ITEM_VOCAB_SCHEMA.
        num_items: size of the index space (pad and OOV included).

    Returns:
        {category_idx, brand_idx, price_bucket, train_count}: int64 arrays [num_items]; rows
        0 (pad) and 1 (OOV) are 0.

    Raises:
        DataQualityError: an item_idx outside 2..num_items-1, or one listed twice.
    """
    idx = item_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    if len(idx) and (idx.min() < schema.FIRST_ITEM_INDEX or idx.max() >= num_items):
        raise DataQualityError(f"item_vocab.item_idx outside {schema.FIRST_ITEM_INDEX}..{num_items - 1} (num_items)")
    if len(np.unique(idx)) != len(idx):
        raise DataQualityError("item_vocab lists an item_idx more than once")
    out = {}
    for column in (schema.CATEGORY_IDX, schema.BRAND_IDX, schema.PRICE_BUCKET, schema.TRAIN_COUNT):
        values = np.zeros(num_items, dtype=np.int64)
        values[idx] = item_vocab[column].to_numpy(dtype=np.int64)
        out[column] = values
    return out
