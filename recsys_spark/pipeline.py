"""``recsys run``: every stage in order, as nested MLflow runs under one pipeline run."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import io, tracking
from recsys_spark.config import Config

log = logging.getLogger(__name__)

ORDER = ("generate", "clean", "featurize", "train", "evaluate", "score")


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Run generate (only when ``paths.raw`` is absent), clean, featurize, train, evaluate, score.

    Sample data is generated only into an empty ``paths.raw``, so pointing the pipeline at a
    real clickstream never overwrites it.

    Returns:
        where the recommendations, the MLflow run and the registered model are, and the
        headline metric of the model and the popularity baseline.
    """
    import mlflow

    from recsys_spark.cli import stage_function

    experiment_id = tracking.setup(cfg)
    run_date = cfg.score.run_date or dt.date.today().isoformat()
    summaries: dict[str, dict] = {}
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"pipeline-{run_date}",
        tags={"stage": "pipeline", "run_date": run_date, "git_commit": tracking.git_commit()},
    ) as parent:
        tracking.log_config(cfg)
        for stage in ORDER:
            if stage == "generate" and io.exists(spark, cfg.paths.resolve("raw")):
                log.info("paths.raw %s exists: using it, not generating sample data", cfg.paths.resolve("raw"))
                continue
            log.info("=== stage %s ===", stage)
            summaries[stage] = stage_function(stage)(spark, cfg)

    train = summaries["train"]
    evaluation = summaries["evaluate"]
    metric = cfg.evaluate.primary_metric
    return {
        "recommendations": summaries["score"].get("recommendations_path"),
        "users_scored": summaries["score"].get("users"),
        "mlflow_tracking_uri": cfg.tracking_uri,
        "mlflow_pipeline_run": parent.info.run_id,
        "mlflow_experiment": cfg.mlflow.experiment,
        "registered_model": f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias} (version {train.get('version')})",
        f"model.{metric}": evaluation.get(f"model.{metric}"),
        f"popularity.{metric}": evaluation.get(f"popularity.{metric}"),
        "open the MLflow UI": "make mlflow-ui, then http://127.0.0.1:5000",
    }
