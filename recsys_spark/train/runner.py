"""``recsys train``: launch the training loop, then log, register and alias the model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from typing import Any

import mlflow
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from pyspark.sql import SparkSession

from recsys_spark import io, tracking
from recsys_spark.config import Config
from recsys_spark.models.bundle import ModelBundle
from recsys_spark.models.pyfunc import log_model
from recsys_spark.models.registry import describe_and_alias
from recsys_spark.train.incremental import MOMENTS_ARTIFACT, WINDOWS_END_TAG, select_windows, warm_start, windows_end
from recsys_spark.train.launch import check_ranks, launch
from recsys_spark.train.search import search, with_train_values
from recsys_spark.train.validation import metric_key

log = logging.getLogger(__name__)

# Run tags copied onto the registered version.
LINEAGE_TAGS = ("train.mode", "train.data_range", WINDOWS_END_TAG, "train.parent_version", "train.parent_run_id",
                "train.new_windows", "train.replayed_windows", "train.optimizer_start")


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Train on ``paths.features``, log the model as a pyfunc and register it with an alias.

    With ``search.trials > 0`` a hyper-parameter search (train/search.py) runs first, in this
    stage's MLflow run, and the model is trained with the best train values it found.

    Returns:
        {"run_id", "model_uri", "version", "best_evaluation", "best_step", "best_epoch", "val_ndcg_at_<K>", "examples_per_s", ...,
        and after a search "search_best": {"params", "val_ndcg_at_<K>", "trial", "trials"}}.
    """
    prepared = prepare(spark, cfg)
    cfg = prepared.cfg
    with tracking.stage_run(cfg, "train") as active:
        run_id = active.info.run_id
        mlflow.set_tags(prepared.tags)
        log_inputs(cfg.paths.resolve("features"), spark)
        found = None
        if cfg.search.trials:
            found, cfg = search_first(spark, cfg, run_id)
        results = launch(spark, cfg, run_id, cfg.tracking_uri)
        summary = finish(cfg, results, prepared.item_vocab, run_id)
        if found is not None:
            summary["search_best"] = {
                "params": found["best_params"], found["metric"]: round(found["best_value"], 5),
                "trial": found["best_trial"],
                "trials": ", ".join(f"{found[state]} {state}" for state in ("complete", "failed", "pruned")),
            }
        return summary


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the features decide before any training process starts."""

    cfg: Config  # as given, or with train.mode=full (no parent) / train.windows_path (incremental)
    item_vocab: pd.DataFrame
    tags: dict[str, str]  # the stage run's: data range, windows end, the parent's lineage


def prepare(spark: SparkSession, cfg: Config) -> Prepared:
    """Check the features, and for ``train.mode=incremental`` find the parent and write the windows
    to train on. ``recsys train`` and ``horovodrun`` (train/horovodrun.py) both start here.

    Raises:
        InputError: the features are missing or incomplete; no new window after the parent's.
    """
    features = cfg.paths.resolve("features")
    metadata = io.read_feature_metadata(spark, features)  # fails fast, by name
    item_vocab = io.read_features(spark, features, "item_vocab").toPandas()
    io.require_input(spark, io.feature_path(features, "train"), "paths.features")
    parent = None
    if cfg.train.mode == "incremental":
        parent = warm_start(cfg, metadata, item_vocab)
        if parent is None:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mode="full"))
        else:
            selected = select_windows(spark, cfg, parent["windows_end"])
            parent.update(selected)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, windows_path=selected["path"]))
    tags = {"train.data_range": " .. ".join(tracking.data_range_of_features(metadata) or ())}
    end = windows_end(spark, features)
    if end is not None:
        tags[WINDOWS_END_TAG] = end
    if parent is not None:
        tags.update({"train.parent_version": parent["version"], "train.parent_run_id": parent["run_id"],
                     "train.new_windows": str(parent["new"]), "train.replayed_windows": str(parent["replayed"]),
                     "train.optimizer_start": parent["optimizer"]})
    return Prepared(cfg, item_vocab, tags)


def search_first(spark: SparkSession, cfg: Config, run_id: str) -> tuple[dict[str, Any], Config]:
    """Run the hyper-parameter search inside the stage's run ``run_id``.

    Returns:
        (search's result, ``cfg`` with the best train values: the final training's config).
    """
    found = search(spark, cfg, run_id, cfg.tracking_uri)
    chosen = found["best_params"]
    log.info("search: training the model with trial %d's values (%s %.4f): %s", found["best_trial"],
             found["metric"], found["best_value"], ", ".join(f"train.{k}={v}" for k, v in chosen.items()))
    # The run's train.* params keep the values given (MLflow params cannot change); the tag,
    # the search.best.* params and the model's own config hold the values it was trained with.
    mlflow.set_tag("search.chosen", json.dumps(chosen))
    return found, with_train_values(cfg, chosen)


def finish(cfg: Config, results: list[dict[str, Any]], item_vocab, run_id: str) -> dict[str, Any]:
    """After training, inside the active MLflow run: check the ranks, log the history, the curve
    and the model (a pyfunc), register it and point the alias at it.

    Args:
        results: the training function's results (rank 0's at least).
        item_vocab: pandas rows of schema.ITEM_VOCAB_SCHEMA.

    Returns:
        the summary that :func:`run` returns.
    """
    main = check_ranks(results)
    tag_training(cfg, main, results)

    history = main["history"]
    best = history[main["best_evaluation"] - 1]
    at = {"best_evaluation": main["best_evaluation"], "best_step": best["step"], "best_epoch": best["epoch"]}
    metric = metric_key("val_ndcg", cfg.train.eval_k)
    recall = metric_key("val_recall", cfg.train.eval_k)
    model_args = dict(main["model_args"])
    if cfg.train.user_vector == "auto":
        # Chosen with the checkpoint, at every evaluation: the best (mode, step) on validation.
        chosen = main["user_vector"]
        by_mode = {key.rsplit("user_vector_", 1)[1]: value for key, value in best.items()
                   if key.startswith(f"{metric}.user_vector_")}
        log.info("train: user_vector=auto chose %s at step %d on validation (NDCG@%d %s)", chosen, best["step"],
                 cfg.train.eval_k, ", ".join(f"{mode} {value:.4f}" for mode, value in by_mode.items()))
        mlflow.set_tag("train.user_vector", chosen)
        model_args["user_vector"] = chosen
    bundle = ModelBundle(
        model_args=model_args,
        state_dict=main["state_dict"],
        item_vocab=item_vocab,
        config=cfg.to_dict(),
        metrics={**at, metric: best[metric], recall: best[recall]},
    )
    mlflow.log_metrics({f"best_{metric}": best[metric], f"best_{recall}": best[recall],
                        **{key: float(value) for key, value in at.items()}})
    tracking.log_json({"model_args": model_args, "history": history, **at}, "training/history.json")
    if main.get("optimizer_moments"):
        log_moments(main["optimizer_moments"])
    tracking.log_figure(training_curve(history, cfg.train.eval_k), "training/curve.png")

    info = log_model(bundle, cfg.mlflow.registered_model, k=cfg.train.eval_k)
    version = str(info.registered_model_version)
    description = (
        f"Two-tower sequential recommender (SASRec-style user tower), trained by run {run_id} with "
        f"launcher {cfg.train.launcher} on {main.get('size', len(results))} process(es); best evaluation "
        f"{main['best_evaluation']} of {len(history)} (step {best['step']} of {history[-1]['step']}, pass "
        f"{best['epoch']}): validation NDCG@{cfg.train.eval_k} {best[metric]:.4f}, "
        f"Recall@{cfg.train.eval_k} {best[recall]:.4f} (full ranking, seen items excluded)."
    )
    # The version carries its lineage too: the mode, the data it covers and, incremental, its parent.
    describe_and_alias(cfg, version, run_id, description, LINEAGE_TAGS)
    log.info("registered %s version %s as @%s", cfg.mlflow.registered_model, version, cfg.mlflow.alias)
    return {
        "run_id": run_id,
        "model_uri": f"models:/{cfg.mlflow.registered_model}@{cfg.mlflow.alias}",
        "version": version,
        **at,
        "user_vector": model_args["user_vector"],
        "steps": history[-1]["step"],
        "evaluations": len(history),
        "epochs_run": history[-1]["epoch"],
        metric: round(best[metric], 5),
        recall: round(best[recall], 5),
        "examples_per_s": round(history[-1]["examples_per_s"], 1),
    }


def tag_training(cfg: Config, main: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Tag the active run with how training went: launcher, mode, world size, every rank's weight
    checksum, why it stopped and where it resumed."""
    checksums = main.get("rank_checksums") or [r["checksum"] for r in results]
    mlflow.set_tags({
        "train.launcher": cfg.train.launcher,
        "train.mode": cfg.train.mode,
        "train.world_size": str(main.get("size", len(results))),
        "train.rank_checksums": json.dumps(checksums),
        "train.stopped_early": str(main.get("stopped_early", False)).lower(),
        "train.stop_reason": main.get("stop_reason") or "the pass cap train.epochs",
        "train.resumed_from_epoch": str(main.get("resumed_from", 0)),
    })


def log_moments(moments: dict[str, Any]) -> None:
    """Log AdamW's moments after the last step as :data:`MOMENTS_ARTIFACT` of the active run."""
    folder, name = MOMENTS_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="recsys_moments_") as tmp:
        path = os.path.join(tmp, name)
        torch.save(moments, path)
        mlflow.log_artifact(path, folder)


def log_inputs(features: str, spark: SparkSession | None = None) -> None:
    """Log the training and validation tables with ``mlflow.log_input`` (source path and digest).

    The digest covers the content, not the query plan: every Parquet file's name, size and
    row count, so a re-featurised table gets a new digest even under the same path. With a
    Spark session the schema and a row count are logged too.
    """
    for name, context in (("train", "training"), ("validation", "validation")):
        path = io.feature_path(features, name)
        digest, label = table_digest(path), f"features/{name}"
        if spark is not None:
            dataset = mlflow.data.from_spark(spark.read.parquet(path), path=path, name=label, digest=digest)
        else:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": local either way
                warnings.simplefilter("ignore", UserWarning)
                dataset = MetaDataset(source=resolve_dataset_source(path), name=label, digest=digest)
        mlflow.log_input(dataset, context=context)


def table_digest(path: str) -> str:
    """A short content digest of a Parquet table: sha256 over (file, size, rows) of each part file."""
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(path))
    selector = pafs.FileSelector(inner, recursive=True)
    digest = hashlib.sha256()
    for info in sorted(filesystem.get_file_info(selector), key=lambda i: i.path):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        with filesystem.open_input_file(info.path) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        digest.update(f"{info.path[len(inner):]}:{info.size}:{rows}\n".encode())
    return digest.hexdigest()[:16]


def training_curve(history: list[dict[str, float]], k: int):
    """A two-panel matplotlib figure: train loss and validation NDCG@k / Recall@k per evaluation,
    against the optimiser step."""
    # Here, not at the top: matplotlib.use("Agg") would switch the backend of any notebook that
    # imports this module, and matplotlib takes 1 s to import.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [h["step"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(steps, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="optimiser step", ylabel="train loss (cross-entropy)", title="training loss")
    for key in (metric_key("val_ndcg", k), metric_key("val_recall", k)):
        right.plot(steps, [h[key] for h in history], marker="o", label=key)
    right.set(xlabel="optimiser step", title="validation (full ranking)")
    right.legend()
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    plt.close(fig)
    return fig
