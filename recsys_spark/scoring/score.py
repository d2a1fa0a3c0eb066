"""The ``score`` stage: top-K recommendations for every user from the registered champion.

Inputs: ``features/user_history`` (each user's latest behaviour), ``features/item_vocab``,
``paths.clean`` (purchases to exclude, the category a user browses, recent popularity) and
the model ``models:/<mlflow.registered_model>@<score.model_alias>`` (or
``score.model_version``) with the vocabulary it was trained with.

How: the driver builds one :class:`~recsys_spark.scoring.recommender.ScoringPlan` (the
model's bundle, its catalogue's item vectors computed once, the fallback and exploration
items, the exploration policy) and broadcasts it; ``mapInArrow`` tasks build the model once
each and score their users ``score.block_size`` at a time by matrix multiply and
``torch.topk``; never a users x items join. A registered version may be a tuned baseline the
gate served in the model's place (``score.ranker=auto``): the same plan, its scores from the
baseline's own ranker (:class:`~recsys_spark.scoring.recommender.RankerEncoder`), the same
exclusions, exploration and output. Every row carries its slot, its propensity under
the policy (:mod:`~recsys_spark.scoring.policies`) and the policy's name and version. Output:
schema.RECOMMENDATION_SCHEMA under ``paths.recommendations``, one partition per run_date;
re-running a date replaces exactly that date.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from recsys_spark import io, product_ids, tracking
from recsys_spark import schema
from recsys_spark.config import Config, ScoreConfig
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.models.bundle import BaselineBundle, Bundle, ranker_label
from recsys_spark.scoring import inputs, policies, recommender
from recsys_spark.scoring.recommender import ItemSpace, ListRules, ModelEncoder, RankerEncoder, ScoringPlan

log = logging.getLogger(__name__)

# What a scoring task yields: one row per user (schema.WIDE_SCHEMA), exploded in Spark.
WIDE_SPARK_SCHEMA = from_arrow_schema(schema.WIDE_SCHEMA)
# The exploded rows; policy, model and run date are added as constants (with_run_columns).
RANKED_SCHEMA = T.StructType([schema.RECOMMENDATION_SCHEMA[c] for c in (
    schema.USER_ID, schema.RANK, schema.SLOT, schema.ITEM_ID, schema.SCORE, schema.SOURCE, schema.PROPENSITY)])
FEEDBACK_COUNTS = (schema.EXPOSURES, schema.CLICKS)  # the count columns of score.feedback_counts_path


def run_date_of(sc: ScoreConfig) -> str:
    """The partition this run writes: ``score.run_date`` (checked by ScoreConfig), else today (UTC)."""
    return sc.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()


def read_exclusions(spark: SparkSession, path: str, id_type: str = schema.ID_INTEGER) -> np.ndarray:
    """Product ids never to recommend, from a CSV (header) or Parquet with a product_id column.

    Args:
        id_type: ``clean.id_types.product_id``: under string ids a value is the shop's id as
            text, turned into its key (product_ids.keys).

    Returns:
        int64 [n], sorted distinct (the keys under string ids).

    Raises:
        InputError: the path is missing or lacks product_id; DataQualityError: a value is no id.
    """
    key = "score.exclude_items_path"
    io.require_input(spark, path, key)
    is_csv = path.rstrip("/").lower().endswith((".csv", ".csv.gz"))
    df = spark.read.option("header", "true").csv(path) if is_csv else spark.read.parquet(path)
    if schema.PRODUCT_ID not in df.columns:
        raise InputError(f"{path} has no {schema.PRODUCT_ID} column (config key {key}); columns: {df.columns}")
    ids = df.select(F.col(schema.PRODUCT_ID).cast("string").alias("raw"),
                    product_ids.keys(F.col(schema.PRODUCT_ID), id_type).alias("id"))
    bad = ids.where(F.col("id").isNull())
    if not bad.isEmpty():
        example = bad.first()["raw"]
        kind = "empty" if product_ids.is_string(id_type) else "not integer ids"
        raise DataQualityError(
            f"{path}: {bad.count()} {schema.PRODUCT_ID} value(s) are {kind}, e.g. {example!r} ({key})")
    values = ids.select("id").distinct().toPandas()["id"].to_numpy(dtype=np.int64)
    return np.sort(values)


def read_feedback_counts(spark: SparkSession, path: str, id_type: str = schema.ID_INTEGER) -> pd.DataFrame:
    """Logged feedback per product, for Thompson sampling: Parquet with product_id, exposures, clicks.

    Args:
        id_type: ``clean.id_types.product_id``: under string ids product_id is the shop's id
            as text (featurize's feedback_counts), turned into its key (product_ids.keys).

    Returns:
        product_id (the key under string ids), exposures, clicks (int64), one row per product
        (rows of a product summed).

    Raises:
        InputError: the path is missing or lacks a column; DataQualityError: a null, negative or
        non-integer count, or more clicks than exposures.
    """
    key = "score.feedback_counts_path"
    io.require_input(spark, path, key)
    df = spark.read.parquet(path)
    missing = [c for c in (schema.PRODUCT_ID, *FEEDBACK_COUNTS) if c not in df.columns]
    if missing:
        raise InputError(f"{path} has no {', '.join(missing)} column (config key {key}); columns: {df.columns}")
    names = (schema.PRODUCT_ID, *FEEDBACK_COUNTS)
    typed = df.select(product_ids.keys(F.col(schema.PRODUCT_ID), id_type).alias(schema.PRODUCT_ID),
                      *[F.col(c).cast("long").alias(c) for c in FEEDBACK_COUNTS],
                      *[F.col(c).alias(f"raw_{c}") for c in names])
    wrong = (F.col("clicks") < 0) | (F.col("clicks") > F.col("exposures"))
    for c in names:
        wrong = wrong | F.col(c).isNull()
        if c != schema.PRODUCT_ID or not product_ids.is_string(id_type):
            wrong = wrong | (F.col(c) != F.col(f"raw_{c}"))  # not a whole number
    bad = typed.where(wrong)
    if not bad.isEmpty():
        row = bad.first()
        example = {c: row[f"raw_{c}"] for c in names}
        raise DataQualityError(f"{path}: {bad.count()} row(s) with a null or non-integer value, negative clicks or more "
                               f"clicks than exposures, e.g. {example} ({key})")
    sums = typed.groupBy(schema.PRODUCT_ID).agg(*[F.sum(c).alias(c) for c in FEEDBACK_COUNTS])
    return sums.toPandas().astype({c: np.int64 for c in names})


NULLABLE_INTS = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}


@dataclass(frozen=True)
class PlanInputs:
    """What :func:`build_plan` takes besides the model and the settings: small driver-side tables,
    the same for every model. The score stage and the service's real-time path
    (``serving/realtime.py``) read them with :func:`read_plan_inputs`, so both rank alike.

    Args:
        feature_vocab: the featurize run's item_vocab (item_idx, product_id).
        stats: inputs.PRODUCT_STATS_SCHEMA rows, nullable integers exact.
        excluded: int64 product ids never to recommend (score.exclude_items_path).
        feedback: thompson's :func:`read_feedback_counts` rows, or None.
        active_users: thompson's distinct users of the recent window, else 0.
    """

    feature_vocab: pd.DataFrame
    stats: pd.DataFrame
    excluded: np.ndarray
    feedback: pd.DataFrame | None = None
    active_users: int = 0


def read_plan_inputs(spark: SparkSession, cfg: Config, events: DataFrame, feature_vocab: DataFrame,
                     excluded: np.ndarray) -> PlanInputs:
    """The model-independent inputs of the plan (:class:`PlanInputs`), "recent" being the
    ``score.popular_days`` before the last clean event.

    Args:
        events: the clean events; feature_vocab: features/item_vocab; excluded: as read by
            :func:`read_exclusions` (or empty).

    Raises:
        InputError: ``paths.clean`` holds no events.
    """
    sc = cfg.score
    last_micros = events.agg(F.unix_micros(F.max(schema.EVENT_TIME))).first()[0]
    if last_micros is None:
        raise InputError(f"{cfg.paths.resolve('clean')} holds no events (config key paths.clean)")
    last_event = dt.datetime.fromtimestamp(last_micros / 1e6, tz=dt.timezone.utc)
    since = last_event - dt.timedelta(days=sc.popular_days)
    # Through Arrow with nullable integers: toPandas() turns a long column with nulls into
    # float64, which rounds category ids above 2^53.
    stats = inputs.product_stats(events, since).toArrow().to_pandas(types_mapper=NULLABLE_INTS.get)
    feedback, active_users = None, 0
    if sc.explore_policy == policies.THOMPSON:
        active_users = events.where(F.col(schema.EVENT_TIME) >= F.lit(since)).select(schema.USER_ID).distinct().count()
        if sc.feedback_counts_path:
            feedback = read_feedback_counts(spark, sc.feedback_counts_path, cfg.clean.id_types[schema.PRODUCT_ID])
    return PlanInputs(feature_vocab.select(schema.ITEM_IDX, schema.PRODUCT_ID).toPandas(), stats, excluded, feedback,
                      active_users)


def build_plan(
    bundle,
    item_vectors: np.ndarray,
    feature_vocab: pd.DataFrame,
    stats: pd.DataFrame,
    excluded: np.ndarray,
    sc: ScoreConfig,
    feedback: pd.DataFrame | None = None,
    active_users: int = 0,
    run_date: str | None = None,
) -> ScoringPlan:
    """Everything the tasks need, from small driver-side tables.

    Args:
        bundle: the registered bundle: a ModelBundle, or a tuned baseline's BaselineBundle
            (scored by its own ranker, see recommender.RankerEncoder).
        item_vectors: float32 [num_items, d], the model's vector of every item index
            (:func:`item_vectors_of`).
        feature_vocab: the featurize run's item_vocab (item_idx, product_id): histories use it.
        stats: inputs.PRODUCT_STATS_SCHEMA rows (product_id, category_id, recent/all users).
        excluded: int64 product ids never to recommend.
        sc: the score config.
        feedback: thompson: :func:`read_feedback_counts` rows, or None (priors only).
        active_users: thompson: distinct users in the recent window (the prior's denominator;
            at least the most recent users of one product is used).
        run_date: seeds thompson's posterior draws; None = :func:`run_date_of`.

    Returns:
        ScoringPlan: the model's catalogue (its vocabulary minus exclusions), the fallback
        catalogue (every product of paths.clean minus exclusions, by recent popularity, ties by
        all-time popularity), the exploration pool, the list rules and the policy.
    """
    category = stats[schema.CATEGORY_ID].astype("Int64")  # nullable and exact (ids lie above 2^53)
    present = category.notna().to_numpy()
    values = category.fillna(0).to_numpy(dtype=np.int64)
    categories = np.unique(values[present])
    stats_space = ItemSpace(stats[schema.PRODUCT_ID].to_numpy(dtype=np.int64), np.zeros(len(stats), dtype=np.int64))
    stat_codes = recommender.category_codes(values, present, categories)
    recent = stats[inputs.RECENT_USERS].to_numpy(dtype=np.float64)
    ever = stats[inputs.ALL_USERS].to_numpy(dtype=np.float64)

    vocab = bundle.item_vocab
    model_products = vocab[schema.PRODUCT_ID].to_numpy(dtype=np.int64)
    model_idx = vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    keep = ~np.isin(model_products, excluded)
    model_products, model_idx = model_products[keep], model_idx[keep]
    at = stats_space.index_of(model_products)
    model_items = ItemSpace(
        product_ids=model_products,
        categories=np.where(at >= 0, stat_codes[np.maximum(at, 0)], -1),
        vectors=np.ascontiguousarray(item_vectors[model_idx], dtype=np.float32),
    )
    # Under-exposed: the least recently met share of the catalogue (ties by product id).
    model_recent = np.where(at >= 0, recent[np.maximum(at, 0)], 0.0)
    pool_size = math.ceil(sc.explore_pool_share * len(model_items))
    explore_pool = np.lexsort((model_products, model_recent))[:pool_size].astype(np.int64)

    allowed = ~np.isin(stats_space.product_ids, excluded)
    popularity = recent + ever / (1.0 + (ever.max() if len(ever) else 0.0))
    fallback_items = ItemSpace(
        product_ids=stats_space.product_ids[allowed],
        categories=stat_codes[allowed],
        popularity=popularity[allowed].astype(np.float32),
    )
    remap = vocab_remap(feature_vocab, bundle.item_vocab)
    if isinstance(bundle, BaselineBundle):
        encoder = RankerEncoder(bundle.to_bytes(), remap, model_idx)
    else:
        encoder = ModelEncoder(bundle.to_bytes(), remap)
    rules = ListRules(sc.top_k, sc.block_size, sc.category_cap, sc.explore_share, sc.propensity_samples)
    policy = exploration_policy(sc, len(model_items), model_products[explore_pool], model_recent[explore_pool],
                                explore_pool, feedback, active_users, run_date or run_date_of(sc))
    return ScoringPlan(encoder, model_items, fallback_items, explore_pool, categories, rules, policy)


def exploration_policy(sc: ScoreConfig, catalogue: int, pool_products: np.ndarray, pool_recent: np.ndarray,
                       explore_pool: np.ndarray, feedback: pd.DataFrame | None, active_users: int,
                       run_date: str) -> policies.Policy:
    """``score.explore_policy`` over the exploration pool: boost's bonus, or thompson's draws.

    Args:
        catalogue: the items of the model's catalogue.
        pool_products, pool_recent: int64 / float64 [P], each pool item's product id and its
            recent users.
        explore_pool: int64 [P], the pool's positions in the model's catalogue.
        feedback, active_users: thompson's logged counts (or None) and recent users (see
            :func:`build_plan`).
        run_date: seeds thompson's posterior draws.

    Returns:
        policies.Policy.
    """
    policy = policies.Policy(sc.explore_policy)
    if sc.explore_policy == policies.BOOST:
        policy.bonus = policies.boost_bonus(catalogue, explore_pool, sc.boost_bonus)
    elif sc.explore_policy == policies.THOMPSON:
        exposures, clicks = np.zeros(len(explore_pool)), np.zeros(len(explore_pool))
        if feedback is not None and len(feedback):
            logged = ItemSpace(feedback[schema.PRODUCT_ID].to_numpy(dtype=np.int64), np.zeros(len(feedback), np.int64))
            at = logged.index_of(pool_products)
            for name, out in (("exposures", exposures), ("clicks", clicks)):
                out[:] = np.where(at >= 0, feedback[name].to_numpy(dtype=np.float64)[np.maximum(at, 0)], 0.0)
        alpha, beta = policies.thompson_posterior(pool_recent, active_users, sc.thompson_prior_strength,
                                                  exposures, clicks)
        width = policies.TRIES_PER_SLOT * sc.top_k  # as many tries as epsilon's
        policy.draws = policies.thompson_draws(explore_pool, alpha, beta, sc.thompson_draws, width, sc.seed, run_date)
    return policy


def item_vectors_of(bundle) -> np.ndarray:
    """float32 [num_items, d]: a model's item vectors; [num_items, 0] for a tuned baseline, which
    scores its items itself (recommender.RankerEncoder)."""
    if isinstance(bundle, BaselineBundle):
        return np.zeros((bundle.model_args["num_items"], 0), dtype=np.float32)
    with torch.no_grad():
        return bundle.build_module().item_vectors().numpy()


def vocab_remap(feature_vocab: pd.DataFrame, model_vocab: pd.DataFrame) -> np.ndarray:
    """The model's item index of every feature-table item index, joined on product_id.

    Returns:
        int64 [max feature item_idx + 1]: pad -> pad, OOV -> OOV, a product the model was not
        trained with -> OOV.
    """
    feature_idx = feature_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    size = max(schema.FIRST_ITEM_INDEX, int(feature_idx.max()) + 1 if len(feature_idx) else 0)
    remap = np.full(size, schema.OOV_INDEX, dtype=np.int64)
    remap[schema.PAD_INDEX] = schema.PAD_INDEX
    model = ItemSpace(model_vocab[schema.PRODUCT_ID].to_numpy(dtype=np.int64), np.zeros(len(model_vocab), np.int64))
    at = model.index_of(feature_vocab[schema.PRODUCT_ID].to_numpy(dtype=np.int64))
    model_idx = model_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    remap[feature_idx] = np.where(at >= 0, model_idx[np.maximum(at, 0)], schema.OOV_INDEX)
    return remap


def recommend(rows: DataFrame, plan: Broadcast) -> DataFrame:
    """Top-K lists of every user, computed inside Spark tasks (``mapInArrow``).

    Each task's Python worker builds the Recommender once and ranks ``block_size`` users at a
    time; a user's list leaves the task as one row of arrays, exploded here by Spark itself.

    Args:
        rows: inputs.scoring_rows() output (or, with a VectorEncoder plan, rows with
            user_id, user_vector, exclude_products, user_category, user_key).
        plan: a broadcast ScoringPlan.

    Returns:
        DataFrame of RANKED_SCHEMA (user_id, rank, slot = rank - 1, item_id, score, source,
        propensity).
    """

    def score_partition(batches):
        task = recommender.task_recommender(plan)
        for batch in batches:
            yield from task.blocks(batch)

    wide = rows.mapInArrow(score_partition, WIDE_SPARK_SCHEMA)
    lists = (schema.ITEM_IDS, schema.SCORES, schema.SOURCE_CODES, schema.PROPENSITIES)
    entry = F.posexplode(F.arrays_zip(*lists)).alias("position", "entry")
    sources = F.array(*[F.lit(s) for s in recommender.SOURCES])
    return wide.select(schema.USER_ID, entry).select(
        schema.USER_ID,
        (F.col("position") + 1).cast("int").alias(schema.RANK),
        F.col("position").cast("int").alias(schema.SLOT),
        F.col(f"entry.{schema.ITEM_IDS}").alias(schema.ITEM_ID),
        F.col(f"entry.{schema.SCORES}").alias(schema.SCORE),
        F.element_at(sources, F.col(f"entry.{schema.SOURCE_CODES}").cast("int") + 1).alias(schema.SOURCE),
        F.col(f"entry.{schema.PROPENSITIES}").alias(schema.PROPENSITY),
    )


def with_run_columns(ranked: DataFrame, model_name: str, model_version: str, run_date: str, policy: str,
                     policy_version: str) -> DataFrame:
    """Args: RANKED_SCHEMA rows; the constants to add. Returns: schema.RECOMMENDATION_SCHEMA columns."""
    constants = {
        schema.POLICY: F.lit(policy),
        schema.POLICY_VERSION: F.lit(policy_version),
        schema.MODEL_NAME: F.lit(model_name),
        schema.MODEL_VERSION: F.lit(model_version),
        schema.RUN_DATE: F.lit(run_date).cast(T.DateType()),
    }
    return ranked.select(*[constants.get(f.name, F.col(f.name)).alias(f.name) for f in schema.RECOMMENDATION_SCHEMA])


def count_written(written: DataFrame, users: int, k: int) -> dict[str, int | float]:
    """Counts of one written run date: users by source, rows, explore rows, users short of K,
    rows whose propensity is below 1 (random placements) and the smallest propensity.

    Raises:
        DataQualityError: rows for more users than were scored, more than K per user, or a
        propensity outside (0, 1].
    """
    propensity = F.col(schema.PROPENSITY)
    odd = written.where(propensity.isNull() | (propensity <= 0) | (propensity > 1) | F.isnan(propensity))
    if not odd.isEmpty():
        raise DataQualityError(f"score: {odd.count()} rows with a propensity outside (0, 1], e.g. {odd.first().asDict()}")
    per_user = written.groupBy(schema.USER_ID).agg(
        F.count(F.lit(1)).alias("n"),
        F.max((F.col(schema.SOURCE) == recommender.SOURCE_FALLBACK).cast("int")).alias("fallback"),
        F.sum((F.col(schema.SOURCE) == recommender.SOURCE_EXPLORE).cast("int")).alias("explore"),
        F.sum((propensity < 1).cast("int")).alias("random"),
        F.min(propensity).alias("least"),
    )
    totals = per_user.agg(
        F.count(F.lit(1)).alias("users"),
        F.coalesce(F.sum("n"), F.lit(0)).alias("rows"),
        F.coalesce(F.max("n"), F.lit(0)).alias("most"),
        F.coalesce(F.sum("fallback"), F.lit(0)).alias("fallback"),
        F.coalesce(F.sum("explore"), F.lit(0)).alias("explore"),
        F.coalesce(F.sum((F.col("n") < k).cast("int")), F.lit(0)).alias("short"),
        F.coalesce(F.sum("random"), F.lit(0)).alias("random"),
        F.coalesce(F.min("least"), F.lit(1.0)).alias("least"),
    ).first()
    if totals["users"] > users or totals["most"] > k:
        raise DataQualityError(
            f"score: {totals['rows']} rows for {totals['users']} users written from {users} users at top_k={k}: "
            f"features/user_history holds duplicate users"
        )
    unnamed = written.where(F.col(schema.ITEM_ID).isNull())
    if not unnamed.isEmpty():  # under string ids, a key without its original (product_ids.originals)
        raise DataQualityError(f"score: {unnamed.count()} recommended items have no product id in paths.product_ids: "
                               f"re-run clean for the dates the features were built from")
    if totals["users"] == 0:  # a run that writes nothing does not succeed
        raise DataQualityError(f"score: no recommendations written for any of the {users} users of "
                               f"features/user_history at top_k={k}: check the features and score.exclude_items_path")
    return {
        "users": users,
        "users_recommended": int(totals["users"]),
        f"users_{recommender.SOURCE_MODEL}": int(totals["users"] - totals["fallback"]),
        f"users_{recommender.SOURCE_FALLBACK}": int(totals["fallback"]),
        "users_short_of_k": int(totals["short"]),
        "rows": int(totals["rows"]),
        f"rows_{recommender.SOURCE_EXPLORE}": int(totals["explore"]),
        "rows_propensity_below_1": int(totals["random"]),
        "min_propensity": float(totals["least"]),
    }


@dataclass(frozen=True)
class StageInputs:
    """What the score stage reads before it loads the model.

    Args:
        histories: features/user_history; feature_vocab: features/item_vocab.
        events: the clean events (paths.clean).
        excluded: int64 product ids never to recommend (score.exclude_items_path; empty: none).
        originals: under string product ids, paths.product_ids (each key's id as the shop has
            it, product_ids.read_table), else None.
    """

    histories: DataFrame
    feature_vocab: DataFrame
    events: DataFrame
    excluded: np.ndarray
    originals: DataFrame | None


def read_inputs(spark: SparkSession, cfg: Config) -> StageInputs:
    """Read the score stage's inputs (:class:`StageInputs`).

    Raises:
        InputError: a missing input folder or column; DataQualityError: an excluded id that is none.
    """
    root = cfg.paths.resolve("features")
    histories = io.read_features(spark, root, "user_history")
    feature_vocab = io.read_features(spark, root, "item_vocab")
    clean_path = cfg.paths.resolve("clean")
    io.require_input(spark, clean_path, "paths.clean")
    events = io.read_clean(spark, clean_path)
    id_type = cfg.clean.id_types[schema.PRODUCT_ID]
    excluded = (read_exclusions(spark, cfg.score.exclude_items_path, id_type) if cfg.score.exclude_items_path
                else np.zeros(0, np.int64))
    # Under string product ids the items are keys inside; the output names them as the shop does.
    originals = (product_ids.read_table(spark, cfg.paths.resolve("product_ids"))
                 if product_ids.is_string(id_type) else None)
    return StageInputs(histories, feature_vocab, events, excluded, originals)


def load_ranker(cfg: Config, run_date: str) -> tuple[Bundle, str, str, str]:
    """The registered version scored with (``score.model_alias`` or ``score.model_version``).

    Returns:
        (its bundle, its version, its models:/ URI, its ranker's label, e.g. "EASE (tuned)").

    Raises:
        InputError: no such alias or version, or a tuned baseline under score.ranker=model.
    """
    # Here, not at the top: the registry brings mlflow (2 s), which stays out of the Spark
    # executors that import this module.
    from recsys_spark.models import registry

    sc = cfg.score
    registry.check_alias(cfg)
    bundle, version = registry.load_bundle(cfg, alias=sc.model_alias, version=sc.model_version or None)
    model_uri = f"models:/{cfg.mlflow.registered_model}/{version}"
    ranker = ranker_label(bundle.ranker_name)
    if sc.ranker == "model" and isinstance(bundle, BaselineBundle):
        raise InputError(
            f"{model_uri} ({f'@{sc.model_alias}' if not sc.model_version else 'score.model_version'}) is {ranker}, "
            f"which evaluate's gate served in place of the model, and score.ranker=model scores with the deep model "
            f"only: re-run `recsys evaluate` with score.ranker=model, or set score.model_version to a trained version"
        )
    log.info("score: %s (%s, %s), run_date %s", model_uri, f"@{sc.model_alias}" if not sc.model_version else "by version",
             ranker, run_date)
    return bundle, version, model_uri, ranker


def plan_of(spark: SparkSession, cfg: Config, bundle: Bundle, given: StageInputs, run_date: str) -> ScoringPlan:
    """The run date's :class:`ScoringPlan` of ``bundle``, its inputs read by :func:`read_plan_inputs`."""
    plan_inputs = read_plan_inputs(spark, cfg, given.events, given.feature_vocab, given.excluded)
    feature_items = plan_inputs.feature_vocab
    plan = build_plan(bundle, item_vectors_of(bundle), feature_items, plan_inputs.stats, given.excluded, cfg.score,
                      plan_inputs.feedback, plan_inputs.active_users, run_date)
    known = int((plan.encoder.remap >= schema.FIRST_ITEM_INDEX).sum())
    log.info("score: model catalogue %d items (%d products excluded), fallback catalogue %d products, "
             "exploration pool %d; the model knows %d of the %d items of features/item_vocab",
             len(plan.model_items), len(given.excluded), len(plan.fallback_items), len(plan.explore_pool), known,
             len(feature_items))
    return plan


def write_lists(spark: SparkSession, rows: DataFrame, plan: ScoringPlan, out: str, originals: DataFrame | None,
                run_columns: tuple[str, str, str, str, str]) -> None:
    """Rank ``rows`` with ``plan`` (broadcast for the write) and write the run date's partition.

    Args:
        rows: inputs.scoring_rows() output; out: paths.recommendations.
        originals: see :class:`StageInputs`.
        run_columns: model name, model version, run date, policy and policy version
            (:func:`with_run_columns`).
    """
    broadcast = spark.sparkContext.broadcast(plan)
    try:
        served = with_run_columns(recommend(rows, broadcast), *run_columns)
        io.write_partitioned(product_ids.originals(served, schema.ITEM_ID, originals), out, schema.RUN_DATE)
    finally:
        broadcast.destroy()


def count_run_date(spark: SparkSession, out: str, run_date: str, users: int, k: int) -> dict[str, int | float]:
    """:func:`count_written` of the run date's partition under ``out``, as written."""
    written = spark.read.parquet(out).where(F.col(schema.RUN_DATE) == F.lit(run_date).cast(T.DateType()))
    return count_written(written, users, k)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Score every user of ``features/user_history`` and write the run date's partition.

    Returns:
        recommendations_path, run_date, model (its models:/ URI), model_version, ranker ("the
        model", or the tuned baseline the gate served, e.g. "EASE (tuned)"), policy,
        policy_version, and the counts of :func:`count_written`.
    """
    sc = cfg.score
    run_date = run_date_of(sc)
    given = read_inputs(spark, cfg)
    bundle, version, model_uri, ranker = load_ranker(cfg, run_date)
    with tracking.stage_run(cfg, "score", run_date=run_date):
        tracking.log_results({}, {}, {"model_version": version, "registered_model": cfg.mlflow.registered_model,
                                      "ranker": bundle.ranker_name})
        plan = plan_of(spark, cfg, bundle, given, run_date)
        users = given.histories.count()
        context = inputs.user_context(given.events, sc.exclude_event_types)
        rows = inputs.scoring_rows(given.histories, context, sc.seed, run_date)
        out = cfg.paths.resolve("recommendations")
        policy_version = policies.policy_version(sc, version)
        write_lists(spark, rows, plan, out, given.originals,
                    (cfg.mlflow.registered_model, version, run_date, sc.explore_policy, policy_version))
        summary = count_run_date(spark, out, run_date, users, sc.top_k)
        summary.update({"model_catalogue": len(plan.model_items), "excluded_items": int(len(given.excluded))})
        tracking.log_results({f"score.{name}": value for name, value in summary.items()}, {},
                             {"policy": sc.explore_policy, "policy_version": policy_version})
    if summary["users_short_of_k"]:
        log.warning("score: %d users got fewer than %d items (exclusions or score.category_cap leave too few)",
                    summary["users_short_of_k"], sc.top_k)
    log.info("score: wrote %s/%s=%s: %s", out, schema.RUN_DATE, run_date, summary)
    return {"recommendations_path": out, "run_date": run_date, "model": model_uri, "model_version": version,
            "ranker": ranker, "policy": sc.explore_policy, "policy_version": policy_version, **summary}
