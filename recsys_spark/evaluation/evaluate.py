"""The ``evaluate`` stage: full-ranking metrics of the registered model against popularity.

Every user of ``features/test`` with at least one target is ranked against the whole
catalogue (seen items excluded) by each ranker, inside Spark tasks; per-user metrics are then
averaged in Spark. Metric definitions: :mod:`recsys_spark.evaluation.metrics`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, tracking
from recsys_spark import schema as S
from recsys_spark.config import Config
from recsys_spark.errors import ConfigError, InputError
from recsys_spark.evaluation.metrics import batch_metrics, metric_names
from recsys_spark.evaluation.ranking import ModelRanker, PopularityRanker, Ranker, int_arrays, vocab_column

log = logging.getLogger(__name__)

# Columns of the per-user metrics table (metric columns are named as metric_names(ks)).
RANKER = "ranker"
NUM_TARGETS = "num_targets"
TOP_ITEMS = "top_items"
USERS = "users"
REPORT_FILE = "evaluation.json"
PLOT_FILE = "evaluation.png"


def coverage_names(ks: Sequence[int]) -> list[str]:
    return [f"coverage@{k}" for k in sorted(ks)]


def mlflow_key(name: str) -> str:
    """MLflow metric and tag names may not hold '@': ``model.ndcg@10`` -> ``model.ndcg_at_10``."""
    return name.replace("@", "_at_")


def per_user_schema(ks: Sequence[int]) -> T.StructType:
    return T.StructType(
        [
            T.StructField(RANKER, T.StringType(), False),
            T.StructField(S.USER_ID, T.StringType(), False),
            T.StructField(NUM_TARGETS, T.IntegerType(), False),
            *[T.StructField(name, T.DoubleType(), False) for name in metric_names(ks)],
            T.StructField(TOP_ITEMS, T.ArrayType(T.IntegerType(), False), False),
        ]
    )


def per_user_metrics(
    rows: DataFrame, rankers: Mapping[str, Callable[[], Ranker]], ks: Sequence[int], block_size: int
) -> DataFrame:
    """Rank every row's catalogue with every ranker and measure it.

    Args:
        rows: schema.EVAL_SCHEMA rows, each with at least one target item.
        rankers: name -> a function that builds the ranker; called once per Spark task, so
            it should read large state (weights, item vectors) from broadcast variables.
        ks: cut-offs; the top max(ks) items are ranked.
        block_size: users scored at once inside a task.

    Returns:
        one row per (ranker, user): ranker, user_id, num_targets, every metric of
        metric_names(ks) and top_items (the max(ks) ranked item indices, -1 in empty slots).
    """
    k_max = max(ks)
    names = metric_names(ks)

    def measure(batches):
        built = {name: make() for name, make in rankers.items()}
        for batch in batches:
            if batch.empty:
                continue
            targets = int_arrays(batch[S.TARGET_ITEMS])
            for name, ranker in built.items():
                top, _ = ranker.recommend(batch, k_max, exclude_seen=True, block_size=block_size)
                values = batch_metrics(top, targets, ks)
                yield pd.DataFrame(
                    {
                        RANKER: name,
                        S.USER_ID: batch[S.USER_ID].to_numpy(),
                        NUM_TARGETS: np.fromiter((len(t) for t in targets), dtype=np.int32, count=len(targets)),
                        **{metric: values[metric] for metric in names},
                        TOP_ITEMS: top.tolist(),
                    }
                )

    return rows.mapInPandas(measure, per_user_schema(ks))


def summarise(per_user: DataFrame, ks: Sequence[int], catalogue_size: int) -> dict[str, dict[str, float]]:
    """Average the per-user metrics of each ranker and measure its catalogue coverage.

    Args:
        per_user: the output of :func:`per_user_metrics` (read twice: persist it first).
        ks: the cut-offs it was computed with.
        catalogue_size: items that could be recommended (the vocabulary's size).

    Returns:
        {ranker: {"users": n, metric: mean over users, "coverage@K": distinct items in any
        top K / catalogue_size}}.
    """
    names = metric_names(ks)
    means = per_user.groupBy(RANKER).agg(
        F.count(F.lit(1)).alias(USERS), *[F.avg(F.col(f"`{name}`")).alias(name) for name in names]
    )
    position, item = "position", "item"
    ranked = per_user.select(RANKER, F.posexplode(TOP_ITEMS).alias(position, item)).filter(
        F.col(item) >= S.FIRST_ITEM_INDEX
    )
    distinct = ranked.groupBy(RANKER).agg(
        *[F.countDistinct(F.when(F.col(position) < k, F.col(item))).alias(f"distinct@{k}") for k in sorted(ks)]
    )
    out: dict[str, dict[str, float]] = {}
    for row in means.collect():
        out[row[RANKER]] = {USERS: int(row[USERS]), **{name: float(row[name]) for name in names}}
        out[row[RANKER]].update({name: 0.0 for name in coverage_names(ks)})
    for row in distinct.collect():
        for k, name in zip(sorted(ks), coverage_names(ks)):
            out[row[RANKER]][name] = row[f"distinct@{k}"] / catalogue_size if catalogue_size else 0.0
    return out


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Evaluate the model of ``evaluate.model_alias`` and the popularity baseline on ``test``.

    Logs ``<ranker>.<metric>`` metrics ('@' written '_at_'), the JSON report and a plot to
    the stage's MLflow run, writes the report to ``<paths.reports>/evaluation.json`` and tags
    the evaluated model version with its primary metric.

    Returns:
        model_version, "<ranker>.<primary metric>" for both rankers, users, report (its path).
    """
    import mlflow
    from mlflow import MlflowClient

    from recsys_spark.models import registry

    ec = cfg.evaluate
    ks = sorted(set(ec.ks))
    check_config(ks, ec.primary_metric, ec.block_size)
    root = cfg.paths.resolve("features")
    metadata_path = io.feature_path(root, S.FEATURE_METADATA)
    io.require_input(spark, metadata_path, "paths.features")
    num_items = int(io.read_json(spark, metadata_path)["num_items"])
    vocab = io.read_table(spark, io.feature_path(root, "item_vocab"), S.ITEM_VOCAB_SCHEMA, "paths.features").toPandas()
    test = io.read_table(spark, io.feature_path(root, "test"), S.EVAL_SCHEMA, "paths.features")

    counts, present = vocab_column(vocab, S.PRETEST_COUNT, num_items)
    bundle, version = registry.load_bundle(cfg, alias=ec.model_alias)
    check_same_vocabulary(bundle, vocab, num_items, version)
    with torch.no_grad():
        item_vecs = bundle.build_module().item_vectors().numpy()
    context = spark.sparkContext
    bundle_bc, vectors_bc = context.broadcast(bundle.to_bytes()), context.broadcast(item_vecs)
    rankers = {
        ModelRanker.name: functools.partial(_model_ranker, bundle_bc, vectors_bc),
        PopularityRanker.name: functools.partial(_popularity_ranker, counts, present),
    }

    with tracking.stage_run(cfg, "evaluate") as active:
        users_total = test.count()
        per_user = per_user_metrics(test.filter(F.size(S.TARGET_ITEMS) > 0), rankers, ks, ec.block_size)
        per_user = per_user.persist()
        results = summarise(per_user, ks, catalogue_size=len(vocab))
        per_user.unpersist()
        if not results:
            raise InputError(f"{io.feature_path(root, 'test')} holds no user with a target item")
        report = {
            "registered_model": cfg.mlflow.registered_model,
            "model_alias": ec.model_alias,
            "model_version": version,
            "ks": ks,
            "primary_metric": ec.primary_metric,
            "users": users_total,
            "users_with_targets": results[ModelRanker.name][USERS],
            "catalogue_size": len(vocab),
            "rankers": results,
            "mlflow_run_id": active.info.run_id,
        }
        mlflow.log_metrics(
            {
                mlflow_key(f"{ranker}.{name}"): value
                for ranker, values in results.items()
                for name, value in values.items()
            }
        )
        tracking.log_json(report, REPORT_FILE)
        tracking.log_figure(plot(results, ks), PLOT_FILE)
        report_path = cfg.paths.resolve("reports").rstrip("/") + "/" + REPORT_FILE
        io.write_json(spark, report_path, report)
        client = MlflowClient()
        primary = ec.primary_metric
        for ranker in (ModelRanker.name, PopularityRanker.name):
            key = mlflow_key(f"eval.{primary}" if ranker == ModelRanker.name else f"eval.{ranker}.{primary}")
            client.set_model_version_tag(cfg.mlflow.registered_model, version, key, f"{results[ranker][primary]:.6f}")
        client.set_model_version_tag(cfg.mlflow.registered_model, version, "eval.run_id", active.info.run_id)
    log.info("evaluate: model version %s on %d users\n%s", version, report["users_with_targets"], table(results, ks))
    return {
        "model_version": version,
        f"model.{primary}": results[ModelRanker.name][primary],
        f"popularity.{primary}": results[PopularityRanker.name][primary],
        "users": report["users_with_targets"],
        "report": report_path,
    }


def check_config(ks: Sequence[int], primary_metric: str, block_size: int) -> None:
    """Raise ConfigError on empty or non-positive ks, an unknown primary metric, a bad block size."""
    if not ks or min(ks) < 1:
        raise ConfigError(f"evaluate.ks: expected positive cut-offs, got {list(ks)}")
    known = metric_names(ks) + coverage_names(ks)
    if primary_metric not in known:
        raise ConfigError(f"evaluate.primary_metric: {primary_metric!r} is not one of {', '.join(known)}")
    if block_size < 1:
        raise ConfigError(f"evaluate.block_size: expected a positive integer, got {block_size}")


def check_same_vocabulary(bundle, vocab: pd.DataFrame, num_items: int, version: str) -> None:
    """Raise InputError unless the model was trained on the item vocabulary of ``paths.features``."""
    features_ids = np.full(num_items, -1, dtype=np.int64)
    features_ids[vocab[S.ITEM_IDX].to_numpy(dtype=np.int64)] = vocab[S.PRODUCT_ID].to_numpy()
    if bundle.model_args["num_items"] != num_items or not np.array_equal(bundle.product_ids(), features_ids):
        raise InputError(
            f"model version {version} was trained on another item vocabulary than paths.features "
            f"({bundle.model_args['num_items']} vs {num_items} item indices); re-run `recsys train`"
        )


def _model_ranker(bundle_bc, vectors_bc) -> ModelRanker:
    from recsys_spark.models.bundle import ModelBundle

    bundle = ModelBundle.from_bytes(bundle_bc.value)
    return ModelRanker.from_bundle(bundle, torch.from_numpy(vectors_bc.value))


def _popularity_ranker(counts: np.ndarray, present: np.ndarray) -> PopularityRanker:
    return PopularityRanker(counts, torch.from_numpy(present))


def table(results: Mapping[str, Mapping[str, float]], ks: Sequence[int]) -> str:
    """The headline numbers of every ranker as a small fixed-width text table."""
    columns = metric_names(ks) + coverage_names(ks)
    lines = [f"{'ranker':<12}" + "".join(f"{c:>13}" for c in columns)]
    for ranker, values in results.items():
        lines.append(f"{ranker:<12}" + "".join(f"{values[c]:>13.4f}" for c in columns))
    return "\n".join(lines)


def plot(results: Mapping[str, Mapping[str, float]], ks: Sequence[int]):
    """Recall@K and NDCG@K against K, one line per ranker. Returns: a matplotlib Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    for axis, (metric, title) in zip(fig.subplots(1, 2), (("recall", "Recall@K"), ("ndcg", "NDCG@K"))):
        for ranker, values in results.items():
            axis.plot(ks, [values[f"{metric}@{k}"] for k in ks], marker="o", label=ranker)
        axis.set(xlabel="K", ylabel=title, title=f"{title}, full ranking, test users")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    return fig
