"""The ``score`` stage: top-K recommendations for every user from a registered model.

Each user's latest history (``features/user_history``) is ranked against the whole catalogue
inside Spark tasks, ``score.block_size`` users at a time; the model and its item vectors are
built once on the driver and broadcast. Users whose history holds no known item get the most
popular items instead (source ``fallback``). Output: schema.RECOMMENDATION_SCHEMA, one
partition per run_date, replaced when a date is scored again.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, tracking
from recsys_spark import schema as S
from recsys_spark.config import Config
from recsys_spark.errors import ConfigError, DataQualityError
from recsys_spark.evaluation.ranking import EMPTY_SLOT, ModelRanker, PopularityRanker, Ranker, int_matrix

log = logging.getLogger(__name__)

SOURCE_MODEL = "model"
SOURCE_FALLBACK = "fallback"

# What the Spark tasks produce; model name, version and run date are added as constants.
RANKED_SCHEMA = T.StructType([S.RECOMMENDATION_SCHEMA[c] for c in (S.USER_ID, S.RANK, S.ITEM_ID, S.SCORE, S.SOURCE)])


def has_history(batch: pd.DataFrame) -> np.ndarray:
    """Args: B history rows. Returns: bool [B], True where hist_items holds a known item (>= 2)."""
    if batch.empty:
        return np.zeros(0, dtype=bool)
    return (int_matrix(batch[S.HIST_ITEMS]) >= S.FIRST_ITEM_INDEX).any(axis=1)


@dataclass
class Recommender:
    """The model for users with a known history, a fallback ranker for the rest.

    Args:
        model: ranks users whose history holds a known item.
        fallback: ranks the others (e.g. by popularity).
        product_ids: int64 [N], the product_id of every item index (-1 where none).
    """

    model: Ranker
    fallback: Ranker
    product_ids: np.ndarray

    def recommend(self, batch: pd.DataFrame, k: int, exclude_seen: bool, block_size: int) -> pd.DataFrame:
        """Top-K of every user of ``batch``, long format.

        Args:
            batch: B rows of schema.USER_HISTORY_SCHEMA.
            k, exclude_seen, block_size: as in :meth:`Ranker.recommend`.

        Returns:
            columns of RANKED_SCHEMA; min(k, eligible items) rows per user, rank 1 = best.
        """
        known = has_history(batch)
        parts = [self._long(np.zeros(0, dtype=object), np.zeros((0, k), np.int64), np.zeros((0, k)), SOURCE_MODEL)]
        for ranker, rows, source in ((self.model, known, SOURCE_MODEL), (self.fallback, ~known, SOURCE_FALLBACK)):
            users = batch[rows]
            if users.empty:
                continue
            top, scores = ranker.recommend(users, k, exclude_seen, block_size)
            parts.append(self._long(users[S.USER_ID].to_numpy(), top, scores, source))
        return pd.concat(parts, ignore_index=True)

    def _long(self, user_ids: np.ndarray, top: np.ndarray, scores: np.ndarray, source: str) -> pd.DataFrame:
        # Empty slots (-1) only ever trail the filled ones, so the kept ranks stay 1..n.
        filled = top != EMPTY_SLOT
        ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1, dtype=np.int32), top.shape)
        return pd.DataFrame(
            {
                S.USER_ID: np.repeat(user_ids, top.shape[1])[filled.ravel()],
                S.RANK: ranks[filled],
                S.ITEM_ID: self.product_ids[top[filled]],
                S.SCORE: scores[filled].astype(np.float32),
                S.SOURCE: source,
            }
        )


def recommend(
    histories: DataFrame, build: Callable[[], Recommender], k: int, exclude_seen: bool, block_size: int
) -> DataFrame:
    """Top-K recommendations of every user, computed inside Spark tasks.

    Args:
        histories: rows of schema.USER_HISTORY_SCHEMA.
        build: makes the Recommender; called once per task, so it should read the model
            from broadcast variables.
        k: items per user.
        exclude_seen: never recommend a user's seen_items.
        block_size: users scored at once inside a task.

    Returns:
        DataFrame of RANKED_SCHEMA (user_id, rank, item_id, score, source).
    """

    def score(batches):
        recommender = build()
        for batch in batches:
            if not batch.empty:
                yield recommender.recommend(batch, k, exclude_seen, block_size)

    return histories.mapInPandas(score, RANKED_SCHEMA)


def with_run_columns(ranked: DataFrame, model_name: str, model_version: str, run_date: str) -> DataFrame:
    """Args: RANKED_SCHEMA rows; the constants to add. Returns: schema.RECOMMENDATION_SCHEMA columns."""
    constants = {
        S.MODEL_NAME: F.lit(model_name),
        S.MODEL_VERSION: F.lit(model_version),
        S.RUN_DATE: F.lit(run_date).cast(T.DateType()),
    }
    return ranked.select(*[constants.get(f.name, F.col(f.name)).alias(f.name) for f in S.RECOMMENDATION_SCHEMA])


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Score every user of ``features/user_history`` with the registered model.

    The model is ``score.model_version`` when > 0, else the version behind ``score.model_alias``.

    Returns:
        recommendations_path, run_date, model_version, users, rows, fallback_users.
    """
    import mlflow

    from recsys_spark.models import registry

    sc = cfg.score
    if sc.top_k < 1 or sc.block_size < 1:
        raise ConfigError(f"score.top_k ({sc.top_k}) and score.block_size ({sc.block_size}) must be positive")
    run_date = sc.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        dt.date.fromisoformat(run_date)
    except ValueError:
        raise ConfigError(f"score.run_date: {run_date!r} is not an ISO date (YYYY-MM-DD)") from None
    root = cfg.paths.resolve("features")
    histories = io.read_table(spark, io.feature_path(root, "user_history"), S.USER_HISTORY_SCHEMA, "paths.features")
    bundle, version = registry.load_bundle(
        cfg, alias=sc.model_alias, version=sc.model_version if sc.model_version > 0 else None
    )
    with torch.no_grad():
        item_vecs = bundle.build_module().item_vectors().numpy()
    context = spark.sparkContext
    build = functools.partial(_recommender, context.broadcast(bundle.to_bytes()), context.broadcast(item_vecs))
    out = cfg.paths.resolve("recommendations")

    with tracking.stage_run(cfg, "score", run_date=run_date):
        mlflow.set_tags({"model_version": version, "registered_model": cfg.mlflow.registered_model})
        users = histories.count()
        ranked = recommend(histories, build, sc.top_k, sc.exclude_seen, sc.block_size)
        io.write_partitioned(with_run_columns(ranked, cfg.mlflow.registered_model, version, run_date), out, S.RUN_DATE)
        written = spark.read.parquet(out).filter(F.col(S.RUN_DATE) == F.lit(run_date).cast(T.DateType()))
        counts = written.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(S.USER_ID).alias("users"),
            F.countDistinct(F.when(F.col(S.SOURCE) == SOURCE_FALLBACK, F.col(S.USER_ID))).alias("fallback"),
        ).first()
        if counts["users"] > users or counts["rows"] > sc.top_k * counts["users"]:
            raise DataQualityError(
                f"score: {counts['rows']} rows for {counts['users']} users written from {users} users "
                f"at top_k={sc.top_k}: user_history holds duplicate users"
            )
        summary = {
            "users": users,
            "users_recommended": int(counts["users"]),
            "rows": int(counts["rows"]),
            "fallback_users": int(counts["fallback"]),
        }
        mlflow.log_metrics({f"score.{name}": value for name, value in summary.items()})
    log.info("score: model version %s, %s -> %s (run_date %s)", version, summary, out, run_date)
    return {"recommendations_path": out, "run_date": run_date, "model_version": version, **summary}


def _recommender(bundle_bc, vectors_bc) -> Recommender:
    from recsys_spark.models.bundle import ModelBundle

    bundle = ModelBundle.from_bytes(bundle_bc.value)
    num_items = int(bundle.model_args["num_items"])
    return Recommender(
        model=ModelRanker.from_bundle(bundle, torch.from_numpy(vectors_bc.value)),
        fallback=PopularityRanker.from_vocab(bundle.item_vocab, num_items),
        product_ids=bundle.product_ids(),
    )
