"""``recsys train``: launch the training loop, then log, register and alias the model."""

from __future__ import annotations

import json
import logging
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import io, tracking
from recsys_spark import schema as S
from recsys_spark.config import Config
from recsys_spark.errors import DataQualityError
from recsys_spark.models.bundle import ModelBundle
from recsys_spark.train.loop import metric_key, train_fn

log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Train on ``paths.features``, log the model as a pyfunc and register it with an alias.

    Returns:
        {"run_id", "model_uri", "version", "best_epoch", "val_ndcg_at_<K>", "examples_per_s"}.
    """
    import mlflow
    from mlflow import MlflowClient

    features = cfg.paths.resolve("features")
    io.read_json(spark, io.feature_path(features, S.FEATURE_METADATA))  # fails fast, by name
    item_vocab = io.read_table(
        spark, io.feature_path(features, "item_vocab"), S.ITEM_VOCAB_SCHEMA, "paths.features"
    ).toPandas()
    io.require_input(spark, io.feature_path(features, "train"), "paths.features")

    with tracking.stage_run(cfg, "train") as active:
        run_id = active.info.run_id
        results = launch(spark, cfg, run_id, cfg.tracking_uri)
        main = check_ranks(results)
        mlflow.set_tags({
            "horovod.size": str(len(results)),
            "horovod.rank_checksums": json.dumps([r["checksum"] for r in results]),
        })

        history = main["history"]
        best = history[main["best_epoch"] - 1]
        metric = metric_key("val_ndcg", cfg.train.eval_k)
        bundle = ModelBundle(
            model_args=main["model_args"],
            state_dict=main["state_dict"],
            item_vocab=item_vocab,
            config=cfg.to_dict(),
            metrics={"best_epoch": main["best_epoch"], metric: best[metric]},
        )
        tracking.log_json({"model_args": main["model_args"], "history": history,
                           "best_epoch": main["best_epoch"]}, "training/history.json")
        tracking.log_figure(training_curve(history, cfg.train.eval_k), "training/curve.png")

        from recsys_spark.models.pyfunc import log_model

        info = log_model(bundle, cfg.mlflow.registered_model, k=cfg.train.eval_k)
        version = str(info.registered_model_version)
        MlflowClient().set_registered_model_alias(cfg.mlflow.registered_model, cfg.mlflow.alias, version)
        log.info("registered %s version %s as @%s", cfg.mlflow.registered_model, version, cfg.mlflow.alias)

    return {
        "run_id": run_id,
        "model_uri": f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias}",
        "version": version,
        "best_epoch": main["best_epoch"],
        metric: round(best[metric], 5),
        "examples_per_s": round(history[-1]["examples_per_s"], 1),
    }


def launch(spark: SparkSession, cfg: Config, run_id: str | None, tracking_uri: str | None) -> list[dict[str, Any]]:
    """Run :func:`train_fn` with the configured launcher.

    "horovod_spark": ``train.num_proc`` Horovod processes on gloo, one per Spark task (so
    the cluster needs that many free task slots). "local": in this process, Horovod size 1.

    Returns:
        train_fn's results in rank order.
    """
    args = (cfg.to_dict(), run_id, tracking_uri)
    if cfg.train.launcher == "local":
        import horovod.torch as hvd
        import torch

        threads = torch.get_num_threads()
        try:
            return [train_fn(*args)]
        finally:
            hvd.shutdown()
            torch.set_num_threads(threads)

    import horovod.spark

    return horovod.spark.run(
        train_fn, args=args, num_proc=cfg.train.num_proc, use_mpi=False, use_gloo=True, verbose=1,
    )


def check_ranks(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's result, after checking that every rank ended with the same weights.

    Raises:
        DataQualityError: the ranks' weights differ (data-parallel training went out of step).
    """
    main = next((r for r in results if r.get("rank") == 0), None)
    if main is None or main.get("state_dict") is None:
        raise DataQualityError("training returned no result from rank 0")
    checksums = {r["checksum"] for r in results}
    if len(checksums) != 1:
        raise DataQualityError(f"the {len(results)} Horovod ranks ended with different weights")
    return main


def training_curve(history: list[dict[str, float]], k: int):
    """A two-panel matplotlib figure: train loss and validation NDCG@k / Recall@k per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="train loss (sampled softmax)", title="training loss")
    for key in (metric_key("val_ndcg", k), metric_key("val_recall", k)):
        right.plot(epochs, [h[key] for h in history], marker="o", label=key)
    right.set(xlabel="epoch", title="validation (full ranking)")
    right.legend()
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    plt.close(fig)
    return fig
