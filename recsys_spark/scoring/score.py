"""The ``score`` stage: top-K recommendations for every user from the registered champion.

Inputs: ``features/user_history`` (each user's latest behaviour), ``features/item_vocab``,
``paths.clean`` (purchases to exclude, the category a user browses, recent popularity) and
the model ``models:/<mlflow.registered_model>@<score.model_alias>`` (or
``score.model_version``) with the vocabulary it was trained with.

How: the driver builds one :class:`~recsys_spark.scoring.recommender.ScoringPlan` (the
model's bundle, its catalogue's item vectors computed once, the fallback and exploration
items) and broadcasts it; ``mapInArrow`` tasks build the model once each and score their
users ``score.block_size`` at a time by matrix multiply and ``torch.topk``; never a users x
items join. Output: schema.RECOMMENDATION_SCHEMA under ``paths.recommendations``, one
partition per run_date; re-running a date replaces exactly that date.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, tracking
from recsys_spark import schema
from recsys_spark.config import Config, ScoreConfig
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.scoring import inputs
from recsys_spark.scoring.recommender import (
    ITEM_IDS,
    SCORES,
    SOURCE_CODES,
    SOURCE_EXPLORE,
    SOURCE_FALLBACK,
    SOURCE_MODEL,
    SOURCES,
    ItemSpace,
    ListRules,
    ModelEncoder,
    ScoringPlan,
    category_codes,
    task_recommender,
)

log = logging.getLogger(__name__)

# What a scoring task yields: one row per user (recommender.WIDE_SCHEMA), exploded in Spark.
WIDE_SPARK_SCHEMA = T.StructType([
    T.StructField(schema.USER_ID, T.StringType()),
    T.StructField(ITEM_IDS, T.ArrayType(T.LongType())),
    T.StructField(SCORES, T.ArrayType(T.FloatType())),
    T.StructField(SOURCE_CODES, T.ArrayType(T.ByteType())),
])
# The exploded rows; model name, version and run date are added as constants.
RANKED_SCHEMA = T.StructType([schema.RECOMMENDATION_SCHEMA[c] for c in (schema.USER_ID, schema.RANK, schema.ITEM_ID, schema.SCORE, schema.SOURCE)])


def run_date_of(sc: ScoreConfig) -> str:
    """The partition this run writes: ``score.run_date`` (checked by ScoreConfig), else today (UTC)."""
    return sc.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()


def check_alias(cfg: Config) -> None:
    """Fail in one line when ``score.model_alias`` names no version of the registered model.

    A missing registered model is left to :func:`registry.load_bundle` (it says to train first).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    sc = cfg.score
    if sc.model_version > 0:
        return
    mlflow.set_tracking_uri(cfg.tracking_uri)
    name = cfg.mlflow.registered_model
    try:
        aliases = dict(MlflowClient().get_registered_model(name).aliases or {})
    except MlflowException:
        return
    if sc.model_alias not in aliases:
        held = ", ".join(f"@{a} = version {v}" for a, v in sorted(aliases.items())) or "no aliases"
        raise InputError(
            f"registered model {name!r} has no alias {sc.model_alias!r} ({held}): run `recsys evaluate` to promote "
            f"the challenger, or score it as it is with score.model_alias=challenger (or score.model_version=N)"
        )


def read_exclusions(spark: SparkSession, path: str) -> np.ndarray:
    """Product ids never to recommend, from a CSV (header) or Parquet with a product_id column.

    Returns:
        int64 [n], sorted distinct.

    Raises:
        InputError: the path is missing or lacks product_id; DataQualityError: a value is no id.
    """
    key = "score.exclude_items_path"
    io.require_input(spark, path, key)
    is_csv = path.rstrip("/").lower().endswith((".csv", ".csv.gz"))
    df = spark.read.option("header", "true").csv(path) if is_csv else spark.read.parquet(path)
    if schema.PRODUCT_ID not in df.columns:
        raise InputError(f"{path} has no {schema.PRODUCT_ID} column (config key {key}); columns: {df.columns}")
    ids = df.select(F.col(schema.PRODUCT_ID).cast("string").alias("raw"), F.col(schema.PRODUCT_ID).cast("long").alias("id"))
    bad = ids.where(F.col("id").isNull())
    if not bad.isEmpty():
        example = bad.first()["raw"]
        raise DataQualityError(f"{path}: {bad.count()} {schema.PRODUCT_ID} value(s) are not integer ids, e.g. {example!r} ({key})")
    values = ids.select("id").distinct().toPandas()["id"].to_numpy(dtype=np.int64)
    return np.sort(values)


NULLABLE_INTS = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}


def build_plan(
    bundle,
    item_vectors: np.ndarray,
    feature_vocab: pd.DataFrame,
    stats: pd.DataFrame,
    excluded: np.ndarray,
    sc: ScoreConfig,
) -> ScoringPlan:
    """Everything the tasks need, from small driver-side tables.

    Args:
        bundle: the registered ModelBundle.
        item_vectors: float32 [num_items, d], the model's vector of every item index.
        feature_vocab: the featurize run's item_vocab (item_idx, product_id): histories use it.
        stats: inputs.PRODUCT_STATS_SCHEMA rows (product_id, category_id, recent/all users).
        excluded: int64 product ids never to recommend.
        sc: the score config.

    Returns:
        ScoringPlan: the model's catalogue (its vocabulary minus exclusions), the fallback
        catalogue (every product of paths.clean minus exclusions, by recent popularity, ties by
        all-time popularity), the exploration pool and the list rules.
    """
    category = stats[schema.CATEGORY_ID].astype("Int64")  # nullable and exact (ids lie above 2^53)
    present = category.notna().to_numpy()
    values = category.fillna(0).to_numpy(dtype=np.int64)
    categories = np.unique(values[present])
    stats_space = ItemSpace(stats[schema.PRODUCT_ID].to_numpy(dtype=np.int64), np.zeros(len(stats), dtype=np.int64))
    stat_codes = category_codes(values, present, categories)
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
    encoder = ModelEncoder(bundle.to_bytes(), vocab_remap(feature_vocab, bundle.item_vocab))
    rules = ListRules(sc.top_k, sc.block_size, sc.category_cap, sc.explore_share)
    return ScoringPlan(encoder, model_items, fallback_items, explore_pool, categories, rules)


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
        DataFrame of RANKED_SCHEMA (user_id, rank, item_id, score, source).
    """

    def score_partition(batches):
        recommender = task_recommender(plan)
        for batch in batches:
            yield from recommender.blocks(batch)

    wide = rows.mapInArrow(score_partition, WIDE_SPARK_SCHEMA)
    entry = F.posexplode(F.arrays_zip(ITEM_IDS, SCORES, SOURCE_CODES)).alias("position", "entry")
    sources = F.array(*[F.lit(s) for s in SOURCES])
    return wide.select(schema.USER_ID, entry).select(
        schema.USER_ID,
        (F.col("position") + 1).cast("int").alias(schema.RANK),
        F.col(f"entry.{ITEM_IDS}").alias(schema.ITEM_ID),
        F.col(f"entry.{SCORES}").alias(schema.SCORE),
        F.element_at(sources, F.col(f"entry.{SOURCE_CODES}").cast("int") + 1).alias(schema.SOURCE),
    )


def with_run_columns(ranked: DataFrame, model_name: str, model_version: str, run_date: str) -> DataFrame:
    """Args: RANKED_SCHEMA rows; the constants to add. Returns: schema.RECOMMENDATION_SCHEMA columns."""
    constants = {
        schema.MODEL_NAME: F.lit(model_name),
        schema.MODEL_VERSION: F.lit(model_version),
        schema.RUN_DATE: F.lit(run_date).cast(T.DateType()),
    }
    return ranked.select(*[constants.get(f.name, F.col(f.name)).alias(f.name) for f in schema.RECOMMENDATION_SCHEMA])


def count_written(written: DataFrame, users: int, k: int) -> dict[str, int]:
    """Counts of one written run date: users by source, rows, explore rows, users short of K.

    Raises:
        DataQualityError: rows for more users than were scored, or more than K per user.
    """
    per_user = written.groupBy(schema.USER_ID).agg(
        F.count(F.lit(1)).alias("n"),
        F.max((F.col(schema.SOURCE) == SOURCE_FALLBACK).cast("int")).alias("fallback"),
        F.sum((F.col(schema.SOURCE) == SOURCE_EXPLORE).cast("int")).alias("explore"),
    )
    totals = per_user.agg(
        F.count(F.lit(1)).alias("users"),
        F.coalesce(F.sum("n"), F.lit(0)).alias("rows"),
        F.coalesce(F.max("n"), F.lit(0)).alias("most"),
        F.coalesce(F.sum("fallback"), F.lit(0)).alias("fallback"),
        F.coalesce(F.sum("explore"), F.lit(0)).alias("explore"),
        F.coalesce(F.sum((F.col("n") < k).cast("int")), F.lit(0)).alias("short"),
    ).first()
    if totals["users"] > users or totals["most"] > k:
        raise DataQualityError(
            f"score: {totals['rows']} rows for {totals['users']} users written from {users} users at top_k={k}: "
            f"features/user_history holds duplicate users"
        )
    return {
        "users": users,
        "users_recommended": int(totals["users"]),
        f"users_{SOURCE_MODEL}": int(totals["users"] - totals["fallback"]),
        f"users_{SOURCE_FALLBACK}": int(totals["fallback"]),
        "users_short_of_k": int(totals["short"]),
        "rows": int(totals["rows"]),
        f"rows_{SOURCE_EXPLORE}": int(totals["explore"]),
    }


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Score every user of ``features/user_history`` and write the run date's partition.

    Returns:
        recommendations_path, run_date, model (its models:/ URI), model_version, and the
        counts of :func:`summarize`.
    """
    import mlflow

    from recsys_spark.models import registry

    sc = cfg.score
    run_date = run_date_of(sc)
    root = cfg.paths.resolve("features")
    histories = io.read_features(spark, root, "user_history")
    feature_vocab = io.read_features(spark, root, "item_vocab")
    clean_path = cfg.paths.resolve("clean")
    io.require_input(spark, clean_path, "paths.clean")
    events = io.read_clean(spark, clean_path)
    excluded = read_exclusions(spark, sc.exclude_items_path) if sc.exclude_items_path else np.zeros(0, np.int64)

    check_alias(cfg)
    bundle, version = registry.load_bundle(cfg, alias=sc.model_alias, version=sc.model_version or None)
    model_uri = f"models:/{cfg.mlflow.registered_model}/{version}"
    log.info("score: %s (%s), run_date %s", model_uri, f"@{sc.model_alias}" if not sc.model_version else "by version",
             run_date)

    with tracking.stage_run(cfg, "score", run_date=run_date):
        mlflow.set_tags({"model_version": version, "registered_model": cfg.mlflow.registered_model})
        last_micros = events.agg(F.unix_micros(F.max(schema.EVENT_TIME))).first()[0]
        if last_micros is None:
            raise InputError(f"{clean_path} holds no events (config key paths.clean)")
        last_event = dt.datetime.fromtimestamp(last_micros / 1e6, tz=dt.timezone.utc)
        since = last_event - dt.timedelta(days=sc.popular_days)
        # Through Arrow with nullable integers: toPandas() turns a long column with nulls into
        # float64, which rounds category ids above 2^53.
        stats = inputs.product_stats(events, since).toArrow().to_pandas(types_mapper=NULLABLE_INTS.get)
        with torch.no_grad():
            item_vectors = bundle.build_module().item_vectors().numpy()
        feature_items = feature_vocab.select(schema.ITEM_IDX, schema.PRODUCT_ID).toPandas()
        plan = build_plan(bundle, item_vectors, feature_items, stats, excluded, sc)
        known = int((plan.encoder.remap >= schema.FIRST_ITEM_INDEX).sum())
        log.info("score: model catalogue %d items (%d products excluded), fallback catalogue %d products, "
                 "exploration pool %d; the model knows %d of the %d items of features/item_vocab",
                 len(plan.model_items), len(excluded), len(plan.fallback_items), len(plan.explore_pool), known,
                 len(feature_items))

        users = histories.count()
        rows = inputs.scoring_rows(histories, inputs.user_context(events, sc.exclude_event_types), sc.seed, run_date)
        broadcast = spark.sparkContext.broadcast(plan)
        try:
            ranked = recommend(rows, broadcast)
            out = cfg.paths.resolve("recommendations")
            io.write_partitioned(with_run_columns(ranked, cfg.mlflow.registered_model, version, run_date), out,
                                 schema.RUN_DATE)
        finally:
            broadcast.destroy()
        written = spark.read.parquet(out).where(F.col(schema.RUN_DATE) == F.lit(run_date).cast(T.DateType()))
        summary = count_written(written, users, sc.top_k)
        summary.update({"model_catalogue": len(plan.model_items), "excluded_items": int(len(excluded))})
        mlflow.log_metrics({f"score.{name}": value for name, value in summary.items()})
    if summary["users_short_of_k"]:
        log.warning("score: %d users got fewer than %d items (exclusions or score.category_cap leave too few)",
                    summary["users_short_of_k"], sc.top_k)
    log.info("score: wrote %s/%s=%s: %s", out, schema.RUN_DATE, run_date, summary)
    return {"recommendations_path": out, "run_date": run_date, "model": model_uri, "model_version": version,
            **summary}
