"""Off-policy evaluation of the next policy: the challenger under the run's score settings,
valued on the clicks the served (logging) policy collected.

The target policy is exactly what the score stage would serve with the challenger bundle and
``cfg.score`` on each logged run date: the same plan (:func:`recsys_spark.scoring.score.build_plan`),
the same user keys (``xxhash64(user, score.seed, run date)``) and the same Monte-Carlo
(:func:`recsys_spark.scoring.policies.sample_lists`, samples [0, M), M = score.propensity_samples).
Its probability of each logged placement, pi_e(item | user, slot), is made by the score stage's
own function (:func:`recsys_spark.scoring.policies.placement_probability`): exact where the
whole has a closed form (epsilon's slots, no binding cap, a list that fills, no valid pool item
among the user's K best: :func:`recsys_spark.scoring.policies.greedy_users`); where only
epsilon's exploration part has one, that exact part plus the share of the M lists holding the
logged item in the logged slot as a model item; elsewhere (Thompson, a cap below K, a list that
cannot fill) the share of the M lists holding it there at all. So for an item the target serves
it is exactly the propensity the score stage would write (:func:`target_placements`). A
deterministic list (no exploration slots, or a fallback user) gives 1 or 0.

History as of the run date (:func:`scoring_rows_as_of`): each logged user's history is rebuilt
from ``paths.clean`` events strictly before the run date's midnight (UTC), with featurize's own
step, gap and history functions and the features' item vocabulary, and the user's exclusions and
category from those events too. Limits: events that clean dropped or that arrived late are
missing from it as they were not from the day's features; the plan's popularity (pool, fallback
catalogue) is also as of the date, but a Thompson policy's feedback counts are those of
``score.feedback_counts_path`` now, not as of the date; users without any event before the date
have no history and their lists are left out (counted).

Reward model (DM and DR; :class:`PositionCtr`): a position-based factorisation fitted on the
evaluated logs, q(slot, item) = ctr(slot) * lift(item), where ctr(slot) is the slot's click rate
and lift(item) = (clicks of the item + s) / (its expected clicks under ctr + s), shrunk to 1 by
``s`` pseudo-clicks. The target's q at a logged (user, slot) is the mean of q over the M lists'
items in that slot.

Estimators (:mod:`recsys_spark.evaluation.ope`): per exposure (per-position importance
weights w = pi_e / pi_0), summed per list and averaged over lists: expected clicks per list on
the logged slots. Beside them, the logging policy's own clicks per list (on-policy, w = 1).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, schema
from recsys_spark.evaluation import ope
from recsys_spark.features.sequences import add_gap_buckets, collapse_steps, encode_items, history_rows
from recsys_spark.models import ranking
from recsys_spark.schema import EXCLUDE_PRODUCTS, Q_LOGGED, Q_TARGET, TARGET_PROPENSITY, USER_KEY
from recsys_spark.scoring import inputs, policies, score, topk
from recsys_spark.scoring.recommender import (
    SOURCE_FALLBACK,
    Recommender,
    ScoringPlan,
    UserBatch,
)

log = logging.getLogger(__name__)

# A list: the rows of one (run_date, user_id, policy, policy_version).
LIST_KEY = [schema.RUN_DATE, schema.USER_ID, schema.POLICY, schema.POLICY_VERSION]
# The feedback columns read (schema.CLEAN_FEEDBACK_SCHEMA's).
LOGGED_COLUMNS = [*LIST_KEY, schema.SLOT, schema.ITEM_ID, schema.PROPENSITY, schema.CLICKED]
DECILES = 10
# Logged item ids never match a sampled item index (-1 is an empty slot).
_NO_ITEM = -2

HISTORY_NOTE = ("each logged user's history rebuilt from paths.clean events before the run date's midnight (UTC) "
                "with the features' item vocabulary; popularity as of that date; Thompson feedback counts as now")
REWARD_NOTE = ("position-based: q(slot, item) = ctr(slot) * lift(item), ctr the slot's click rate in the "
               "evaluated logs, lift the item's clicks over its expected clicks, shrunk to 1 by {s:g} pseudo-clicks")


# ----------------------------------------------------------------------------- the reward model


@dataclass(frozen=True)
class PositionCtr:
    """q(slot, item) = min(1, ctr[slot] * lift[item]): examination by slot times item appeal.

    Attributes:
        slot_ctr: float64 [S], the click rate of slot s (0 beyond the logged slots).
        products: int64 [P] sorted product ids with a lift; others have lift 1.
        lift: float64 [P].
    """

    slot_ctr: np.ndarray
    products: np.ndarray
    lift: np.ndarray

    @classmethod
    def fit(cls, slots: np.ndarray, items: np.ndarray, clicked: np.ndarray, prior_clicks: float = 5.0) -> "PositionCtr":
        """Args: int [N] slots, int [N] product ids, 0/1 [N] clicks; prior_clicks s > 0."""
        slots = np.asarray(slots, dtype=np.int64)
        clicked = np.asarray(clicked, dtype=np.float64)
        shown = np.bincount(slots)
        slot_ctr = np.bincount(slots, weights=clicked) / np.maximum(shown, 1)
        products, at = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
        at = at.ravel()
        expected = np.bincount(at, weights=slot_ctr[slots], minlength=len(products))
        got = np.bincount(at, weights=clicked, minlength=len(products))
        return cls(slot_ctr, products, (got + prior_clicks) / (expected + prior_clicks))

    def predict(self, slots: np.ndarray, product_ids: np.ndarray) -> np.ndarray:
        """q of each (slot, product) pair (same shape; a product id < 0, an empty slot, gets 0)."""
        slots = np.asarray(slots, dtype=np.int64)
        product_ids = np.asarray(product_ids, dtype=np.int64)
        slots, product_ids = np.broadcast_arrays(slots, product_ids)
        padded = np.r_[self.slot_ctr, 0.0]  # slots past the logged ones: 0
        ctr = padded[np.clip(slots, 0, len(padded) - 1)]
        products, lifts = np.r_[self.products, -1], np.r_[self.lift, 1.0]  # never found: lift 1
        at = np.minimum(np.searchsorted(self.products, product_ids), len(self.products))
        lift = np.where(products[at] == product_ids, lifts[at], 1.0)
        return np.where(product_ids >= 0, np.minimum(ctr * lift, 1.0), 0.0)


# ----------------------------------------------------------------------------- target propensities


def target_placements(plan: ScoringPlan, users: pd.DataFrame, logged: pd.DataFrame,
                      reward: PositionCtr | None = None) -> pd.DataFrame:
    """The target policy's probability of every logged placement of one run date, and its
    expected reward at each logged (user, slot).

    Args:
        plan: the target's ScoringPlan (built for the run date: its pool, policy, rules).
        users: the scoring rows of the logged users for that date (inputs.scoring_rows
            columns, or user_vector instead of the history with a VectorEncoder plan), one per user.
        logged: rows with user_id, slot (0-based) and item_id (product id), all of users in ``users``.
        reward: the reward model; None: q columns are 0.

    Returns:
        ``logged`` (same rows, same order) with target_propensity (float64 in [0, 1]: as
        :func:`recsys_spark.scoring.policies.serve` makes a propensity, exact where there is a
        closed form, else from the M = rules.propensity_samples lists and the exact exploration
        part where there is one; 1/0 for deterministic lists; slots at or past K: 0) and
        q_target (the mean of q over the M lists' items in that slot).

    Raises:
        ValueError: a logged user has no scoring row, or a user repeats.
    """
    reward = reward or PositionCtr(np.zeros(0), np.zeros(0, np.int64), np.zeros(0))
    rules, k = plan.rules, plan.rules.k
    index = pd.Index(users[schema.USER_ID].to_numpy(dtype=object))
    if not index.is_unique:
        raise ValueError("target_placements: users repeat in the scoring rows")
    row = index.get_indexer(pd.Index(logged[schema.USER_ID].to_numpy(dtype=object)))
    if (row < 0).any():
        raise ValueError(f"target_placements: {int((row < 0).sum())} logged rows of users without a scoring row, "
                         f"e.g. {logged[schema.USER_ID].to_numpy()[row < 0][0]}")
    slot = logged[schema.SLOT].to_numpy(dtype=np.int64)
    item = logged[schema.ITEM_ID].to_numpy(dtype=np.int64)
    within = slot < k
    at_slot = np.minimum(slot, k - 1)

    # Sample 0 (what the score stage would serve): decides deterministic lists outright.
    served = Recommender(plan).recommend(users)
    served_items = np.full((len(users), k), schema.EMPTY_SLOT, dtype=np.int64)
    served_row = index.get_indexer(pd.Index(served[schema.USER_ID].to_numpy(dtype=object)))
    served_items[served_row, served[schema.SLOT].to_numpy(dtype=np.int64)] = served[schema.ITEM_ID].to_numpy()
    probability = np.where(within, served_items[row, at_slot] == item, False).astype(np.float64)
    q_served = reward.predict(np.arange(k)[None, :], served_items)
    q_target = np.where(within, q_served[row, at_slot], 0.0)

    batch = UserBatch(pa.RecordBatch.from_pandas(users, preserve_index=False))
    model_users = np.flatnonzero(plan.encoder.known(batch))
    if len(model_users) and policies.explores(rules, plan.explore_pool):
        fallback = set(served.loc[served[schema.SOURCE] == SOURCE_FALLBACK, schema.USER_ID])
        if fallback & set(index[model_users]):
            raise ValueError("target_placements: a known user was served the fallback list")
        hits, q_mean = _monte_carlo(plan, batch, model_users, row, slot, item, reward)
        where = np.full(len(users), -1, dtype=np.int64)
        where[model_users] = np.arange(len(model_users))
        mine = within & (where[row] >= 0)
        probability[mine] = hits[where[row[mine]], slot[mine]]
        q_target[mine] = q_mean[where[row[mine]], slot[mine]]
    out = logged.copy()
    out[TARGET_PROPENSITY] = probability
    out[Q_TARGET] = q_target
    return out


def _monte_carlo(plan: ScoringPlan, batch: UserBatch, model_users: np.ndarray, row: np.ndarray, slot: np.ndarray,
                 item: np.ndarray, reward: PositionCtr) -> tuple[np.ndarray, np.ndarray]:
    """For the model users: (the target's probability of the logged item at each slot, mean q
    at each slot), float64 [len(model_users), K] each; the score stage's steps (Recommender's
    model block, then policies.serve's sampling and policies.placement_probability: exact
    parts where there is a closed form, counted hits elsewhere), block by block."""
    rules, space, k, samples = plan.rules, plan.model_items, plan.rules.k, plan.rules.propensity_samples
    vectors = torch.from_numpy(np.ascontiguousarray(space.vectors, dtype=np.float32))
    wanted = np.full((batch.batch.num_rows, k), _NO_ITEM, dtype=np.int64)
    within = slot < k
    index = space.index_of(item[within])
    wanted[row[within], slot[within]] = np.where(index >= 0, index, _NO_ITEM)
    slot_grid = np.arange(k)[None, None, :]
    probability = np.zeros((len(model_users), k))
    q_sum = np.zeros((len(model_users), k))
    for start in range(0, len(model_users), rules.block_size):
        rows = model_users[start : start + rules.block_size]
        part = batch.take(rows)
        scores = torch.empty(len(rows), len(space), dtype=torch.float32)
        excluded_rows, products = part.lists(EXCLUDE_PRODUCTS)
        excluded_items = space.index_of(products)
        excluded = (excluded_rows[excluded_items >= 0], excluded_items[excluded_items >= 0])
        with torch.no_grad():
            plan.encoder.score(part, vectors, excluded, scores)
            ranking.mask_pairs(scores, *excluded)
            if plan.policy.bonus is not None:
                scores.add_(torch.from_numpy(plan.policy.bonus)[None, :])
            keys = part.column(USER_KEY).to_numpy(zero_copy_only=False).astype(np.int64)
            top = topk.best_items(scores, k, rules.category_cap)
            block = slice(start, start + len(rows))
            hits, model_hits = np.zeros((len(rows), k)), np.zeros((len(rows), k))
            for lists in policies.sample_chunks(scores, top, keys, plan.explore_pool, space.categories, rules,
                                                plan.policy):
                chunk_hits, chunk_model_hits = policies.placement_hits(lists, wanted[rows])
                hits += chunk_hits
                model_hits += chunk_model_hits
                items = lists.items.reshape(len(rows), -1, k)
                products = np.where(items >= 0, space.product_ids[np.maximum(items, 0)], schema.EMPTY_SLOT)
                q_sum[block] += reward.predict(slot_grid, products).sum(axis=1)
            probability[block] = policies.placement_probability(scores, top, plan.explore_pool, rules, plan.policy,
                                                                wanted[rows], hits, model_hits)
    return probability, q_sum / samples


# ----------------------------------------------------------------------------- estimates


def list_ids(logged: pd.DataFrame) -> np.ndarray:
    """int64 [N]: the list (LIST_KEY group) of every row."""
    return logged.groupby(LIST_KEY, sort=True, dropna=False).ngroup().to_numpy(dtype=np.int64)


def estimate(logged: pd.DataFrame, options: ope.Options, clip: float | None = None) -> dict[str, Any]:
    """The target's clicks per list by IPS, SNIPS, DM and DR, and the logging policy's own.

    Args:
        logged: LOGGED_COLUMNS with target_propensity, q_logged and q_target (N rows).
        options: ope.Options (per is forced to "list"); its min ESS withholds an estimate.
        clip: the weight cap of IPS and DR, or None.

    Returns:
        {"lists", "exposures", "clicks", "logged": the logging policy's clicks per list (an
        ope.Estimate dict: IPS with w = 1, never withheld), "estimates": {estimator: Estimate
        dict}} (value/low/high None and a reason when withheld).
    """
    options = ope.Options(per="list", min_effective_sample_size=options.min_effective_sample_size,
                          samples=options.samples, seed=options.seed, confidence=options.confidence)
    kwargs = {name: getattr(options, name) for name in ("per", "min_effective_sample_size", "samples", "seed",
                                                        "confidence")}
    feedback = ope.LoggedFeedback(
        user=list_ids(logged),
        slot=logged[schema.SLOT].to_numpy(dtype=np.int64),
        item=logged[schema.ITEM_ID].to_numpy(dtype=np.int64),
        propensity=logged[schema.PROPENSITY].to_numpy(dtype=np.float64),
        reward=logged[schema.CLICKED].to_numpy(dtype=np.float64),
    )
    on_policy = ope.estimate_ips(feedback.with_target(feedback.propensity), **{**kwargs, "min_effective_sample_size": 0.0})
    target = feedback.with_target(logged[TARGET_PROPENSITY].to_numpy(dtype=np.float64))
    found = ope.estimate_all(target, logged[Q_LOGGED].to_numpy(dtype=np.float64),
                             logged[Q_TARGET].to_numpy(dtype=np.float64), clip=clip, **kwargs)
    return {
        "lists": on_policy.units,
        "exposures": feedback.num_exposures,
        "clicks": int(feedback.reward.sum()),
        "logged": on_policy.as_dict(),
        "estimates": {name: value.as_dict() for name, value in found.items()},
    }


def popularity_deciles(products: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int64 [P]: the popularity decile (1 = least, 10 = most popular) of each product, by its
    count (ties by product id); equal-sized groups of the catalogue."""
    order = np.lexsort((np.asarray(products), np.asarray(counts)))
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order)) * DECILES // max(len(order), 1) + 1
    return out


def exposure_shares(shown: np.ndarray, products: np.ndarray, deciles: np.ndarray) -> dict[str, Any]:
    """The share of exposures in each popularity decile.

    Args:
        shown: int [E] product ids shown (one per exposure).
        products, deciles: int [P] each, from :func:`popularity_deciles`.

    Returns:
        {"shares": [10 floats, decile 1..10, summing to 1 over the known items], "exposures": E,
        "unknown": exposures of products without a decile (not in the vocabulary)}.
    """
    shown = np.asarray(shown, dtype=np.int64)
    order = np.argsort(products)
    at = np.minimum(np.searchsorted(products[order], shown), max(len(products) - 1, 0))
    known = (len(products) > 0) & (products[order][at] == shown) if len(products) else np.zeros(len(shown), bool)
    counts = np.bincount(deciles[order][at][known] - 1, minlength=DECILES).astype(np.float64)
    total = counts.sum()
    return {"shares": (counts / total if total else counts).tolist(), "exposures": int(len(shown)),
            "unknown": int((~known).sum())}


# ----------------------------------------------------------------------------- Spark inputs


def scoring_rows_as_of(events: DataFrame, item_vocab: DataFrame, users: DataFrame, run_date: str, seed: int,
                       exclude_event_types: Sequence[str], max_seq_len: int) -> DataFrame:
    """The score stage's rows for ``users`` as they stood on ``run_date``.

    Args:
        events: clean events (schema.CLEAN_SCHEMA); only those before the date's midnight UTC count.
        item_vocab: the features' item vocabulary (item_idx, product_id).
        users: a user_id column: whose rows to build.
        run_date: ISO date (keys the exploration draws, as in the score stage).
        seed: score.seed. exclude_event_types: score.exclude_event_types. max_seq_len: L.

    Returns:
        inputs.scoring_rows columns, one row per user with an event before the date.
    """
    midnight = dt.datetime.combine(dt.date.fromisoformat(run_date), dt.time(), tzinfo=dt.timezone.utc)
    past = events.where(F.col(schema.EVENT_TIME) < F.lit(midnight)).join(
        F.broadcast(users.select(schema.USER_ID).distinct()), schema.USER_ID, "left_semi")
    steps = encode_items(add_gap_buckets(collapse_steps(past)), item_vocab.select(schema.ITEM_IDX, schema.PRODUCT_ID))
    histories = schema.conform(history_rows(steps, None, max_seq_len), schema.USER_HISTORY_SCHEMA)
    return inputs.scoring_rows(histories, inputs.user_context(past, exclude_event_types), seed, run_date)


def _plan_as_of(spark: SparkSession, cfg, events: DataFrame, bundle, item_vectors: np.ndarray,
                feature_items: pd.DataFrame, excluded: np.ndarray, run_date: str) -> ScoringPlan:
    """score.build_plan with the popularity (and Thompson's active users) as of the run date."""
    sc = cfg.score
    midnight = dt.datetime.combine(dt.date.fromisoformat(run_date), dt.time(), tzinfo=dt.timezone.utc)
    past = events.where(F.col(schema.EVENT_TIME) < F.lit(midnight))
    last = past.agg(F.unix_micros(F.max(schema.EVENT_TIME))).first()[0]
    last_event = dt.datetime.fromtimestamp(last / 1e6, tz=dt.timezone.utc) if last is not None else midnight
    since = last_event - dt.timedelta(days=sc.popular_days)
    stats = inputs.product_stats(past, since).toArrow().to_pandas(types_mapper=score.NULLABLE_INTS.get)
    counts, active = None, 0
    if sc.explore_policy == policies.THOMPSON:
        active = past.where(F.col(schema.EVENT_TIME) >= F.lit(since)).select(schema.USER_ID).distinct().count()
        if sc.feedback_counts_path:
            counts = score.read_feedback_counts(spark, sc.feedback_counts_path, cfg.clean.id_types[schema.PRODUCT_ID])
    return score.build_plan(bundle, item_vectors, feature_items, stats, excluded, sc, counts, active, run_date)


def evaluate_target(spark: SparkSession, cfg, bundle, feedback: DataFrame, vocab: pd.DataFrame,
                    model_version: str = "") -> dict[str, Any]:
    """The off-policy section of the evaluation report for the challenger under ``cfg.score``.

    Args:
        spark: the session.
        cfg: the run's Config (score settings, evaluate.ope_*, paths.clean, features).
        bundle: the challenger's ModelBundle.
        feedback: clean feedback (schema.CLEAN_FEEDBACK_SCHEMA), already restricted to the dates to use.
        vocab: the features' item vocabulary (product_id, item_idx, train_count).
        model_version: for the report.

    Returns:
        {"available": True, "run_dates", "target", "logged_policies", "lists_without_history",
        "lists", "exposures", "clicks", "logged", "estimates", "min_ess", "exposure_deciles",
        "history", "reward_model"}.
    """
    ec, sc = cfg.evaluate, cfg.score
    events = io.read_clean(spark, cfg.paths.resolve("clean"))
    feature_vocab = io.read_features(spark, cfg.paths.resolve("features"), "item_vocab")
    feature_items = vocab[[schema.ITEM_IDX, schema.PRODUCT_ID]]
    excluded = (score.read_exclusions(spark, sc.exclude_items_path, cfg.clean.id_types[schema.PRODUCT_ID])
                if sc.exclude_items_path else np.zeros(0, np.int64))
    with torch.no_grad():
        item_vectors = bundle.build_module().item_vectors().numpy()

    logged = feedback.select(*LOGGED_COLUMNS).toPandas()
    logged[schema.RUN_DATE] = pd.to_datetime(logged[schema.RUN_DATE]).dt.date
    reward = PositionCtr.fit(logged[schema.SLOT], logged[schema.ITEM_ID], logged[schema.CLICKED], ec.ope_prior_clicks)
    logged[Q_LOGGED] = reward.predict(logged[schema.SLOT].to_numpy(), logged[schema.ITEM_ID].to_numpy())
    parts, dropped, target_shown = [], 0, []
    for run_date in sorted(logged[schema.RUN_DATE].unique()):
        day = logged[logged[schema.RUN_DATE] == run_date].reset_index(drop=True)
        date = run_date.isoformat()
        users = spark.createDataFrame(pd.DataFrame({schema.USER_ID: day[schema.USER_ID].unique()}))
        rows = scoring_rows_as_of(events, feature_vocab, users, date, sc.seed, sc.exclude_event_types,
                                  cfg.featurize.max_seq_len).toArrow().to_pandas(types_mapper=score.NULLABLE_INTS.get)
        has_history = day[schema.USER_ID].isin(set(rows[schema.USER_ID]))
        dropped += int(day.loc[~has_history].groupby(LIST_KEY, dropna=False).ngroups)
        if not has_history.any():
            continue
        plan = _plan_as_of(spark, cfg, events, bundle, item_vectors, feature_items, excluded, date)
        placed = target_placements(plan, rows, day[has_history.to_numpy()].reset_index(drop=True), reward)
        parts.append(placed)
        target_shown.append(Recommender(plan).recommend(rows)[schema.ITEM_ID].to_numpy(dtype=np.int64))
        log.info("evaluate: off-policy %s: %d lists, %d exposures", date, placed.groupby(LIST_KEY).ngroups, len(placed))
    products = vocab[schema.PRODUCT_ID].to_numpy(dtype=np.int64)
    deciles = popularity_deciles(products, vocab[schema.TRAIN_COUNT].to_numpy(dtype=np.int64))
    out: dict[str, Any] = {
        "available": True,
        "run_dates": [d.isoformat() for d in sorted(logged[schema.RUN_DATE].unique())],
        "target": {"model_version": model_version, "policy": sc.explore_policy, "explore_share": sc.explore_share,
                   "propensity_samples": sc.propensity_samples, "top_k": sc.top_k, "seed": sc.seed},
        "logged_policies": sorted({f"{p}:{v}" for p, v in zip(logged[schema.POLICY], logged[schema.POLICY_VERSION])}),
        "lists_without_history": dropped,
        "min_ess": ec.ope_min_ess,
        "history": HISTORY_NOTE,
        "reward_model": REWARD_NOTE.format(s=ec.ope_prior_clicks),
        "exposure_deciles": {
            "logged": exposure_shares(logged[schema.ITEM_ID].to_numpy(), products, deciles),
            "target": exposure_shares(np.concatenate(target_shown) if target_shown else np.zeros(0, np.int64),
                                      products, deciles),
        },
    }
    if not parts:
        return {**out, "available": False, "note": f"no logged user had any event before their run date "
                                                   f"({dropped} lists): nothing to evaluate"}
    options = ope.Options(min_effective_sample_size=ec.ope_min_ess, samples=ec.bootstrap_samples,
                          seed=ec.bootstrap_seed, confidence=ec.confidence)
    return {**out, **estimate(pd.concat(parts, ignore_index=True), options)}


def no_feedback(path: str) -> dict[str, Any]:
    """The off-policy section when there is no feedback to evaluate on."""
    return {"available": False, "note": f"no clean feedback at {path} (paths.clean_feedback): off-policy "
                                        "evaluation skipped"}


def mlflow_metrics(section: dict[str, Any]) -> dict[str, float]:
    """``ope.<estimator>.clicks_per_list`` / ``.low`` / ``.high`` / ``.ess`` (withheld: ESS only),
    and ``ope.logged.clicks_per_list`` / ``.low`` / ``.high``."""
    if not section.get("available") or "estimates" not in section:
        return {}
    out: dict[str, float] = {}
    for name, found in [*section["estimates"].items(), ("logged", section["logged"])]:
        if found["value"] is not None:
            out[f"ope.{name}.clicks_per_list"] = found["value"]
            out[f"ope.{name}.low"] = found["low"]
            out[f"ope.{name}.high"] = found["high"]
        if name != "logged":
            out[f"ope.{name}.ess"] = found["ess"]
    out["ope.lists"] = float(section["lists"])
    return out
