"""The ``featurize`` stage: clean events to vocabularies, training windows and evaluation rows.

Reads ``paths.clean``; writes under ``paths.features`` the tables of schema.FEATURE_TABLES and
``metadata.json`` (the sizes a model is built with, the cutoffs and the counts).
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, tracking
from recsys_spark import schema as S
from recsys_spark.config import Config, FeaturizeConfig
from recsys_spark.errors import ConfigError
from recsys_spark.features.leakage import check_no_leakage
from recsys_spark.features.sequences import (
    WINDOW_NO,
    add_gap_buckets,
    collapse_steps,
    encode_items,
    eval_rows,
    history_rows,
    train_windows,
)
from recsys_spark.features.split import Cutoffs, compute_cutoffs, data_range
from recsys_spark.features.vocab import build_item_vocab

log = logging.getLogger(__name__)

_SHUFFLE_KEY = "shuffle_key"


def shuffle_for_training(windows: DataFrame, files: int, seed: int) -> DataFrame:
    """Spread training windows over ``files`` partitions in a seeded pseudo-random order.

    Round-robin repartitioning keeps every file non-empty (when there are enough rows), and
    sorting each by a hash of (user, window, seed) keeps a user's windows apart, so that a
    Petastorm row group is a mix of users. The order depends only on the data and the seed.
    """
    key = F.xxhash64(F.col(S.USER_ID), F.col(WINDOW_NO), F.lit(seed))
    return (
        windows.withColumn(_SHUFFLE_KEY, key)
        .repartition(files)
        .sortWithinPartitions(_SHUFFLE_KEY)
        .drop(_SHUFFLE_KEY)
    )


def check_config(fc: FeaturizeConfig) -> None:
    """Raise :class:`ConfigError` naming the first featurize setting below its minimum."""
    minimums = {
        "max_seq_len": 1, "min_item_count": 1, "validation_days": 1, "test_days": 1,
        "max_windows_per_user": 1, "price_buckets": 1, "train_files": 1, "row_group_mb": 1,
    }
    for key, minimum in minimums.items():
        if getattr(fc, key) < minimum:
            raise ConfigError(f"featurize.{key} must be >= {minimum}, got {getattr(fc, key)}")


def build_metadata(
    item_vocab: DataFrame, cutoffs: Cutoffs, price_buckets: int, max_seq_len: int, counts: dict[str, int]
) -> dict[str, Any]:
    """The contents of metadata.json: embedding table sizes, cutoffs (ISO) and counts."""
    sizes = item_vocab.agg(
        F.max(S.ITEM_IDX).alias(S.ITEM_IDX),
        F.max(S.CATEGORY_IDX).alias(S.CATEGORY_IDX),
        F.max(S.BRAND_IDX).alias(S.BRAND_IDX),
    ).first()

    def size(column: str, empty: int) -> int:
        return int(sizes[column] if sizes[column] is not None else empty) + 1

    return {
        "num_items": size(S.ITEM_IDX, S.OOV_INDEX),
        "num_categories": size(S.CATEGORY_IDX, 0),
        "num_brands": size(S.BRAND_IDX, 0),
        "num_price_buckets": price_buckets + 1,
        "num_event_codes": S.NUM_EVENT_CODES,
        "num_gap_buckets": S.NUM_GAP_BUCKETS,
        "max_seq_len": max_seq_len,
        **cutoffs.as_dict(),
        "counts": counts,
    }


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Featurize ``paths.clean`` into ``paths.features``.

    Returns:
        the paths written, the cutoffs and the counts of metadata.json.
    """
    import mlflow

    fc = cfg.featurize
    check_config(fc)
    clean_path = cfg.paths.resolve("clean")
    io.require_input(spark, clean_path, "paths.clean")
    root = cfg.paths.resolve("features")
    length = fc.max_seq_len

    with tracking.stage_run(cfg, "featurize"):
        events = io.read_clean(spark, clean_path)
        cutoffs = compute_cutoffs(*data_range(events), fc.validation_days, fc.test_days)
        log.info("featurize: cutoffs %s", cutoffs.as_dict())

        # Every table is built from the steps: collapse them once. The vocabulary is small and
        # broadcast into each table's plan; the checked frames are written as they were checked.
        raw_steps = add_gap_buckets(collapse_steps(events)).persist()
        item_vocab = build_item_vocab(raw_steps, events, cutoffs, fc.min_item_count, fc.price_buckets).persist()
        steps = encode_items(raw_steps, item_vocab)

        train = train_windows(steps, cutoffs.validation, length, fc.max_windows_per_user).persist()
        validation = eval_rows(steps, cutoffs.validation, cutoffs.test, length).persist()
        test = eval_rows(steps, cutoffs.test, None, length).persist()
        user_history = history_rows(steps, None, length)

        counts = check_no_leakage(
            train=train, item_vocab=item_vocab, steps=raw_steps, validation=validation, test=test, cutoffs=cutoffs
        )
        totals = raw_steps.agg(F.count("*"), F.countDistinct(S.USER_ID)).first()
        counts = {"steps": int(totals[0]), "users": int(totals[1]), **counts}

        paths = {name: io.feature_path(root, name) for name in S.FEATURE_TABLES}
        vocab_file = S.conform(item_vocab, S.ITEM_VOCAB_SCHEMA).repartition(1).sortWithinPartitions(S.ITEM_IDX)
        io.write_table(vocab_file, paths["item_vocab"])
        io.write_table(
            S.conform(shuffle_for_training(train, fc.train_files, fc.shuffle_seed), S.TRAIN_SCHEMA),
            paths["train"],
            fc.row_group_mb,
        )
        io.write_table(S.conform(validation, S.EVAL_SCHEMA), paths["validation"])
        io.write_table(S.conform(test, S.EVAL_SCHEMA), paths["test"])
        io.write_table(S.conform(user_history, S.USER_HISTORY_SCHEMA), paths["user_history"])

        metadata = build_metadata(item_vocab, cutoffs, fc.price_buckets, length, counts)
        metadata_path = io.feature_path(root, S.FEATURE_METADATA)
        io.write_json(spark, metadata_path, metadata)
        tracking.log_json(metadata, S.FEATURE_METADATA)
        mlflow.log_metrics(counts)

        for df in (raw_steps, item_vocab, train, validation, test):
            df.unpersist()

    log.info("featurize: wrote %s (%s)", root, counts)
    return {"features": root, **paths, "metadata": metadata_path, **cutoffs.as_dict(), **counts}
