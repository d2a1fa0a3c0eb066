"""What a scoring task holds: the user encoder, two item spaces and the list rules.

A :class:`ScoringPlan` is built once on the driver and broadcast; each Spark task turns it
into a :class:`Recommender` once (:func:`task_recommender`, cached per Python worker) and
feeds it pandas batches of users. Users with a history the model knows are ranked by the
model over its catalogue (blocked matrix multiply + ``torch.topk``); the others get recent
popular items, their own category first. Both lists drop the user's excluded products,
keep at most ``category_cap`` items per category, and model lists give a share of their
positions to under-exposed items (seeded per user) as the exploration policy says
(:mod:`~recsys_spark.scoring.policies`, which also gives each item's propensity). "The model"
is the registered version: a trained model (:class:`ModelEncoder`) or a tuned baseline the gate
served in its place (:class:`RankerEncoder`).

Tasks exchange Arrow record batches with Spark (``mapInArrow``): list columns arrive as flat
buffers read into [B, L] matrices without a Python object per row, and each user's list
leaves as one row of arrays (``WIDE_SCHEMA``) that Spark explodes into ranked rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark import TaskContext
from torch import Tensor

from recsys_spark import schema
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY, USER_KEY, USER_VECTOR, WIDE_SCHEMA
from recsys_spark.models import bundle as bundles
from recsys_spark.models import ranking
from recsys_spark.models.bundle import ModelBundle
from recsys_spark.scoring import policies, topk
from recsys_spark.scoring.policies import ListRules

SOURCE_MODEL = "model"
SOURCE_FALLBACK = "fallback"
SOURCE_EXPLORE = "explore"
SOURCES = (SOURCE_MODEL, SOURCE_FALLBACK, SOURCE_EXPLORE)



@dataclass
class ItemSpace:
    """The items one ranker may recommend; row i is item i.

    Args:
        product_ids: int64 [M], distinct.
        categories: int64 [M], dense category code (see :func:`category_codes`), -1 unknown.
        vectors: float32 [M, d] item vectors (model), or None.
        popularity: float32 [M] (fallback), or None.
    """

    product_ids: np.ndarray
    categories: np.ndarray
    vectors: np.ndarray | None = None
    popularity: np.ndarray | None = None
    _sorted: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.product_ids)

    def index_of(self, product_ids: np.ndarray) -> np.ndarray:
        """Args: int64 [n] product ids. Returns: int64 [n] item indices, -1 where not in the space."""
        if self._sorted is None:
            self._sorted = np.argsort(self.product_ids, kind="stable")
        ordered = self.product_ids[self._sorted]
        product_ids = np.asarray(product_ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(ordered, product_ids), max(len(ordered) - 1, 0))
        if len(ordered) == 0:
            return np.full(len(product_ids), -1, dtype=np.int64)
        return np.where(ordered[at] == product_ids, self._sorted[at], -1).astype(np.int64)


def category_codes(values: np.ndarray, present: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Dense codes of raw category ids: the position in ``known`` (sorted, distinct), -1 if absent/null.

    Ids stay int64 all the way: real category ids (REES46's, the generator's) lie above 2^53,
    where a float64 no longer tells neighbours apart.

    Args:
        values: int64 [n] category_id (any value where null).
        present: bool [n], False where the category is null.
        known: int64 [C], sorted distinct category ids.
    """
    values = np.asarray(values, dtype=np.int64)
    present = np.asarray(present, dtype=bool)
    if len(known) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(known, values), len(known) - 1)
    return np.where(present & (known[at] == values), at, -1).astype(np.int64)


class UserBatch:
    """One Arrow record batch of users, read column by column into numpy.

    Args:
        batch: pyarrow.RecordBatch with user_id and the columns a ranker reads.
    """

    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch

    def __len__(self) -> int:
        return self.batch.num_rows

    def column(self, name: str):
        return self.batch.column(self.batch.schema.get_field_index(name))

    def take(self, rows: np.ndarray) -> "UserBatch":
        return UserBatch(self.batch.take(pa.array(rows, pa.int64())))

    def matrix(self, name: str, dtype=np.int64) -> np.ndarray:
        """A list column whose rows all have the same length L. Returns: [B, L] of ``dtype``."""
        column = self.column(name)
        lengths = np.diff(column.offsets.to_numpy())
        if len(lengths) and (lengths != lengths[0]).any():
            raise ValueError(f"{name}: rows of different lengths ({lengths.min()}..{lengths.max()})")
        flat = column.flatten().to_numpy(zero_copy_only=False)
        # A writable copy: Arrow buffers are read-only, torch wants to own what it wraps.
        return np.array(flat, dtype=dtype).reshape(len(column), lengths[0] if len(lengths) else 0)

    def lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A list column of ints (null = empty). Returns: (row int64 [n], value int64 [n]) pairs."""
        column = self.column(name)
        lengths = np.diff(column.offsets.to_numpy())
        lengths = np.where(column.is_null().to_numpy(zero_copy_only=False), 0, lengths)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        return np.repeat(np.arange(len(column), dtype=np.int64), lengths), values

    def nullable_ints(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An integer column, exactly. Returns: (int64 [B] values, 0 where null; bool [B] present)."""
        column = self.column(name)
        present = column.is_valid().to_numpy(zero_copy_only=False)
        return column.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False), present


class ModelEncoder:
    """User vectors from the registered model: the history re-encoded into the model's vocabulary.

    Args:
        bundle_bytes: ``ModelBundle.to_bytes()``.
        remap: int64 [V], the model's item index of each feature-table item index (pad -> 0,
            OOV and unknown -> 1): histories are written with the featurize run's vocabulary,
            the model knows the one it was trained with.
    """

    def __init__(self, bundle_bytes: bytes, remap: np.ndarray):
        self.bundle_bytes = bundle_bytes
        self.remap = remap
        self._module = None

    def __getstate__(self) -> dict[str, Any]:
        return {"bundle_bytes": self.bundle_bytes, "remap": self.remap, "_module": None}

    def module(self):
        if self._module is None:
            self._module = ModelBundle.from_bytes(self.bundle_bytes).build_module()
        return self._module

    def _items(self, users: UserBatch) -> np.ndarray:
        raw = users.matrix(schema.HIST_ITEMS)
        inside = (raw >= 0) & (raw < len(self.remap))
        items = np.where(inside, self.remap[np.clip(raw, 0, len(self.remap) - 1)], schema.OOV_INDEX)
        return np.where(raw == schema.PAD_INDEX, schema.PAD_INDEX, items)

    def known(self, users: UserBatch) -> np.ndarray:
        """Returns: bool [B], True where the history holds an item the model knows."""
        if len(users) == 0:
            return np.zeros(0, dtype=bool)
        return (self._items(users) >= schema.FIRST_ITEM_INDEX).any(axis=1)

    def _history(self, users: UserBatch) -> list[Tensor]:
        """items (in the model's vocabulary), events, gaps: LongTensor[B, L] each."""
        return [torch.from_numpy(h) for h in (self._items(users), users.matrix(schema.HIST_EVENTS),
                                              users.matrix(schema.HIST_GAPS))]

    def encode(self, users: UserBatch) -> Tensor:
        """Args: B users with hist_items / hist_events / hist_gaps. Returns: Tensor[B, d] float32."""
        with torch.no_grad():
            return ranking.user_vectors(self.module(), *self._history(users)).float()

    def score(self, users: UserBatch, item_vectors: Tensor, excluded: tuple[np.ndarray, np.ndarray], out: Tensor) -> None:
        """Fill ``out`` [B, M] with the model's scores of the M items of ``item_vectors``.

        Args:
            excluded: (row, item) pairs the users are never shown: a "mixture" model leaves
                them out of its softmax (``ranking.score_items``); they are masked later.
        """
        module = self.module()
        if module.user_vector != "mixture":
            # ranking.score_items' dot product, written into the task's reused buffer.
            torch.matmul(self.encode(users), item_vectors.T, out=out)
            return
        mask = ranking.exclusion_mask(len(users), item_vectors.shape[0], excluded)
        with torch.no_grad():
            out.copy_(ranking.score_items(module, *self._history(users), item_vectors, mask))


class RankerEncoder(ModelEncoder):
    """Scores from a registered tuned baseline (``models.bundle.BaselineBundle``): its ranker, the
    one evaluate measured, scores every item of its vocabulary from the user's history and seen
    items, re-encoded as ModelEncoder's; the plan's catalogue is a subset of those items.

    Args:
        bundle_bytes: ``BaselineBundle.to_bytes()``.
        remap: as ModelEncoder's.
        columns: int64 [M], the bundle's item index of each item of the plan's model catalogue.
    """

    def __init__(self, bundle_bytes: bytes, remap: np.ndarray, columns: np.ndarray):
        super().__init__(bundle_bytes, remap)
        self.columns = torch.from_numpy(np.asarray(columns, dtype=np.int64))
        self._ranker = None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "columns": self.columns, "_ranker": None}

    def ranker(self):
        """The baseline's ranker (models.rankers.Ranker), built once per task."""
        if self._ranker is None:
            self._ranker = bundles.read(self.bundle_bytes).ranker()
        return self._ranker

    def encode(self, users: UserBatch) -> Tensor:
        raise NotImplementedError("a tuned baseline scores items directly (score), it has no user vectors")

    def score(self, users: UserBatch, item_vectors: Tensor, excluded: tuple[np.ndarray, np.ndarray], out: Tensor) -> None:
        """Fill ``out`` [B, M] with the baseline's scores of the plan's M catalogue items
        (``item_vectors`` is [M, 0]: a baseline has none; ``excluded`` is masked later)."""
        rows, seen = users.lists(schema.SEEN_ITEMS)
        inside = (seen >= 0) & (seen < len(self.remap))
        seen = np.where(inside, self.remap[np.clip(seen, 0, len(self.remap) - 1)], schema.OOV_INDEX)
        known = seen >= schema.FIRST_ITEM_INDEX
        history = pd.DataFrame({
            schema.HIST_ITEMS: list(self._items(users)),
            schema.HIST_EVENTS: list(users.matrix(schema.HIST_EVENTS)),
            schema.HIST_GAPS: list(users.matrix(schema.HIST_GAPS)),
            schema.SEEN_ITEMS: np.split(seen[known], np.searchsorted(rows[known], np.arange(1, len(users)))),
        })
        with torch.no_grad():
            out.copy_(self.ranker().score_block(history)[:, self.columns])


class VectorEncoder:
    """User vectors given in the ``user_vector`` column (benchmarks); every user is known."""

    def known(self, users: UserBatch) -> np.ndarray:
        return np.ones(len(users), dtype=bool)

    def encode(self, users: UserBatch) -> Tensor:
        return torch.from_numpy(users.matrix(USER_VECTOR, np.float32))

    def score(self, users: UserBatch, item_vectors: Tensor, excluded: tuple[np.ndarray, np.ndarray], out: Tensor) -> None:
        """Fill ``out`` [B, M] with the dot products of the given user vectors and ``item_vectors``."""
        torch.matmul(self.encode(users), item_vectors.T, out=out)


@dataclass
class ScoringPlan:
    """Everything a task needs, built on the driver and broadcast once.

    Args:
        encoder: ModelEncoder, RankerEncoder or VectorEncoder.
        model_items: the model's catalogue (vectors set).
        fallback_items: recent popular products (popularity set).
        explore_pool: int64 [P], indices into model_items of under-exposed items.
        categories: int64 [C], sorted distinct raw category ids (dense code = position).
        rules: list length, block size, cap and exploration share.
        policy: how the pool is explored (epsilon by default).
    """

    encoder: Any
    model_items: ItemSpace
    fallback_items: ItemSpace
    explore_pool: np.ndarray
    categories: np.ndarray
    rules: ListRules
    policy: policies.Policy = field(default_factory=policies.Policy)


class Recommender:
    """Turns batches of users into their lists: Arrow in, Arrow out (``WIDE_SCHEMA``)."""

    def __init__(self, plan: ScoringPlan):
        self.plan = plan
        self.rules = plan.rules
        self.model_vectors = torch.from_numpy(np.ascontiguousarray(plan.model_items.vectors, dtype=np.float32))
        self.popularity = torch.from_numpy(np.asarray(plan.fallback_items.popularity, dtype=np.float32))
        self.fallback_categories = torch.from_numpy(plan.fallback_items.categories)
        # Preallocated score blocks: a task's memory is block_size x catalogue, reused.
        self._buffers: dict[str, Tensor] = {}

    def blocks(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """The lists of a batch's users, one WIDE_SCHEMA batch per block of ``block_size`` users:
        what a task holds at once (scores, encoder activations, output) is bounded by the block.

        Args:
            batch: user_id, the history columns (or user_vector), exclude_products,
                user_category and user_key.
        """
        users = UserBatch(batch)
        known = self.plan.encoder.known(users)
        size = self.rules.block_size
        for rows, block in ((np.flatnonzero(known), self._model_block), (np.flatnonzero(~known), self._fallback_block)):
            for start in range(0, len(rows), size):
                part = users.take(rows[start : start + size])
                yield _wide(part.column(schema.USER_ID), *block(part))

    def recommend(self, frame: pd.DataFrame) -> pd.DataFrame:
        """:meth:`blocks` on a pandas frame, in long format (RANKED columns): for tests and notebooks."""
        batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
        return pd.concat([long_frame(pa.RecordBatch.from_pylist([], WIDE_SCHEMA)), *map(long_frame, self.blocks(batch))],
                         ignore_index=True)

    def _buffer(self, name: str, rows: int, cols: int) -> Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape[1] != cols or buf.shape[0] < rows:
            buf = torch.empty(max(rows, self.rules.block_size), cols, dtype=torch.float32)
            self._buffers[name] = buf
        return buf[:rows]

    def _model_block(self, users: UserBatch) -> tuple[topk.Ranked, np.ndarray, np.ndarray, np.ndarray]:
        space = self.plan.model_items
        scores = self._buffer("model", len(users), len(space))
        excluded = _excluded(users, space)
        with torch.no_grad():
            self.plan.encoder.score(users, self.model_vectors, excluded, scores)
            ranking.mask_pairs(scores, *excluded)
            keys = users.column(USER_KEY).to_numpy(zero_copy_only=False).astype(np.int64)
            ranked, propensity = policies.serve(scores, keys, self.plan.explore_pool, space.categories, self.rules,
                                                self.plan.policy)
        codes = np.where(ranked.explore, SOURCES.index(SOURCE_EXPLORE), SOURCES.index(SOURCE_MODEL)).astype(np.int8)
        return ranked, space.product_ids, codes, propensity

    def _fallback_block(self, users: UserBatch) -> tuple[topk.Ranked, np.ndarray, np.ndarray, np.ndarray]:
        space, rules = self.plan.fallback_items, self.rules
        scores = self._buffer("fallback", len(users), len(space))
        # The user's own category first (a bonus above any popularity), then the rest.
        codes = torch.from_numpy(category_codes(*users.nullable_ints(USER_CATEGORY), self.plan.categories))
        bonus = float(self.popularity.max()) + 1.0 if len(space) else 0.0
        same = (self.fallback_categories[None, :] == codes[:, None]) & (codes[:, None] >= 0)
        torch.add(self.popularity[None, :], same.float(), alpha=bonus, out=scores)
        ranking.mask_pairs(scores, *_excluded(users, space))
        ranked = topk.rank(scores, rules.k, space.categories, rules.category_cap)
        ranked.scores = np.where(ranked.items >= 0, space.popularity[np.maximum(ranked.items, 0)], ranking.NEG_INF)
        codes = np.full(ranked.items.shape, SOURCES.index(SOURCE_FALLBACK), dtype=np.int8)
        return ranked, space.product_ids, codes, np.ones(ranked.items.shape)  # deterministic


_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def task_recommender(plan_broadcast) -> Recommender:
    """The Recommender of a broadcast plan, built once per Python worker and reused by its tasks.

    A reused worker keeps the broadcast's value, so the model is rebuilt only for a new plan.
    Also sets torch's threads to the task's CPUs (``spark.task.cpus``, 1 by default): Spark
    already runs one task per core, more threads per task would oversubscribe them.
    """
    context = TaskContext.get()
    torch.set_num_threads(max(1, context.cpus() if context is not None else 1))
    plan = plan_broadcast.value
    with _CACHE_LOCK:
        if _CACHE.get("plan") is not plan:
            _CACHE.clear()  # one plan at a time: a new stage run replaces the old one
            _CACHE.update(plan=plan, recommender=Recommender(plan))
        return _CACHE["recommender"]


def _excluded(users: UserBatch, space: ItemSpace) -> tuple[np.ndarray, np.ndarray]:
    """(row, item index) pairs of each user's excluded products that ``space`` holds."""
    rows, products = users.lists(EXCLUDE_PRODUCTS)
    items = space.index_of(products)
    return rows[items >= 0], items[items >= 0]


def _wide(user_ids: pa.Array, ranked: topk.Ranked, product_ids: np.ndarray, codes: np.ndarray,
          propensity: np.ndarray) -> pa.RecordBatch:
    """One row per user: the filled slots of its list (empties only trail) as four arrays."""
    filled = ranked.items >= 0
    offsets = pa.array(np.r_[0, np.cumsum(filled.sum(axis=1))].astype(np.int32))
    columns = [
        user_ids,
        pa.ListArray.from_arrays(offsets, pa.array(product_ids[ranked.items[filled]], pa.int64())),
        pa.ListArray.from_arrays(offsets, pa.array(ranked.scores[filled].astype(np.float32), pa.float32())),
        pa.ListArray.from_arrays(offsets, pa.array(codes[filled], pa.int8())),
        pa.ListArray.from_arrays(offsets, pa.array(propensity[filled].astype(np.float64), pa.float64())),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=WIDE_SCHEMA)


def long_frame(wide: pa.RecordBatch) -> pd.DataFrame:
    """WIDE_SCHEMA rows as ranked rows: user_id, rank (1..n), slot (rank - 1), item_id, score,
    source, propensity (score.RANKED_SCHEMA's columns)."""
    lengths = np.diff(wide.column(1).offsets.to_numpy())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    slot = (np.arange(lengths.sum()) - starts).astype(np.int32)
    return pd.DataFrame({
        schema.USER_ID: np.repeat(np.asarray(wide.column(0).to_pylist(), dtype=object), lengths),
        schema.RANK: slot + 1,
        schema.SLOT: slot,
        schema.ITEM_ID: wide.column(1).flatten().to_numpy().astype(np.int64),
        schema.SCORE: wide.column(2).flatten().to_numpy().astype(np.float32),
        schema.SOURCE: np.asarray(SOURCES, dtype=object)[wide.column(3).flatten().to_numpy().astype(np.int64)],
        schema.PROPENSITY: wide.column(4).flatten().to_numpy().astype(np.float64),
    })
