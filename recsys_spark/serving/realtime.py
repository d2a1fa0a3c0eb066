"""Real-time lists: a posted session ranked by the champion through the score stage's own path.

A session (the user's recent events, posted to ``POST /v1/recommendations``) becomes the row a
scoring task reads (``features/user_history``'s columns plus the context of
``scoring/inputs.py``), built here as featurize and score build it in Spark (:func:`session_row`):
events collapsed into steps, time-gap buckets, the last ``max_seq_len`` steps in the features'
item vocabulary, left-padded; the products of ``score.exclude_event_types`` events excluded; the
category of the latest categorised event; the user key ``xxhash64(user, score.seed, run_date)``.
That row goes through the score stage's :class:`~recsys_spark.scoring.recommender.Recommender`,
built from :func:`~recsys_spark.scoring.score.build_plan` with the inputs the score stage reads
(:func:`~recsys_spark.scoring.score.read_plan_inputs`): the same model scores, exclusions,
exploration policy and propensities. So a session holding a user's whole clean history gets the
list the score stage wrote for them (tests/serving/test_realtime.py).

The inputs are read once, with Spark, when the service starts (:func:`load_context`); a model
is turned into a :class:`RealtimeRanker` in memory, without Spark, each time the champion moves.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from recsys_spark import io, product_ids, schema
from recsys_spark.config import Config
from recsys_spark.schema import ITEM_IDS, PROPENSITIES, SCORES, SOURCE_CODES
from recsys_spark.scoring import score
from recsys_spark.scoring.recommender import (
    SOURCES,
    ItemSpace,
    Recommender,
    ScoringPlan,
)
from recsys_spark.serving.ids import user_key
from recsys_spark.serving.store import encode_list

log = logging.getLogger(__name__)

_CODE_OF_STRENGTH = {schema.EVENT_STRENGTH[t]: schema.EVENT_CODE[t] for t in schema.EVENT_TYPES}
_MICROS = 1_000_000


@dataclass(frozen=True)
class SessionEvent:
    """One posted event, as clean would hold it.

    Args:
        product_id: the product's id inside the pipeline (its key under string ids).
        event_type: a contract event type (schema.EVENT_TYPES).
        micros: event time, microseconds since the epoch (UTC).
        category_id: the event's category, or None (then the product's usual category).
    """

    product_id: int
    event_type: str
    micros: int
    category_id: int | None = None


@dataclass(frozen=True)
class RealtimeContext:
    """Everything a real-time list needs besides the model; the same for every champion.

    Args:
        inputs: the plan's inputs (score.PlanInputs), as the score stage reads them.
        run_date: the run date whose lists the real-time path reproduces (seeds exploration).
        max_seq_len: steps of history (featurize's, from the features' metadata.json).
        originals: under string product ids, key -> the shop's id; None under integer ids.
    """

    inputs: score.PlanInputs
    run_date: str
    max_seq_len: int
    originals: dict[int, str] | None = None

    def shop_ids(self, keys: np.ndarray) -> list:
        """Product keys as the shop names them: ints, or the original text under string ids."""
        if self.originals is None:
            return [int(k) for k in keys]
        return [self.originals.get(int(k), str(int(k))) for k in keys]


@dataclass(frozen=True)
class ServedList:
    """One answer's list, best first (its length is the list's, at most the k asked for).

    Args:
        items: product ids as the shop names them (int, or str under string ids).
        scores, sources, propensities: per item (sources: recommender.SOURCES entries).
        unknown_products: posted events whose product is not in the features' vocabulary
            (kept as out-of-vocabulary steps, as featurize keeps them).
    """

    items: list
    scores: list[float]
    sources: list[str]
    propensities: list[float]
    unknown_products: int = 0

    def head(self, k: int) -> "ServedList":
        return ServedList(self.items[:k], self.scores[:k], self.sources[:k], self.propensities[:k],
                          self.unknown_products)

    @property
    def slots(self) -> range:
        return range(len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def items_json(self) -> bytes:
        """The response's ``items`` array (as the store keeps a cached list)."""
        return encode_list(self.items, self.scores, self.slots, self.sources, self.propensities)


def load_context(spark, cfg: Config, run_date: str | None = None) -> RealtimeContext:
    """Read the plan's inputs as the score stage does (Spark), for the service's lifetime.

    Args:
        run_date: the run date to reproduce; None = ``score.run_date``, else the latest run date
            under ``paths.recommendations``, else today (UTC).
    """
    sc = cfg.score
    root = cfg.paths.resolve("features")
    feature_vocab = io.read_features(spark, root, "item_vocab")
    clean_path = cfg.paths.resolve("clean")
    io.require_input(spark, clean_path, "paths.clean")
    events = io.read_clean(spark, clean_path)
    id_type = cfg.clean.id_types[schema.PRODUCT_ID]
    excluded = (score.read_exclusions(spark, sc.exclude_items_path, id_type) if sc.exclude_items_path
                else np.zeros(0, np.int64))
    given = score.read_plan_inputs(spark, cfg, events, feature_vocab, excluded)
    metadata = io.read_feature_metadata(spark, root)
    originals = None
    if product_ids.is_string(id_type):
        table = product_ids.read_table(spark, cfg.paths.resolve("product_ids")).toPandas()
        originals = dict(zip(table[schema.PRODUCT_ID].astype(np.int64).tolist(), table[schema.ORIGINAL_ID]))
    written = io.recommendation_dates(spark, cfg.paths.resolve("recommendations"))
    run_date = run_date or sc.run_date or (written[-1] if written else score.run_date_of(sc))
    max_seq_len = int(metadata.get("max_seq_len", cfg.featurize.max_seq_len))
    log.info("serve: real-time context of run date %s: %d feature items, %d products with stats, %d excluded, "
             "histories of %d steps", run_date, len(given.feature_vocab), len(given.stats), len(excluded), max_seq_len)
    return RealtimeContext(given, run_date, max_seq_len, originals)


class RealtimeRanker:
    """A champion's lists: posted sessions ranked through the score stage's Recommender.

    Args:
        plan: :func:`score.build_plan` of the champion and the context's inputs.
        context: the :class:`RealtimeContext` the plan was built from.
        seed: ``score.seed``; exclude_event_types: ``score.exclude_event_types``.

    Sessions posted at the same time are ranked together, as one block of the Recommender (one
    forward pass, one Monte-Carlo of the propensities): a caller queues its session's row; the
    first caller that finds no block running ranks every row queued (its own included), the
    others wait for their list or for their turn. A Recommender reuses its score buffers, so one
    block runs at a time. A user's list is the same alone or in a block: every step of the score
    stage is row by row (its Spark tasks rank blocks of ``score.block_size`` users).
    """

    def __init__(self, plan: ScoringPlan, context: RealtimeContext, seed: int, exclude_event_types: Sequence[str],
                 timeout_s: float = 2.0):
        self.plan = plan
        self.timeout_s = timeout_s
        self.context = context
        self.seed = seed
        self.exclude_event_types = frozenset(exclude_event_types)
        self.recommender = Recommender(plan)
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._ranking = False
        self._block_size = max(1, plan.rules.block_size)
        vocab = context.inputs.feature_vocab
        self._vocab = ItemSpace(vocab[schema.PRODUCT_ID].to_numpy(dtype=np.int64), np.zeros(len(vocab), np.int64))
        self._vocab_idx = vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
        stats = context.inputs.stats
        category = stats[schema.CATEGORY_ID].astype("Int64")
        self._stats = ItemSpace(stats[schema.PRODUCT_ID].to_numpy(dtype=np.int64), np.zeros(len(stats), np.int64))
        self._category = category.fillna(0).to_numpy(dtype=np.int64)
        self._has_category = category.notna().to_numpy()
        self._fallback = self._rank([], "", 0)
        if len(plan.model_items):  # build the model now, not on the first request, and see that it ranks
            self._rank([SessionEvent(int(plan.model_items.product_ids[0]), schema.EVENT_TYPES[0], 0)], "", 0)

    def fallback(self) -> ServedList:
        """The popular-items list (the score stage's list for a user with no history, category
        or exclusion): deterministic, every propensity 1."""
        return self._fallback

    def rank(self, user: str | None, events: Sequence[SessionEvent]) -> ServedList:
        """The list of a session: the model's when it holds an item the model knows, else the
        fallback with the session's category first (as the score stage decides).

        Args:
            user: the user's pseudonym (keys the exploration draws, as in the score stage); None
                for an anonymous session (a random key: its lists are not reproducible).
            events: the session, any order.
        """
        return self._rank(events, user, None if user is not None else secrets.randbits(63))

    def _rank(self, events: Sequence[SessionEvent], user: str | None, key: int | None) -> ServedList:
        key = user_key(user or "", self.seed, self.context.run_date) if key is None else key
        row = session_row(events, key, self._encode, self._product_category, self.context.max_seq_len,
                          self.exclude_event_types)
        request = _Request(row)
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._queue.append(request)
        while True:
            with self._cond:
                while request.done is None and self._ranking:
                    if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())) and request.done is None:
                        if request in self._queue:
                            self._queue.remove(request)
                        raise TimeoutError(f"no real-time list within serve.realtime_timeout_s={self.timeout_s:g} s")
                if request.done is not None:
                    return request.result()
                # Lead: rank what waits (oldest first; this request, unless a full block is ahead of it).
                block, self._queue = self._queue[: self._block_size], self._queue[self._block_size :]
                self._ranking = True
            try:
                lists = self._rank_block([r.row for r in block])
                for r, served in zip(block, lists):
                    r.done, r.value = True, served
            except BaseException as exc:  # noqa: BLE001 - every request of the block gets the error
                for r in block:
                    r.done, r.value = False, exc
            finally:
                with self._cond:
                    self._ranking = False
                    self._cond.notify_all()

    def _rank_block(self, rows: list["SessionRow"]) -> list[ServedList]:
        """The lists of the rows, in their order."""
        out: list[ServedList | None] = [None] * len(rows)
        with torch.inference_mode():  # no autograd bookkeeping at all (the score stage's no_grad keeps some)
            batches = list(self.recommender.blocks(rows_batch(rows)))
        for batch in batches:
            at = batch.column(0).to_pylist()  # the rows' positions (rows_batch's user_id)
            offsets = batch.column(ITEM_IDS).offsets.to_numpy()
            keys, scores, codes, props = (batch.column(c).values.to_numpy(zero_copy_only=False).tolist()
                                          for c in (ITEM_IDS, SCORES, SOURCE_CODES, PROPENSITIES))
            for i, position in enumerate(at):
                span = slice(offsets[i], offsets[i + 1])
                out[int(position)] = ServedList(self.context.shop_ids(keys[span]), scores[span],
                                                [SOURCES[c] for c in codes[span]], props[span],
                                                rows[int(position)].unknown)
        return [served if served is not None else ServedList([], [], [], [], r.unknown) for served, r in zip(out, rows)]

    def _encode(self, products: np.ndarray) -> np.ndarray:
        """Product keys -> the features' item_idx (OOV_INDEX outside the vocabulary)."""
        at = self._vocab.index_of(products)
        return np.where(at >= 0, self._vocab_idx[np.maximum(at, 0)], schema.OOV_INDEX)

    def _product_category(self, products: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Product keys -> (int64 category ids, bool known)."""
        at = self._stats.index_of(products)
        known = (at >= 0) & self._has_category[np.maximum(at, 0)]
        return np.where(known, self._category[np.maximum(at, 0)], 0), known


class _Request:
    """One queued session: its row, then its list (done True) or the error raised (done False)."""

    __slots__ = ("row", "done", "value")

    def __init__(self, row: "SessionRow"):
        self.row = row
        self.done: bool | None = None
        self.value = None

    def result(self) -> ServedList:
        if self.done is False:
            raise self.value
        return self.value


@dataclass(frozen=True)
class SessionRow:
    """One session as the row a scoring task reads (:func:`session_row`).

    Args:
        items, events, gaps: int32 [max_seq_len] the history, left-padded.
        seen: sorted distinct item_idx of the known items; excluded: sorted product keys never to
        recommend; category: the latest categorised event's, or None; key: the exploration key;
        unknown: posted events whose product is not in the vocabulary.
    """

    items: np.ndarray
    events: np.ndarray
    gaps: np.ndarray
    seen: list[int]
    excluded: list[int]
    category: int | None
    key: int
    unknown: int


def session_row(events: Sequence[SessionEvent], key: int, encode, product_category, max_seq_len: int,
                exclude_event_types: frozenset[str]) -> SessionRow:
    """The scoring row of one session, as featurize and score build a user's row.

    Steps (``features.sequences.collapse_steps``): events in time order (ties by event strength,
    type, product), each run of consecutive events on one product one step, at its first event's
    time, with its strongest event's code; the gap bucket of the whole seconds since the previous
    step (``add_gap_buckets``); the last ``max_seq_len`` steps left-padded (``history_rows``).

    Args:
        encode: int64 [n] product keys -> int64 [n] item_idx (OOV_INDEX when unknown).
        product_category: int64 [n] product keys -> (int64 [n] category ids, bool [n] known),
            for events without a category.
    """
    ordered = sorted(events, key=lambda e: (e.micros, schema.EVENT_STRENGTH[e.event_type], e.event_type, e.product_id))
    steps: list[list[int]] = []  # [product, micros of the first event, strongest]
    for event in ordered:
        strength = schema.EVENT_STRENGTH[event.event_type]
        if steps and steps[-1][0] == event.product_id:
            steps[-1][2] = max(steps[-1][2], strength)
        else:
            steps.append([event.product_id, event.micros, strength])
    last = steps[max(0, len(steps) - max_seq_len):]
    pad = max_seq_len - len(last)
    history = np.zeros((3, max_seq_len), dtype=np.int32)  # schema.PAD_INDEX
    products = np.array([e.product_id for e in events], dtype=np.int64)
    posted = encode(products) if len(events) else np.zeros(0, np.int64)
    step_items = encode(np.array([s[0] for s in steps], dtype=np.int64)) if steps else np.zeros(0, np.int64)
    if last:
        history[0, pad:] = step_items[len(steps) - len(last):]
        history[1, pad:] = [_CODE_OF_STRENGTH[s[2]] for s in last]
        gaps = [0] + [schema.gap_bucket_of((b[1] - a[1]) // _MICROS) for a, b in zip(steps, steps[1:])]
        history[2, pad:] = gaps[len(steps) - len(last):]
    category = None
    if len(events):
        given = np.array([e.category_id is not None for e in events])
        ids_given = np.array([e.category_id if e.category_id is not None else 0 for e in events], dtype=np.int64)
        usual, known = product_category(products)
        present = given | known
        if present.any():
            micros = np.array([e.micros for e in events], dtype=np.int64)
            values = np.where(given, ids_given, usual)
            # The latest categorised event's category (ties: the largest id, as max() of pairs).
            order = np.lexsort((values[present], micros[present]))
            category = int(values[present][order[-1]])
    return SessionRow(
        items=history[0], events=history[1], gaps=history[2],
        seen=sorted({int(i) for i in step_items if i >= schema.FIRST_ITEM_INDEX}),
        excluded=sorted({e.product_id for e in events if e.event_type in exclude_event_types}),
        category=category, key=key, unknown=int((posted == schema.OOV_INDEX).sum()),
    )


def rows_batch(rows: Sequence[SessionRow]) -> pa.RecordBatch:
    """The rows as one schema.SCORING_ROW_SCHEMA batch; user_id holds each row's position (the lists come back
    grouped model first, fallback second: the position puts them back in order)."""
    n = len(rows)
    length = len(rows[0].items) if n else 0
    fixed = pa.array(np.arange(n + 1) * length, pa.int32())

    def matrix(name: str) -> pa.Array:
        flat = np.concatenate([getattr(r, name) for r in rows]) if n else np.zeros(0, np.int32)
        return pa.ListArray.from_arrays(fixed, pa.array(flat.astype(np.int32), pa.int32()))

    def ragged(name: str, dtype) -> pa.Array:
        values = [getattr(r, name) for r in rows]
        offsets = pa.array(np.r_[0, np.cumsum([len(v) for v in values])].astype(np.int32), pa.int32())
        return pa.ListArray.from_arrays(offsets, pa.array([x for v in values for x in v], dtype))

    columns = [
        pa.array([str(i) for i in range(n)], pa.string()),
        matrix("items"), matrix("events"), matrix("gaps"),
        ragged("seen", pa.int32()), ragged("excluded", pa.int64()),
        pa.array([r.category for r in rows], pa.int64()),
        pa.array([r.key for r in rows], pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema.SCORING_ROW_SCHEMA)


def micros_of(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (Spark's unix_micros)."""
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * _MICROS + delta.microseconds


def build_ranker(bundle, context: RealtimeContext, cfg: Config) -> RealtimeRanker:
    """A champion's :class:`RealtimeRanker`: the score stage's plan of ``bundle`` over the context."""
    sc = cfg.score
    given = context.inputs
    plan = score.build_plan(bundle, score.item_vectors_of(bundle), given.feature_vocab, given.stats, given.excluded,
                            sc, given.feedback, given.active_users, context.run_date)
    return RealtimeRanker(plan, context, sc.seed, sc.exclude_event_types, cfg.serve.realtime_timeout_s)

