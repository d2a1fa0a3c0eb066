"""``recsys run``: every stage in order, as nested MLflow runs under one pipeline run."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import mlflow
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from recsys_spark import io, tracking
from recsys_spark import schema
from recsys_spark.config import Config
from recsys_spark.stages import stage_function

log = logging.getLogger(__name__)

ORDER = ("generate", "clean", "featurize", "train", "evaluate", "score")
# Stages whose input is the features folder: their data range is the one it was built from.
READS_FEATURES = ("train", "evaluate", "score")
SUMMARY_ARTIFACT = "pipeline/summary.json"


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Run generate (only when ``paths.raw`` is absent), clean, featurize, train, evaluate, score.

    Sample data is generated only into an empty ``paths.raw``, so pointing the pipeline at a
    real clickstream never overwrites it. In MLflow, the parent run ``pipeline-<run date>``
    holds one nested run per stage, the seconds each stage took (metrics ``seconds.<stage>``),
    the data's date range (tags, also set on the stage runs that lack them) and every stage's
    summary (``pipeline/summary.json``); a failure tags it with ``failed_stage``.

    Returns:
        where the recommendations, the MLflow run and the registered model are, the primary
        metric of the model and of every baseline with its interval and users, and the paired
        differences of the model with each of them.
    """
    experiment_id = tracking.setup(cfg)
    run_date = tracking.resolve_run_date(cfg)
    summaries: dict[str, dict] = {}
    description = f"`recsys run`: the stages {', '.join(ORDER)}, one nested run each."
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"pipeline-{run_date}",
        tags=tracking.run_tags("pipeline", run_date, description),
    ) as parent:
        tracking.log_config(cfg)
        for stage in ORDER:
            run_stage(spark, cfg, stage, summaries)
        tag_data_ranges(parent.info.run_id, experiment_id, data_ranges(spark, cfg, summaries))
        warnings = {stage: summary["warning"] for stage, summary in summaries.items() if summary.get("warning")}
        for stage, warning in warnings.items():
            mlflow.set_tag(f"warning.{stage}", warning[:5000])
        tracking.log_json(json.loads(json.dumps(summaries, default=str)), SUMMARY_ARTIFACT)
    return result_of(cfg, summaries, warnings, f"{parent.info.run_id} (pipeline-{run_date})")


def run_stage(spark: SparkSession, cfg: Config, stage: str, summaries: dict[str, dict]) -> None:
    """Run ``stage`` inside the pipeline run, its summary into ``summaries``: the seconds it took
    as the metric ``seconds.<stage>``, a failure as the tag ``failed_stage``. generate runs only
    when ``paths.raw`` is absent."""
    if stage == "generate" and io.exists(spark, cfg.paths.resolve("raw")):
        log.info("paths.raw %s exists: using it, not generating sample data", cfg.paths.resolve("raw"))
        return
    log.info("=== stage %d/%d: %s ===", ORDER.index(stage) + 1, len(ORDER), stage)
    started = time.time()
    try:
        summaries[stage] = stage_function(stage)(spark, cfg)
    except BaseException:
        mlflow.set_tag("failed_stage", stage)
        raise
    mlflow.log_metric(f"seconds.{stage}", round(time.time() - started, 1))


def result_of(cfg: Config, summaries: dict[str, dict], warnings: dict[str, str], pipeline_run: str) -> dict[str, Any]:
    """What :func:`run` returns, from the stages' summaries and warnings and the pipeline run
    (``<run id> (pipeline-<run date>)``)."""
    evaluation = summaries["evaluate"]
    metric = cfg.evaluate.primary_metric
    score = summaries["score"]
    result = {
        "recommendations": f"{score.get('recommendations_path')} (run_date={score.get('run_date')})",
        "users_scored": score.get("users"),
        "scored_with": (f"models:/{cfg.mlflow.registered_model}@{cfg.score.model_alias} "
                        f"(version {score.get('model_version')})" if not cfg.score.model_version
                        else score.get("model")),
        "mlflow_tracking_uri": cfg.tracking_uri,
        "mlflow_experiment": cfg.mlflow.experiment,
        "mlflow_pipeline_run": pipeline_run,
        "trained": (f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias} "
                    f"(version {summaries['train'].get('version')})"),
        "gate": f"{evaluation.get('gate')} (champion: version {evaluation.get('champion_version')})",
        # Which ranker holds the champion alias now (the model, or a tuned baseline that beat it
        # on validation), and why.
        "serving": evaluation.get("serving"),
    }
    # The primary metric of the model and of every baseline, as ranked in the same run, with its
    # interval and users ("0.1858 [0.1710, 0.2010] (1,168 users)"), then the paired differences
    # of the model with each of them (model_vs_<other>, already such strings).
    for key, value in evaluation.items():
        if key.endswith(f".{metric}") and isinstance(value, float):
            result[key] = evaluation.get(f"{key}.interval", round(value, 4))
        elif key.endswith(f".{metric}") and isinstance(value, str):
            result[key] = value
    if "users_evaluated" in evaluation:
        result["users_evaluated"] = evaluation["users_evaluated"]
    result["evaluation_report"] = evaluation.get("html_report")
    # What a stage warned about (e.g. bot rules that flag most rows) is repeated last, where it is seen.
    result.update({f"WARNING ({stage})": warning for stage, warning in warnings.items()})
    result["open the MLflow UI"] = "make mlflow-ui, then http://127.0.0.1:5000"
    return result


def data_ranges(spark: SparkSession | None, cfg: Config, summaries: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """(first, last) event date each stage read, where known: clean from the dates it wrote,
    featurize and the stages after it from the features' metadata.json.

    Returns:
        stage -> (first, last) ISO dates, and "pipeline" -> the widest of them.
    """
    ranges: dict[str, tuple[str, str]] = {}
    dates = sorted(summaries.get("clean", {}).get("dates") or [])
    if dates:
        ranges["clean"] = (dates[0], dates[-1])
    metadata_path = io.feature_path(cfg.paths.resolve("features"), schema.FEATURE_METADATA)
    if io.exists(spark, metadata_path):
        features_range = tracking.data_range_of_features(io.read_json(spark, metadata_path))
        if features_range is not None:
            ranges.update({stage: features_range for stage in ("featurize", *READS_FEATURES)})
    if ranges:
        ranges["pipeline"] = (min(r[0] for r in ranges.values()), max(r[1] for r in ranges.values()))
    return ranges


def tag_data_ranges(parent_run_id: str, experiment_id: str, ranges: dict[str, tuple[str, str]]) -> None:
    """Tag the pipeline run, and each of its stage runs that has no data range of its own."""
    client = MlflowClient()
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=100
    )
    targets = [(parent_run_id, "pipeline", {})] + [(r.info.run_id, r.data.tags.get(tracking.TAG_STAGE), r.data.tags)
                                                   for r in children]
    for run_id, stage, tags in targets:
        if stage not in ranges or tracking.TAG_FIRST_DATE in tags:
            continue
        first, last = ranges[stage]
        client.set_tag(run_id, tracking.TAG_FIRST_DATE, first)
        client.set_tag(run_id, tracking.TAG_LAST_DATE, last)
