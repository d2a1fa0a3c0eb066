"""Incremental training (``train.mode=incremental``): start from the registered parent, grown to
this run's vocabulary, and train on the windows after the parent's last ones plus a replay of
older ones.

The train stage (runner.py) calls :func:`warm_start`, then :func:`select_windows`; every run
tags :func:`windows_end`, where its child will start.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, schema
from recsys_spark.config import Config
from recsys_spark.errors import InputError
from recsys_spark.features.layout import block_mb, plan_train_files, shuffle_for_training, window_bytes
from recsys_spark.models import growth, registry
from recsys_spark.models.bundle import LEGACY_MODEL_ARGS, ModelBundle
from recsys_spark.train import data
from recsys_spark.train.checkpoint import WARM_START, model_args_from, save_weights

log = logging.getLogger(__name__)

# Model arguments set by featurize's layout, not by the model's shape: a parent trained with
# other values cannot be continued on these features.
LAYOUT_ARGS = ("max_seq_len", "num_event_codes", "num_gap_buckets", "num_price_buckets")
# The run tag holding the last target time of the windows a model was trained on (ISO, UTC):
# its incremental child trains on the windows after it.
WINDOWS_END_TAG = "train.windows_end"
# Where train.mode=incremental writes the windows it selected, under paths.checkpoints.
INCREMENTAL_WINDOWS = "incremental_windows"
# The run artifact holding AdamW's moments after the last step (train.warm_optimizer).
MOMENTS_ARTIFACT = "training/optimizer_moments.pt"


def warm_start(cfg: Config, metadata: dict[str, Any], item_vocab) -> dict[str, str] | None:
    """For ``train.mode=incremental``: grow the parent model's weights to this run's vocabulary
    and write them where the training ranks read them (``<paths.checkpoints>/warm_start.pt``).

    Args:
        metadata: the features' metadata.json; item_vocab: their item_vocab (pandas).

    Returns:
        {"version", "run_id"} of the parent; None (with a log line) when there is no parent to
        start from or it has another shape (embedding_dim, num_layers, ...): train from scratch.

    Raises:
        InputError: the parent was trained on another featurize layout (sequence length, event
            or gap codes, price buckets), or the features' vocabulary does not extend the
            parent's: both name the key to change.
    """
    tc = cfg.train
    wanted = f"version {tc.parent_version}" if tc.parent_version else f"@{tc.parent_alias}"
    try:
        parent, version = registry.load_bundle(cfg, alias=tc.parent_alias, version=tc.parent_version or None)
    except InputError as exc:
        log.warning("train.mode=incremental: no parent model %s (%s); training from scratch (train.mode=full)",
                    wanted, exc)
        return None
    if not isinstance(parent, ModelBundle):  # a tuned baseline the gate served: nothing to warm-start from
        log.warning("train.mode=incremental: %s (version %s) is a tuned %s baseline, not a trained model; training "
                    "from scratch (train.mode=full)", wanted, version, parent.ranker_name)
        return None
    parent_args = {**LEGACY_MODEL_ARGS, **parent.model_args}
    child_args = model_args_from(metadata, tc)
    for key in LAYOUT_ARGS:
        if parent_args.get(key) != child_args[key]:
            raise InputError(
                f"train.mode=incremental: parent model version {version} was trained on features with {key}="
                f"{parent_args.get(key)}, these have {child_args[key]}: featurize with the parent's settings, "
                "or set train.mode=full")
    known = parent.item_vocab[[schema.ITEM_IDX, schema.PRODUCT_ID]].merge(
        item_vocab[[schema.ITEM_IDX, schema.PRODUCT_ID]], on=schema.PRODUCT_ID, how="left", suffixes=("", "_now"))
    moved = known[known[f"{schema.ITEM_IDX}_now"] != known[schema.ITEM_IDX]]
    if len(moved):
        raise InputError(
            f"train.mode=incremental: {len(moved)} of parent model version {version}'s {len(known)} products have "
            f"another item_idx (or none) in {cfg.paths.resolve('features')}: featurize with "
            "featurize.vocab_mode=extend and featurize.vocab_from=<the parent's features folder>")
    # The user-vector mode is chosen after training (train.user_vector): not part of the shape.
    parent_args["user_vector"] = child_args["user_vector"]
    reason = growth.incompatibility(parent_args, child_args)
    if reason is not None:
        log.warning("train.mode=incremental: parent model version %s cannot be grown (%s); training from scratch "
                    "(train.mode=full)", version, reason)
        return None
    categories = data.item_feature_arrays(item_vocab, child_args["num_items"])[schema.CATEGORY_IDX]
    grown = growth.grow_state(parent.state_dict, parent_args, child_args, categories, seed=tc.seed)
    run_id, run_tags = registry.version_run(cfg, version)
    end = run_tags.get(WINDOWS_END_TAG)
    if not end:
        raise InputError(f"train.mode=incremental: parent model version {version}'s run {run_id} has no "
                         f"{WINDOWS_END_TAG} tag (trained before it existed): train it again, or set train.mode=full")
    moments = parent_moments(run_id, grown) if tc.warm_optimizer else None
    save_weights(cfg.paths.resolve("checkpoints"), WARM_START,
                 {"model": grown, "model_args": child_args, "parent_version": version, "moments": moments})
    log.info("train.mode=incremental: starting from parent model version %s (%d items, now %d), %s", version,
             parent_args["num_items"], child_args["num_items"],
             "with its optimiser moments" if moments else "with fresh optimiser moments")
    return {"version": version, "run_id": run_id, "windows_end": end,
            "optimizer": "parent's moments" if moments else "fresh"}


def parent_moments(run_id: str, grown_state) -> dict[str, Any] | None:
    """The optimiser moments the parent's run logged (:data:`MOMENTS_ARTIFACT`), grown to the
    child's tables; None (with a log line) when the run logged none (train.warm_optimizer was off,
    or it predates them)."""
    with tempfile.TemporaryDirectory(prefix="recsys_moments_") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MOMENTS_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            log.warning("train.mode=incremental: the parent's run %s logged no %s (%s); its optimiser starts fresh",
                        run_id, MOMENTS_ARTIFACT, str(exc).splitlines()[0][:200])
            return None
        moments = torch.load(path, map_location="cpu", weights_only=True)
    return growth.grow_moments(moments, grown_state)


def windows_end(spark: SparkSession, features: str) -> str | None:
    """The last target time of the training windows (ISO, UTC), or None for features written
    before featurize recorded it."""
    table = spark.read.parquet(io.feature_path(features, "train"))
    if schema.TARGET_TIME not in table.columns:
        return None
    end = table.agg(F.max(schema.TARGET_TIME)).first()[0]
    return None if end is None else _utc(end).isoformat()


def select_windows(spark: SparkSession, cfg: Config, after: str) -> dict[str, Any]:
    """The windows an incremental run trains on, written as a features/train table under
    ``<paths.checkpoints>/incremental_windows``: every window whose last target is after
    ``after`` (the parent's last), and ``train.replay_windows`` of the others, drawn by a
    seeded hash of their content.

    Returns:
        {"path", "new", "replayed"}.

    Raises:
        InputError: the features lack target times (featurized before they were recorded), hold
            no window after the parent's. Fewer older windows than train.replay_windows replays
            them all (with a warning).
    """
    tc, fc = cfg.train, cfg.featurize
    features = cfg.paths.resolve("features")
    table = spark.read.parquet(io.feature_path(features, "train"))
    if schema.TARGET_TIME not in table.columns:
        raise InputError(f"train.mode=incremental: {features}/train has no {schema.TARGET_TIME} column "
                         "(featurized before it was recorded): run featurize again")
    cutoff = F.lit(dt.datetime.fromisoformat(after)).cast("timestamp")
    is_new = F.col(schema.TARGET_TIME) > cutoff
    counts = table.agg(F.count_if(is_new).alias("new"), F.count_if(~is_new).alias("old")).first()
    new, old = int(counts["new"]), int(counts["old"])
    if new == 0:
        raise InputError(f"train.mode=incremental: {features}/train holds no window after the parent's last "
                         f"target ({after}): nothing new to train on")
    # The older windows can shrink from one day to the next (featurize keeps each user's most
    # recent max_windows_per_user), so a count that fits today may not fit tomorrow: replay them all.
    replayed = min(tc.replay_windows, old)
    if replayed < tc.replay_windows:
        log.warning("train.replay_windows=%d exceeds the %d windows of the history before %s: replaying all of them",
                    tc.replay_windows, old, after)
    key = F.xxhash64(F.col(schema.ITEM_SEQ), F.col(schema.TARGET_TIME), F.lit(tc.seed))
    replay = table.where(~is_new).orderBy(key).limit(replayed)
    chosen = table.where(is_new).unionByName(replay)
    rows = new + replayed
    files = plan_train_files(rows, window_bytes(fc.max_seq_len), fc.row_group_mb, fc.train_files,
                             max(1, tc.num_proc))
    path = cfg.paths.resolve("checkpoints").rstrip("/") + "/" + INCREMENTAL_WINDOWS
    shuffled = shuffle_for_training(chosen, files, tc.seed, key_columns=(schema.ITEM_SEQ, schema.TARGET_TIME))
    io.write_table(schema.conform(shuffled, schema.TRAIN_TABLE_SCHEMA), path, block_mb(fc.row_group_mb))
    log.info("train.mode=incremental: %d new windows (after %s) and %d replayed of %d older, written to %s",
             new, after, replayed, old, path)
    return {"path": path, "new": new, "replayed": replayed}


def _utc(value: dt.datetime) -> dt.datetime:
    """A timestamp Spark returned (naive, in the session time zone, UTC here) as aware UTC."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
