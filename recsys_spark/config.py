"""Typed, layered configuration.

Layers, later wins:
  1. the dataclass defaults below (the built-in defaults; ``conf/base.yaml`` lists them all),
  2. a YAML profile given with ``--config`` (``extends:`` chains to another file),
  3. dotted ``section.key=value`` overrides from the command line (``section.key.entry=value``
     sets one entry of a mapping).

Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
Secrets never live here: the pseudonymisation key and tracking credentials are read from
the environment (see ``CleanConfig.pseudonym_key_env``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml

from recsys_spark import schema
from recsys_spark.errors import ConfigError
from recsys_spark.metrics import coverage_names, list_metric_names, metric_names

# Every range and consistency check of a section lives in its dataclass's __post_init__, so that a
# mistake in any stage's settings stops `recsys <any stage>` before Spark starts.
EVENT_TYPES = tuple(schema.EVENT_TYPES)
# clean.id_types: the id columns and what each may be (schema.ID_INTEGER / ID_STRING).
ID_COLUMNS = (schema.USER_ID, schema.PRODUCT_ID)
ID_TYPES = (schema.ID_INTEGER, schema.ID_STRING)
BASELINES = ("popularity", "cooccurrence", "als", "ease")
COOCCURRENCE_SIMILARITIES = ("count", "cosine")
# The clean events' columns (schema.CLEAN_SCHEMA), for featurize.dq_max_null_rate.
CLEAN_COLUMNS = tuple(f.name for f in schema.CLEAN_SCHEMA.fields)
# Contract fields the generator may write empty (generate.empty_columns).
EMPTYABLE_COLUMNS = (schema.BRAND, schema.PRICE, schema.CATEGORY_ID, schema.CATEGORY_CODE)
# How a model turns its history into scores while it trains under train.user_vector=auto.
TRAINING_USER_VECTOR = "mixture"
# Generated product ids are drawn in [PRODUCT_ID_BASE, PRODUCT_ID_BASE + PRODUCT_ID_SPAN), then
# offset by generate.item_id_offset, which keeps them below 2^63.
PRODUCT_ID_BASE = 1_000_000
PRODUCT_ID_SPAN = 99_000_000
MAX_ITEM_ID_OFFSET = 2**63 - PRODUCT_ID_BASE - PRODUCT_ID_SPAN


def _at_least(section: str, values: Any, minimums: Mapping[str, float]) -> None:
    """Raise ConfigError naming the first ``section.key`` below its minimum."""
    for key, minimum in minimums.items():
        if getattr(values, key) < minimum:
            raise ConfigError(f"{section}.{key} must be >= {minimum}, got {getattr(values, key)}")


def _bounded_waits(section: str, values: Any, keys: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first ``section.key`` of a wait that is not > 0."""
    for key in keys:
        if not getattr(values, key) > 0:
            raise ConfigError(f"{section}.{key} must be > 0 (every wait has a bound), got {getattr(values, key)}")


def iso_date(key: str, value: str) -> dt.date | None:
    """``value`` as a date ("" -> None). Raises: ConfigError naming ``key``."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an ISO date (YYYY-MM-DD)") from None


URI_SCHEMES = ("hdfs://", "s3a://", "s3://", "gs://", "abfss://", "wasbs://", "dbfs:/", "file:/")


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "recsys_spark"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    log_level: str = "WARN"
    show_progress: bool = True
    # Any further spark.* settings, passed through verbatim (e.g. executor resources).
    conf: dict[str, str] = field(default_factory=dict)
    # No stage runs longer than this: past it, its Spark jobs are cancelled and it stops with an
    # error naming this key, before it publishes anything.
    stage_timeout_minutes: float = 720.0
    # How long a stage waits for Spark to report an observed count after its action ended
    # (normally milliseconds); past it the stage counts the rows directly instead.
    observation_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _bounded_waits("spark", self, ("stage_timeout_minutes", "observation_timeout_s"))


@dataclass(frozen=True)
class PathsConfig:
    """Storage layout. Relative entries are resolved under ``root``; URIs pass through."""

    root: str = "work"
    raw: str = "raw"
    clean: str = "clean"
    quarantine: str = "quarantine"
    features: str = "features"
    checkpoints: str = "checkpoints"
    recommendations: str = "recommendations"
    reports: str = "reports"
    # The shop's log of the recommendations it showed (schema.FEEDBACK_SCHEMA, Parquet; optional:
    # clean skips it when absent), its valid rows by run_date, and its rejected rows with a reason
    # (a table apart from quarantine: a sub-folder would break reading that partitioned table).
    feedback: str = "feedback"
    clean_feedback: str = "clean_feedback"
    feedback_quarantine: str = "feedback_quarantine"
    # Under clean.id_types.product_id=string: each product's 63-bit key and its id as it came in
    # (schema.PRODUCT_IDS_SCHEMA, by event_date), written by clean, read by score (product_ids.py).
    product_ids: str = "product_ids"

    def resolve(self, name: str) -> str:
        value = getattr(self, name)
        if is_uri(value) or os.path.isabs(value):
            return value
        if is_uri(self.root):
            return self.root.rstrip("/") + "/" + value
        return str(Path(self.root) / value)


@dataclass(frozen=True)
class MlflowConfig:
    # Empty means a local store under paths.root: sqlite:///<root>/mlflow/mlflow.db
    tracking_uri: str = ""
    experiment: str = "recsys_spark"
    registered_model: str = "recsys_two_tower"
    alias: str = "challenger"


@dataclass(frozen=True)
class GenerateConfig:
    n_users: int = 4000
    n_items: int = 1500
    n_categories: int = 40
    n_brands: int = 120
    start_date: str = "2019-10-01"
    days: int = 30
    sessions_per_user: float = 6.0
    mean_session_length: float = 6.0
    zipf_exponent: float = 1.1
    p_same_category: float = 0.6
    p_complement: float = 0.25
    p_cart: float = 0.12
    p_purchase: float = 0.35
    # A carted item that is not bought is removed from the cart with this probability.
    p_remove_from_cart: float = 0.3
    # A session step re-views the item of two steps before (comparison browsing).
    p_repeat_view: float = 0.08
    taste_drift: float = 0.3
    taste_concentration: float = 1.0
    n_bots: int = 3
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.002
    null_id_rate: float = 0.002
    unknown_event_rate: float = 0.002
    missing_session_rate: float = 0.05
    # false: a log without faults or bots, whatever the rates above and n_bots say.
    defects: bool = True
    # 0: every user is active over the whole period. N: each user only in about N days from a
    # uniformly drawn first day (sessions past the last day are cut), a thin tail of recent users.
    user_active_days: int = 0
    # Share of sessions that are ratings-like bursts: 100-300 views or purchases of distinct
    # items, 1-2 seconds apart, within one day.
    burst_share: float = 0.0
    # Contract fields written empty on every row: any of brand, price, category_id, category_code.
    empty_columns: list[str] = field(default_factory=list)
    # Only events of these types are written (the others are dropped).
    event_types: list[str] = field(default_factory=lambda: ["view", "cart", "remove_from_cart", "purchase"])
    # Added to every product_id (e.g. 4611686018427387000 for ids near 2^62).
    item_id_offset: int = 0
    # Ids as a shop's export may hold them (clean.id_types.*=string reads them): UUID visitors and
    # product ids that are no integers, SKUs with dashes (SKU-012345678-XL) and zero-padded codes
    # (0012345678). Each stands for one integer id, so the log is the same as without. CSV only.
    string_ids: bool = False
    # A growing catalogue: from the second day on, this many catalogue items launch each day
    # (none is seen before its day; each category's most popular item is there from the start).
    new_items_per_day: int = 0
    # event_time without its " UTC" suffix (clean reads it in clean.naive_timezone).
    naive_timestamps: bool = False
    # parquet: one file per day with the typed raw contract (schema.RAW_TYPED_SCHEMA); no
    # malformed lines there (malformed_rate is ignored); compression=gzip is Parquet's codec.
    format: Literal["csv", "json", "parquet"] = "csv"
    compression: Literal["none", "gzip"] = "none"
    seed: int = 42

    def __post_init__(self) -> None:
        """Raise :class:`ConfigError` naming the first ``generate.*`` key out of range."""
        positive = ("n_users", "n_items", "n_categories", "n_brands", "days", "mean_session_length")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"generate.{key} must be positive, got {getattr(self, key)}")
        if self.n_items < self.n_categories:
            raise ConfigError(f"generate.n_items ({self.n_items}) must be >= generate.n_categories ({self.n_categories})")
        for key in ("sessions_per_user", "zipf_exponent", "n_bots", "user_active_days", "item_id_offset",
                    "new_items_per_day"):
            if getattr(self, key) < 0:
                raise ConfigError(f"generate.{key} must not be negative, got {getattr(self, key)}")
        if self.string_ids and self.format != "csv":
            raise ConfigError(f"generate.string_ids=true writes csv only, not generate.format={self.format}")
        launched_later = self.new_items_per_day * (self.days - 1)
        if launched_later > self.n_items - self.n_categories:
            raise ConfigError(f"generate.new_items_per_day={self.new_items_per_day} launches {launched_later} items over "
                              f"{self.days} days, more than the {self.n_items - self.n_categories} items generate.n_items "
                              "leaves beside each category's first: lower it or raise generate.n_items")
        if self.taste_concentration <= 0:
            raise ConfigError(f"generate.taste_concentration must be > 0, got {self.taste_concentration}")
        probabilities = (
            "p_same_category", "p_complement", "p_cart", "p_purchase", "p_remove_from_cart", "p_repeat_view",
            "taste_drift", "duplicate_rate", "malformed_rate", "burst_share",
        )  # fmt: skip
        for key in probabilities:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"generate.{key} must be in [0, 1], got {getattr(self, key)}")
        faults = (self.null_id_rate, self.unknown_event_rate, self.missing_session_rate)
        if min(faults) < 0 or sum(faults) > 1:
            raise ConfigError("generate.null_id_rate, unknown_event_rate and missing_session_rate must be >= 0, sum <= 1")
        iso_date("generate.start_date", self.start_date)
        for column in self.empty_columns:
            if column not in EMPTYABLE_COLUMNS:
                raise ConfigError(f"generate.empty_columns: {column!r} is not one of {', '.join(EMPTYABLE_COLUMNS)}")
        if not self.event_types:
            raise ConfigError(f"generate.event_types must list at least one of {', '.join(EVENT_TYPES)}")
        for event_type in self.event_types:
            if event_type not in EVENT_TYPES:
                raise ConfigError(f"generate.event_types: {event_type!r} is not one of {', '.join(EVENT_TYPES)}")
        if self.item_id_offset > MAX_ITEM_ID_OFFSET:
            raise ConfigError(f"generate.item_id_offset must be at most {MAX_ITEM_ID_OFFSET} (ids are 64-bit), "
                              f"got {self.item_id_offset}")


@dataclass(frozen=True)
class CleanConfig:
    # Source layout mapped onto the raw contract: rees46 (the contract itself), retailrocket
    # (events.csv) or yoochoose (*clicks* and *buys* files, no header).
    input_layout: Literal["rees46", "retailrocket", "yoochoose"] = "rees46"
    # File format of a rees46 input; csv also reads .csv.gz. The other layouts are CSV.
    input_format: Literal["csv", "json", "parquet"] = "csv"
    # The dates this run processes and replaces (inclusive, ISO, UTC); empty = every date in the
    # input. A file whose name holds a date (events-2019-10-01.csv) belongs to that date.
    start_date: str = ""
    end_date: str = ""
    # Time zone of timestamps written without an offset.
    naive_timezone: str = "UTC"
    # Prices above this (or negative, NaN, unparseable) are rejected as bad_price.
    max_price: float = 1_000_000.0
    # Source event type (trimmed, lower case) -> contract event type; other unknown types are rejected.
    event_aliases: dict[str, str] = field(
        default_factory=lambda: {"addtocart": "cart", "transaction": "purchase"}
    )
    # Same user, item and event type at most this many seconds after the previous one: one event.
    near_duplicate_seconds: int = 1
    # A user-day is a bot when it has more than this many events in any 60 seconds ...
    bot_max_events_per_minute: int = 30
    # ... or more than this many distinct items in one session; its rows are counted, not kept.
    bot_max_distinct_items_per_session: int = 100
    # When the bot rules flag more than this share of the (de-duplicated) rows, they probably do
    # not fit the data (a ratings-like or bulk log): "warn" (report, run summary, MLflow tag) or
    # "stop" (a DataQualityError before anything is published).
    bot_max_row_share: float = 0.2
    bot_share_action: Literal["warn", "stop"] = "warn"
    # Above this share of the rows read rejected (any reason), clean stops before publishing
    # anything, naming the top reason, a sample of the offending values and this key; above
    # 1% (REJECTED_WARN_SHARE in etl/clean.py) it warns (report, run summary, MLflow tag).
    max_rejected_share: float = 0.05
    # What the ids of the log are: "integer" (the REES46 contract: an id that is not a whole
    # number is rejected as bad_id) or "string" (any text: UUIDs, SKUs, zero-padded codes,
    # hashes; kept exactly as it came in, trimmed). See the README, "String ids".
    id_types: dict[str, str] = field(default_factory=lambda: {"user_id": "integer", "product_id": "integer"})
    session_gap_minutes: int = 30
    # A session longer than this is split into pieces of at most this length.
    max_session_minutes: int = 240
    # Name of the environment variable that holds the pseudonymisation key (HMAC-SHA256).
    pseudonym_key_env: str = "RECSYS_PSEUDONYM_KEY"
    # Only for local demos: fall back to a fixed, publicly known key (with a warning).
    allow_dev_key: bool = False
    # At most this many Parquet files per event date (also the parallelism of a one-day run).
    output_files_per_day: int = 2

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first clean setting out of range."""
        _at_least("clean", self, {"near_duplicate_seconds": 0, "bot_max_events_per_minute": 1,
                                  "bot_max_distinct_items_per_session": 1, "session_gap_minutes": 1,
                                  "max_session_minutes": 1, "output_files_per_day": 1})
        for key in ("bot_max_row_share", "max_rejected_share"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"clean.{key} must lie in [0, 1], got {getattr(self, key)}")
        if sorted(self.id_types) != sorted(ID_COLUMNS):
            raise ConfigError(f"clean.id_types must name exactly {', '.join(ID_COLUMNS)}, got {', '.join(sorted(self.id_types))}")
        for column, kind in self.id_types.items():
            if kind not in ID_TYPES:
                raise ConfigError(f"clean.id_types.{column}: {kind!r} is not one of {', '.join(map(repr, ID_TYPES))}")
        if not self.max_price > 0:
            raise ConfigError(f"clean.max_price must be positive, got {self.max_price}")
        for source, target in self.event_aliases.items():
            if target not in EVENT_TYPES:
                raise ConfigError(f"clean.event_aliases.{source}: {target!r} is not one of "
                                  f"{', '.join(map(repr, EVENT_TYPES))}")
        start, end = iso_date("clean.start_date", self.start_date), iso_date("clean.end_date", self.end_date)
        if start and end and start > end:
            raise ConfigError(f"clean.start_date {start} is after clean.end_date {end}")


@dataclass(frozen=True)
class FeaturizeConfig:
    max_seq_len: int = 50
    min_item_count: int = 2
    validation_days: int = 3
    test_days: int = 3
    max_windows_per_user: int = 20
    # Validation and test must each hold at least this many users with a new item, else the
    # stage stops before training: a mean over a handful of users proves nothing.
    min_eval_users: int = 100
    # ... and at least this share of all users (the users of a thin recent tail are a minority
    # whose metrics say little about the rest). Under evaluate.protocol=auto, a temporal split
    # below either minimum switches to leave_last_out.
    min_eval_user_share: float = 0.05
    price_buckets: int = 10
    # Minimum training events for a category, brand or user to get its own index (others: OOV).
    min_category_count: int = 1
    min_brand_count: int = 2
    min_user_count: int = 1
    # A features folder of an earlier run whose vocabularies are reused instead of rebuilt, or
    # "@<alias>": the one the registered model at that alias was trained on (none yet: build);
    # empty = build them from this data.
    vocab_from: str = ""
    # With vocab_from: "reuse" its vocabularies as they are (new products are out of
    # vocabulary), or "extend" them append-only (known values keep their index, this data's new
    # ones get the next indices: what incremental training grows the model's tables to).
    vocab_mode: Literal["reuse", "extend"] = "reuse"
    # Item popularity in item_features counts the events of this many days before the snapshot.
    popularity_days: int = 7
    # At least this many training files, rounded up to a multiple of train.num_proc and raised
    # until each file is one row group of at most row_group_mb (even Petastorm shards).
    train_files: int = 4
    row_group_mb: int = 8
    # Seeds the order of training windows in the written files.
    shuffle_seed: int = 17
    # Data-quality thresholds; a breach stops the job. Null rate per clean column (columns not
    # listed are reported, not checked).
    dq_max_null_rate: dict[str, float] = field(
        default_factory=lambda: {"category_id": 0.5, "brand": 0.9, "price": 0.5}
    )
    # Population stability index of the event-type mix, training period vs validation and test.
    dq_max_event_mix_psi: float = 0.25
    # PSI of item popularity (the top-k training items plus "other"), training vs later periods.
    dq_max_popularity_psi: float = 2.0
    # Drift (both PSIs) of a period with fewer events than this is reported, not enforced: PSI
    # between two small samples is mostly sampling noise (about bins / events).
    dq_min_drift_events: int = 1000
    dq_popularity_top_k: int = 1000
    # Share of validation / test steps on items outside the vocabulary.
    dq_max_oov_rate: float = 0.5
    # Above this share of the training steps in no training window (a user's only step, or steps
    # past max_windows_per_user windows) featurize stops; above 10% it warns in the run summary.
    max_unused_step_share: float = 0.5

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first featurize setting out of range, or a null-rate
        threshold on a column the clean events do not have."""
        _at_least("featurize", self, {
            "max_seq_len": 1, "min_item_count": 1, "validation_days": 1, "test_days": 1,
            "max_windows_per_user": 1, "price_buckets": 1, "train_files": 1, "row_group_mb": 1,
            "min_category_count": 1, "min_brand_count": 1, "min_user_count": 1, "popularity_days": 1,
            "dq_popularity_top_k": 1, "dq_max_event_mix_psi": 0, "dq_max_popularity_psi": 0, "dq_max_oov_rate": 0,
            "dq_min_drift_events": 0, "min_eval_users": 1,
        })
        for key in ("min_eval_user_share", "max_unused_step_share"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"featurize.{key} must lie in [0, 1], got {getattr(self, key)}")
        if self.vocab_from == "@":
            raise ConfigError("featurize.vocab_from='@' names no alias: write @champion, or a features folder")
        if self.vocab_mode == "extend" and not self.vocab_from:
            raise ConfigError("featurize.vocab_mode=extend needs featurize.vocab_from: the features folder whose "
                              "vocabularies to extend")
        for column, rate in self.dq_max_null_rate.items():
            if column not in CLEAN_COLUMNS:
                close = difflib.get_close_matches(column, CLEAN_COLUMNS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; the columns: {', '.join(CLEAN_COLUMNS)}"
                raise ConfigError(f"featurize.dq_max_null_rate.{column}: no such column of the clean events{hint}")
            if not 0 <= rate <= 1:
                raise ConfigError(f"featurize.dq_max_null_rate.{column} must be in [0, 1], got {rate}")


@dataclass(frozen=True)
class TrainConfig:
    # How the training processes start; each runs the same training function:
    #   horovod_spark: Horovod (gloo/NCCL), one process per Spark task (horovod.spark.run);
    #   torch_distributor: torch.distributed DDP (gloo on CPU, NCCL on GPU), Spark's TorchDistributor;
    #   local: one process, in the driver. (`horovodrun ... python -m recsys_spark.train.horovodrun`
    #   runs the same function on a plain cluster.)
    launcher: Literal["horovod_spark", "torch_distributor", "local"] = "horovod_spark"
    num_proc: int = 2
    # horovod_spark: the training processes must all have started (Spark task slots free) and met
    # within this many seconds, else the stage stops with an error naming this key.
    start_timeout_s: int = 600
    threads_per_proc: int = 1
    # Bind each training process (every thread of it: compute, reader, Horovod/gloo) to its own
    # threads_per_proc CPUs, local rank r taking CPUs r*t .. r*t+t-1 of those it may use, as
    # `horovodrun --binding-args="--bind-to core"` does. Off: the OS schedules freely.
    pin_cpus: bool = False
    # Horovod's background thread wakes every this many ms to agree with the other ranks on the
    # tensors ready to reduce (HOROVOD_CYCLE_TIME, set in each process before hvd.init()). Each
    # wake-up costs CPU, which ranks of one CPU each feel: at Horovod's default of 1 ms they
    # computed slower than a lone process, at 5 ms as fast (figures: benchmarks/RESULTS.md,
    # "Measurements behind code choices"). 0 leaves Horovod's own setting (the environment's
    # HOROVOD_CYCLE_TIME, or 1 ms); a GPU cluster may prefer that.
    horovod_cycle_time_ms: float = 5.0
    # auto: the GPU of each process's local rank when torch sees one, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on GPU (bf16 where supported, else fp16 with loss scaling); ignored on CPU.
    amp: bool = True
    # Continue from <paths.checkpoints>/last.pt (model, optimizer, scheduler, RNG states) if present.
    resume: bool = False
    # "full": start from freshly initialised weights. "incremental": start from a registered
    # parent model's weights (parent_version, else the version of parent_alias), its tables grown
    # to the features' vocabulary, which must extend the parent's (featurize.vocab_mode=extend,
    # featurize.vocab_from=<the parent's features>). No parent, or a parent of another shape
    # (embedding_dim, num_layers, ...): a log line, then full training.
    mode: Literal["full", "incremental"] = "full"
    parent_alias: str = "champion"
    parent_version: int = 0
    # Incremental: train on the windows whose last target comes after the parent's last one,
    # plus this many older windows drawn at random (seeded by train.seed): the replay that keeps
    # what the parent learnt (ADER's exemplar replay used 30k). 0 = the new windows alone
    # (plain fine-tuning, which forgets). More than the older windows there are is an error.
    replay_windows: int = 30000
    # Every run logs AdamW's moments after its last step (training/optimizer_moments.pt, twice
    # the weights' size), and an incremental run continues its parent's (grown tables' new rows
    # start at zero); false: neither, an incremental run's optimiser starts fresh.
    warm_optimizer: bool = True
    # The training windows read (a folder laid out as features/train); empty = <paths.features>/train.
    # train.mode=incremental sets it to the selection it writes under <paths.checkpoints>.
    windows_path: str = ""
    # The training budget, in optimiser steps (each: batch_size windows over all ranks). Training
    # ends at it (in mid-pass if need be) or earlier, when the learning rate's cool-down after a
    # validation plateau has run out (lr_schedule=wsd). A budget in steps fits any data size.
    max_steps: int = 3000
    # At most this many passes over the training windows (a cap; the budget is max_steps).
    epochs: int = 100
    # Validate (and decide early stopping) every this many steps and at the end of every pass;
    # 0: at the end of every pass only. Checkpoints for train.resume are written at pass ends.
    eval_every_steps: int = 500
    # Validation ranks at most this many users (a seeded sample of features/validation): under
    # evaluate.protocol=leave_last_out nearly every user is a validation user. Each evaluation logs
    # the 95% half-width of its NDCG and of its paired difference to the best so far: gains
    # smaller than those are noise.
    validation_users: int = 20000
    # Windows per optimiser step over ALL ranks (each rank takes batch_size / its world size, which
    # must divide it): 1 and N ranks then run the same recipe (same batch, same learning rate,
    # same steps); no learning-rate scaling by the world size.
    batch_size: int = 128
    lr: float = 0.003
    weight_decay: float = 0.01
    warmup_steps: int = 10
    # After the warm-up:
    #   "wsd" (warm-up, stable, decay): the peak rate until validation plateaus (patience) or the
    #     budget's last cooldown_share is reached, then a linear cool-down to min_lr_ratio x the
    #     peak over cooldown_share x the steps taken so far, after which training stops. The
    #     decay happens within the run that actually happens, however short (Hägele et al. 2024,
    #     "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").
    #   "cosine": a half cosine to min_lr_ratio over the budget (plateau cuts: plateau_decays);
    #   "constant": the peak throughout (plateau cuts: plateau_decays).
    lr_schedule: Literal["wsd", "constant", "cosine"] = "wsd"
    min_lr_ratio: float = 0.05
    cooldown_share: float = 0.2
    # The global gradient norm is clipped to this; 0 = no clipping.
    grad_clip: float = 1.0
    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    # "full": cross-entropy over every item of the catalogue (no sampling, no correction: SASRec
    # with cross-entropy); "sampled": the in-batch targets plus uniform_negatives uniform draws,
    # logQ-corrected (train/loss.py); "auto": full up to full_softmax_max_items items. The full
    # loss's logits take batch x steps x items floats (with their gradient ~2.2 GB per rank at
    # 50,000 items and the default batch, ~0.5 GB at 10,000) and its step ~2x the sampled one's
    # at 10,000 items, ~11x at 50,000 (benchmarks/loss_bench.py, RESULTS.md).
    loss: Literal["auto", "full", "sampled"] = "auto"
    full_softmax_max_items: int = 20000
    uniform_negatives: int = 256
    # Each position predicts a step drawn from its next `target_horizon` steps (1 = the next
    # item). 1 led 10 on validation under both protocols and on every shape measured
    # (benchmarks/RESULTS.md, "The model's recipe"), the temporal one included.
    target_horizon: int = 1
    # Where the drawn step starts: "next_step" (the next click, then the horizon) or
    # "next_visit": the first step after the next gap of at least visit_gap_s, which trains the
    # user vector for what a batch recommendation serves, the user's next visit (positions
    # with no later visit in the window predict nothing).
    target_start: Literal["next_step", "next_visit"] = "next_step"
    visit_gap_s: int = 1800
    # Drop targets the user already met earlier in the window, as evaluation excludes seen items.
    skip_seen_targets: bool = True
    # The loss weight of a target by its event type. Equal by default: weighting carts and
    # purchases up (2 and 3) did not help validation NDCG (benchmarks/RESULTS.md, "The model's
    # recipe"); keep weights only where your own data shows they help.
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "cart": 1.0, "remove_from_cart": 1.0, "purchase": 1.0}
    )
    # Validation NDCG@eval_k / Recall@eval_k, computed every epoch over the whole catalogue.
    eval_k: int = 20
    # A plateau: `patience` evaluations without a validation NDCG gain above `min_delta` (patience
    # 0 = none), and either `patience_steps` steps since the best or the latest evaluation below
    # the best by more than the 95% half-width of their paired difference (a real decline: the
    # model overfits). Under wsd a plateau starts the cool-down; under cosine/constant it cuts
    # the rate (plateau_decays) or stops. The best evaluation's weights are kept either way.
    # Counting steps, or asking for a significant decline, keeps a run of short passes (an
    # evaluation at every pass end) from stopping on the noise of a few evaluations.
    patience: int = 4
    patience_steps: int = 300
    min_delta: float = 0.0
    # Before stopping, a plateau (patience evaluations without a gain) first multiplies the
    # learning rate by plateau_factor, up to plateau_decays times: the decay then comes when the
    # data call for it, whatever the budget (a cosine over 3,000 steps barely decays by the time
    # early stopping ends a run on small data: the demo stopped at step 384 with the rate at 97%
    # of its peak and test NDCG@20 0.1767, against 0.1858 with a decay).
    plateau_decays: int = 1
    plateau_factor: float = 0.1
    # Add user features derived (causally) from the history itself to the user tower. Off by
    # default, like interest_pooling: neither path helped validation NDCG on any shape measured
    # (benchmarks/RESULTS.md, "The model's recipe"), so the default is the plain SASRec tower.
    user_features: bool = False
    # Add the running mean of the history's item vectors (a direct path for long-term taste).
    interest_pooling: bool = False
    # How evaluation and scoring turn the tower's vector after every history step into item
    # scores: "mixture" (each real step's vector gives a softmax over the items the user may
    # still get; an item scores the log of their mean: several interests stay apart), "mean"
    # (one dot product with the mean vector: what an ANN index can serve), or "last" (the last
    # step's vector, as SASRec). Training is the same for all three (benchmarks/RESULTS.md).
    # "auto": validate with the mixture while training, then rank the validation users with the
    # best weights in all three ways and keep the best (under leave_last_out, whose target is
    # the very next new item, "last" led on every generated regime; on the demo's temporal
    # split the mixture led).
    user_vector: Literal["auto", "last", "mean", "mixture"] = "auto"
    seed: int = 7

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first value out of range (types are checked by from_dict)."""
        for key in ("num_proc", "threads_per_proc", "start_timeout_s", "max_steps", "epochs", "validation_users",
                    "batch_size", "embedding_dim", "num_layers", "num_heads", "target_horizon", "eval_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("eval_every_steps", "warmup_steps", "uniform_negatives", "patience", "plateau_decays",
                    "visit_gap_s", "parent_version", "replay_windows", "patience_steps", "full_softmax_max_items"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.mode == "incremental" and not (self.parent_version or self.parent_alias):
            raise ConfigError("train.mode=incremental: train.parent_alias is empty and train.parent_version is 0: "
                              "name the model to start from")
        if self.horovod_cycle_time_ms < 0:
            raise ConfigError(f"train.horovod_cycle_time_ms must be >= 0, got {self.horovod_cycle_time_ms}")
        if self.lr < 0:  # 0 freezes the weights (tests of early stopping use it)
            raise ConfigError(f"train.lr must be >= 0, got {self.lr}")
        if not 0 < self.plateau_factor <= 1:
            raise ConfigError(f"train.plateau_factor must lie in (0, 1], got {self.plateau_factor}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}: a negative "
                              "norm would turn descent into ascent")
        if not 0 < self.cooldown_share <= 1:
            raise ConfigError(f"train.cooldown_share must lie in (0, 1], got {self.cooldown_share}")
        if self.batch_size % self.num_proc:
            raise ConfigError(f"train.batch_size ({self.batch_size}) is the batch over all ranks: it must be a "
                              f"multiple of train.num_proc ({self.num_proc})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"train.dropout must lie in [0, 1), got {self.dropout}")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(f"train.embedding_dim ({self.embedding_dim}) must be a multiple of train.num_heads "
                              f"({self.num_heads})")


@dataclass(frozen=True)
class SearchConfig:
    """The opt-in hyper-parameter search of the train stage (train/search.py): Optuna's TPE
    sampler draws train settings from ``space``, each trial a training run scored on validation
    (the best NDCG@train.eval_k of its run), and the stage then trains its model with the best."""

    # Trials before the final training (each a whole training run); 0 = no search, the default.
    trials: int = 0
    # Bound on the whole search (Optuna's timeout): no trial starts after it, one under way
    # finishes. Below spark.stage_timeout_minutes: the final training runs in the same stage.
    timeout_minutes: float = 360.0
    # Seeds the sampler: the same seed, space and data draw the same trials.
    seed: int = 23
    # train key -> [low, high] (a uniform range, real or integer by the key's type), [low, high,
    # log] (log-uniform, low > 0), or the choices: three or more integers, or the values of a
    # true/false or text key (two numbers are always a range). A value the train section refuses
    # in combination (embedding_dim not a multiple of num_heads) prunes its trial.
    space: dict[str, list[Any]] = field(default_factory=lambda: {
        "lr": [0.0003, 0.006, "log"],
        "dropout": [0.0, 0.4],
        "embedding_dim": [32, 64, 128],
        "max_steps": [1500, 6000],  # half to twice train.max_steps' default
    })

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first setting out of range or entry of ``space`` of neither
        form (types are checked by from_dict; the space's values against the train section by
        load_config)."""
        if self.trials < 0:
            raise ConfigError(f"search.trials must be >= 0, got {self.trials}")
        _bounded_waits("search", self, ("timeout_minutes",))
        if self.trials and not self.space:
            raise ConfigError(f"search.space names no train key to search (search.trials={self.trials})")
        # Parsed, each value of its key's type (YAML reads `1e-3` as text): what is logged is what is searched.
        object.__setattr__(self, "space", {d.key: d.spec for d in parse_space(self.space)})


@dataclass(frozen=True)
class SearchDimension:
    """One entry of ``search.space``, parsed: a range of ``train.<key>`` or its choices."""

    key: str
    kind: Literal["float", "int", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def spec(self) -> list[Any]:
        """The entry of ``search.space`` that this was parsed from, its values typed."""
        if self.kind == "choice":
            return list(self.choices)
        return [self.low, self.high, "log"] if self.log else [self.low, self.high]

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values every draw lies between (low, high) or among (the choices)."""
        return self.choices if self.kind == "choice" else (self.low, self.high)


# Train keys a search may not vary, and why.
NOT_SEARCHABLE = {
    "eval_k": "it sets the objective (validation NDCG@train.eval_k), which must compare across trials",
    "resume": "every trial and the final training start from scratch",
}


def parse_space(space: Mapping[str, Any]) -> list[SearchDimension]:
    """Parse ``search.space`` (the format: see :class:`SearchConfig`).

    Raises:
        ConfigError: naming ``search.space.<key>``: not a train key (with a did-you-mean), a key
            that cannot be searched, or a list that is neither a range nor choices of its type.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    dimensions = []
    for key, spec in space.items():
        name = f"search.space.{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean 'search.space.{close[0]}'?)" if close else ""
            raise ConfigError(f"{name}: the train section has no key {key!r}{hint}")
        if key in NOT_SEARCHABLE:
            raise ConfigError(f"{name}: train.{key} cannot be searched: {NOT_SEARCHABLE[key]}")
        hint = _resolve(TrainConfig, fields[key])
        if not isinstance(spec, list) or not spec:
            raise ConfigError(f"{name}: expected a list ([low, high], [low, high, log] or the choices), got "
                              f"{_describe(spec)}")
        numeric = hint in (int, float)
        log_scale = numeric and len(spec) == 3 and spec[2] == "log"
        bounds = spec[:2] if log_scale else spec
        if hint is float or (hint is int and len(bounds) == 2):
            if len(bounds) != 2:
                raise ConfigError(f"{name}: train.{key} is a real number: give a range [low, high] or [low, high, "
                                  f"log], got {spec!r}")
            low, high = (_check(f"{name}[{i}]", value, hint) for i, value in enumerate(bounds))
            if not low < high:
                raise ConfigError(f"{name}: the range's low ({low}) must be below its high ({high})")
            if log_scale and not low > 0:
                raise ConfigError(f"{name}: a log range needs low > 0, got {low}")
            dimensions.append(SearchDimension(key, "int" if hint is int else "float", low, high, log_scale))
        elif numeric or hint in (bool, str) or typing.get_origin(hint) is Literal:
            choices = [_check(f"{name}[{i}]", value, hint) for i, value in enumerate(spec)]
            if len(choices) < 2 or len(set(choices)) != len(choices):
                raise ConfigError(f"{name}: give at least two different choices (or a range [low, high] of a "
                                  f"number), got {spec!r}")
            dimensions.append(SearchDimension(key, "choice", choices=tuple(choices)))
        else:
            kind = {dict: "a mapping", list: "a list"}.get(typing.get_origin(hint), repr(hint))
            raise ConfigError(f"{name}: train.{key} is {kind}; only numbers, true/false and text keys can be "
                              "searched")
    return dimensions


@dataclass(frozen=True)
class EvaluateConfig:
    # How featurize splits the data into training, validation and test (features/split.py):
    #   temporal: global cutoffs, the last featurize.test_days days are the test period and the
    #     featurize.validation_days before them validation (what production serves: tomorrow);
    #   leave_last_out: each user's last new item is the test target, the one before it the
    #     validation target, training sees the user's steps before that (SASRec, RecBole);
    #   auto: temporal when its validation and test periods each hold enough users (see
    #     featurize.min_eval_users and min_eval_user_share), else leave_last_out, with a warning
    #     in the run summary. A log with a thin recent tail gets leave_last_out.
    protocol: Literal["auto", "temporal", "leave_last_out"] = "auto"
    # Cut-offs K of every @K metric (recall, ndcg, map, hitrate, coverage, novelty, ...).
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    # Compares rankers, tunes the baselines on validation and drives the registry gate.
    primary_metric: str = "ndcg@20"
    # Which model version to evaluate: an alias of mlflow.registered_model.
    model_alias: str = "challenger"
    # The alias the gate moves to the challenger when it wins (scoring reads it).
    champion_alias: str = "champion"
    block_size: int = 1024
    # Items a user had any of these events on before the cutoff are never recommended (nor
    # counted as targets). All four: features' seen_items; a subset reads paths.clean.
    exclude_seen_event_types: list[str] = field(
        default_factory=lambda: ["view", "cart", "remove_from_cart", "purchase"]
    )
    # Users with fewer distinct items than this before the cutoff are "cold" in the breakdown.
    cold_user_threshold: int = 5
    # Head items: the most popular items that make up this share of interactions before the cutoff.
    head_share: float = 0.2
    # Baselines ranked beside the model: any of popularity, cooccurrence, als, ease.
    baselines: list[str] = field(default_factory=lambda: ["popularity", "cooccurrence", "als", "ease"])
    # Co-occurrence grid (tuned on validation): max step distance of a pair, weight decay per
    # step back in the user's history, similarity (count | cosine).
    cooccurrence_windows: list[int] = field(default_factory=lambda: [1, 3, 10])
    cooccurrence_decays: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.0])
    cooccurrence_similarities: list[str] = field(default_factory=lambda: ["count", "cosine"])
    # Spark MLlib implicit ALS grid (tuned on validation), and its fixed settings.
    als_ranks: list[int] = field(default_factory=lambda: [32, 64])
    als_reg_params: list[float] = field(default_factory=lambda: [0.01, 0.1])
    als_alphas: list[float] = field(default_factory=lambda: [1.0, 10.0])
    als_max_iter: int = 10
    als_seed: int = 11
    # EASE grid (Steck 2019; tuned on validation): the L2 weight lambda, and the recency decay:
    # an item weighs decay**t, t the steps from the end of a training window or of the user's
    # history to its latest step there (1.0 = plain, binary EASE).
    ease_lambdas: list[float] = field(default_factory=lambda: [10.0, 100.0, 500.0, 2000.0])
    ease_decays: list[float] = field(default_factory=lambda: [1.0, 0.8])
    # EASE inverts an items x items matrix on the driver (float64, about 24 n^2 bytes: 9.6 GB at
    # 20,000 items) and each Spark worker holds n x n float32 weights: above this many items
    # with training interactions it is skipped, with a log line, and the run goes on without it.
    ease_max_items: int = 20000
    # Registry gate: auto (by the margins below), force (always promote), block (never).
    promotion: Literal["auto", "force", "block"] = "auto"
    # The challenger must beat the champion's primary metric by more than this (absolute).
    gate_min_improvement: float = 0.0
    # ... and lose at most this much coverage@K (absolute; K of the primary metric).
    gate_max_coverage_loss: float = 0.05
    # Intervals: a percentile bootstrap over the test users (evaluation/intervals.py), with this
    # many resamples, this seed and this level; the gate reads the lower bound of the paired
    # difference challenger - champion, which must exceed gate_min_improvement.
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 5
    confidence: float = 0.95
    # Off-policy evaluation of the challenger under the score settings (evaluation/offpolicy.py)
    # on paths.clean_feedback: its last ope_days run dates (0 = all); an estimate whose importance
    # weights have an effective sample size below ope_min_ess is withheld, with the reason; the
    # DM/DR reward model shrinks each item's click lift to 1 by ope_prior_clicks pseudo-clicks.
    ope_days: int = 7
    ope_min_ess: float = 100.0
    ope_prior_clicks: float = 5.0

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first EASE or bootstrap setting out of range (types are checked
        by from_dict): before Spark starts, not after training."""
        if self.ope_days < 0:
            raise ConfigError(f"evaluate.ope_days: expected >= 0 (0 = every run date), got {self.ope_days}")
        if not self.ope_min_ess >= 0:
            raise ConfigError(f"evaluate.ope_min_ess: expected >= 0, got {self.ope_min_ess}")
        if not self.ope_prior_clicks > 0:
            raise ConfigError(f"evaluate.ope_prior_clicks: expected > 0, got {self.ope_prior_clicks}")
        ease = "ease" in self.baselines  # an unused grid may be empty
        if (ease and not self.ease_lambdas) or not all(v > 0 for v in self.ease_lambdas):
            raise ConfigError(f"evaluate.ease_lambdas must be a non-empty list of values > 0, got {self.ease_lambdas}")
        if (ease and not self.ease_decays) or not all(0 < v <= 1 for v in self.ease_decays):
            raise ConfigError(f"evaluate.ease_decays must be a non-empty list of values in (0, 1], got "
                              f"{self.ease_decays}")
        if self.ease_max_items < 1:
            raise ConfigError(f"evaluate.ease_max_items must be >= 1, got {self.ease_max_items}")
        if self.bootstrap_samples < 1:
            raise ConfigError(f"evaluate.bootstrap_samples: expected a positive integer, got {self.bootstrap_samples}")
        if self.bootstrap_seed < 0:
            raise ConfigError(f"evaluate.bootstrap_seed: expected >= 0, got {self.bootstrap_seed}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"evaluate.confidence: expected a level in (0, 1), e.g. 0.95, got {self.confidence}")
        ks = list(self.ks)
        if not ks or min(ks) < 1:
            raise ConfigError(f"evaluate.ks: expected positive cut-offs, got {ks}")
        known = metric_names(ks) + coverage_names(ks) + list_metric_names(ks)
        if self.primary_metric not in known:
            raise ConfigError(f"evaluate.primary_metric: {self.primary_metric!r} is not one of {', '.join(known)}")
        if self.block_size < 1:
            raise ConfigError(f"evaluate.block_size: expected a positive integer, got {self.block_size}")
        unknown = sorted(set(self.exclude_seen_event_types) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(f"evaluate.exclude_seen_event_types: unknown event type(s) {unknown}; known: "
                              f"{list(EVENT_TYPES)}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"evaluate.baselines: unknown baseline(s) {unknown}; known: {list(BASELINES)}")
        if not 0 < self.head_share <= 1:
            raise ConfigError(f"evaluate.head_share: expected a share in (0, 1], got {self.head_share}")
        if self.cold_user_threshold < 0:
            raise ConfigError(f"evaluate.cold_user_threshold: expected >= 0, got {self.cold_user_threshold}")
        if self.champion_alias == self.model_alias:
            raise ConfigError(f"evaluate.champion_alias: must differ from evaluate.model_alias ({self.model_alias!r})")
        if self.gate_max_coverage_loss < 0:
            raise ConfigError(f"evaluate.gate_max_coverage_loss: expected >= 0, got {self.gate_max_coverage_loss}")
        grids = {
            "cooccurrence_windows": (self.cooccurrence_windows, lambda v: v >= 1),
            "cooccurrence_decays": (self.cooccurrence_decays, lambda v: 0 < v <= 1),
            "cooccurrence_similarities": (self.cooccurrence_similarities, lambda v: v in COOCCURRENCE_SIMILARITIES),
            "als_ranks": (self.als_ranks, lambda v: v >= 1),
            "als_reg_params": (self.als_reg_params, lambda v: v > 0),
            "als_alphas": (self.als_alphas, lambda v: v >= 0),
        }
        for key, (values, valid) in grids.items():
            family = "cooccurrence" if key.startswith("cooc") else "als"
            if family in self.baselines and (not values or not all(valid(v) for v in values)):
                raise ConfigError(f"evaluate.{key}: invalid grid {values}")
        if "als" in self.baselines and self.als_max_iter < 1:
            raise ConfigError(f"evaluate.als_max_iter: expected a positive integer, got {self.als_max_iter}")


@dataclass(frozen=True)
class ScoreConfig:
    top_k: int = 20
    # The model scored with: models:/<mlflow.registered_model>@<model_alias>; the evaluate
    # stage's gate moves `champion`. Set `challenger` to score a model not yet promoted.
    model_alias: str = "champion"
    # A registered version number instead of the alias; 0 means "use the alias".
    model_version: int = 0
    # What evaluate's gate may put forward to serve: "auto", the deep model unless the best tuned
    # baseline beats it on validation (the upper bound of the paired model - baseline interval
    # below 0), then that baseline, registered as a version of mlflow.registered_model with the
    # same pyfunc; "model", the deep model always (this stage then refuses a baseline version).
    ranker: Literal["auto", "model"] = "auto"
    RANKERS = ("auto", "model")  # not a key: the values ranker takes
    # A product on which the user has an event of one of these types (any time in paths.clean)
    # is never recommended to them; [] excludes nothing, add "view" to exclude everything seen.
    exclude_event_types: list[str] = field(default_factory=lambda: ["purchase"])
    # CSV (with a header) or Parquet holding a product_id column: products never recommended
    # to anyone (e.g. out of stock). Empty = none.
    exclude_items_path: str = ""
    # At most this many items of one category_id in a user's list (diversity); 0 = no cap.
    category_cap: int = 0
    # Exploration: each position of a model list is, with this probability, an exploration
    # slot (source = explore) that score.explore_policy fills from the pool; 0 = none.
    explore_share: float = 0.05
    # Under-exposed items: this share of the model's catalogue with the fewest recent users.
    explore_pool_share: float = 0.5
    # How the pool is explored (README, "score"): "epsilon", a uniform pick per exploration
    # slot; "thompson", the pool items of highest click rate drawn from their Beta posteriors;
    # "boost", score.boost_bonus added to the pool items' scores (+ epsilon slots if any).
    explore_policy: str = "epsilon"
    EXPLORE_POLICIES = ("epsilon", "thompson", "boost")  # not a key: the names explore_policy takes
    # Monte-Carlo draws per user of the propensity of a random list (the served draw is one):
    # error <= 0.5 / sqrt(samples - 1), 0.035 at 200. Cost: each model user's list is built
    # `samples` times from its top 2K (5K under a cap) items, the model's scores once: the list
    # building of a list without exploration, times `samples`.
    propensity_samples: int = 200
    # Thompson: prior Beta(s m, s (1 - m)) of an item's click rate, m = (recent users + 1) /
    # (users active in the last popular_days + 2), s = this strength (pseudo-exposures).
    thompson_prior_strength: float = 10.0
    # Thompson: posterior draws of the whole pool, made once per run date; a user's draw picks
    # one (cost: draws x pool Beta samples on the driver).
    thompson_draws: int = 1024
    # Thompson: Parquet of logged feedback counts (product_id, exposures, clicks), added to the
    # priors; empty = priors only. featurize writes them to <paths.features>/feedback_counts
    # (from paths.clean_feedback, the run dates before its serve snapshot).
    feedback_counts_path: str = ""
    # Boost: added to a pool item's model score before the greedy ranking (score units: for a
    # "mixture" model a log-probability, +1 multiplies the item's probability by e).
    boost_bonus: float = 1.0
    # "Recent" for the cold-start fallback and exposure: the last N days of paths.clean.
    popular_days: int = 7
    # Users per matrix multiply inside a task: a task holds block_size x catalogue float32
    # scores (256 x 100k items = 100 MB), whatever the number of users.
    block_size: int = 256
    # Seeds the exploration draws, with the user and the run date (re-runs are identical).
    seed: int = 13
    # Partition written (ISO date); empty = today (UTC). Re-running a date replaces it.
    run_date: str = ""

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first invalid score setting."""
        _at_least("score", self, {"top_k": 1, "block_size": 1, "popular_days": 1, "category_cap": 0,
                                  "model_version": 0, "propensity_samples": 10, "thompson_draws": 1})
        if not 0.0 <= self.explore_share <= 1.0:
            raise ConfigError(f"score.explore_share must lie in [0, 1], got {self.explore_share}")
        if not 0.0 < self.explore_pool_share <= 1.0:
            raise ConfigError(f"score.explore_pool_share must lie in (0, 1], got {self.explore_pool_share}")
        if self.ranker not in self.RANKERS:
            raise ConfigError(f"score.ranker: {self.ranker!r} is not one of {', '.join(map(repr, self.RANKERS))}")
        if self.explore_policy not in self.EXPLORE_POLICIES:
            raise ConfigError(f"score.explore_policy: {self.explore_policy!r} is not one of {', '.join(self.EXPLORE_POLICIES)}")
        if self.explore_policy == "thompson" and self.explore_share == 0:
            raise ConfigError("score.explore_policy=thompson fills exploration slots: set score.explore_share > 0")
        if not self.thompson_prior_strength > 0:
            raise ConfigError(f"score.thompson_prior_strength must be > 0, got {self.thompson_prior_strength}")
        if self.feedback_counts_path and self.explore_policy != "thompson":
            raise ConfigError(f"score.feedback_counts_path is read by score.explore_policy=thompson only, "
                              f"not {self.explore_policy!r}")
        if not self.boost_bonus >= 0 or (self.explore_policy == "boost" and self.boost_bonus == 0):
            raise ConfigError(f"score.boost_bonus must be >= 0 (> 0 with score.explore_policy=boost), got {self.boost_bonus}")
        unknown = [t for t in self.exclude_event_types if t not in EVENT_TYPES]
        if unknown:
            raise ConfigError(f"score.exclude_event_types: {unknown} not among {list(EVENT_TYPES)}")
        if not self.model_version and not self.model_alias:
            raise ConfigError("score.model_alias is empty and score.model_version is 0: name the model to score with")
        iso_date("score.run_date", self.run_date)


@dataclass(frozen=True)
class PublishConfig:
    """The ``publish`` stage: a run date's recommendations into the Redis store (serving/publish.py)."""

    # The recommendations partition published (ISO date); empty = the latest run_date present.
    run_date: str = ""
    # A date older than the one served is not published (a backfill re-scores a past date and must
    # not replace the newer lists served); true publishes and serves it.
    allow_older: bool = False
    # Instead of publishing: make the version published before the current one current again
    # (`recsys publish --rollback`); the current one leaves the list, its keys go at the next publish.
    rollback: bool = False

    def __post_init__(self) -> None:
        iso_date("publish.run_date", self.run_date)
        if self.rollback and self.run_date:
            raise ConfigError(f"publish.rollback=true switches back to the previous version: it publishes no run date "
                              f"(drop publish.run_date={self.run_date})")


# A Redis key prefix: a SCAN pattern is built from it, so no glob characters.
REDIS_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


@dataclass(frozen=True)
class ServeConfig:
    """The Redis store of the served lists (serving/store.py), written by ``recsys publish`` and read
    by ``recsys serve``. Key layout: README, "Publish to Redis"."""

    # redis://host:port/db (rediss:// for TLS). No password here: it is read from the environment
    # variable named by redis_password_env (unset or empty = none).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_env: str = "RECSYS_REDIS_PASSWORD"
    redis_prefix: str = "recsys"
    # The service's bound on one Redis read and on opening a connection: past it the request falls
    # back instead of waiting (no retry).
    socket_timeout_s: float = 0.05
    socket_connect_timeout_s: float = 0.05
    # Published versions kept (the current one included); older ones are deleted after a switch.
    # At least 2: the previous version is what `recsys publish --rollback` returns to.
    keep_versions: int = 3
    # Users per pipelined write of a publish task, and the bound on one such write (a batch of
    # 500 lists of 20 items is ~150 KB); a timed-out write is retried up to publish_retries times.
    publish_batch: int = 500
    publish_timeout_s: float = 10.0
    publish_retries: int = 3
    # `recsys serve` (serving/server.py): the HTTP address it listens on.
    host: str = "127.0.0.1"
    port: int = 8000
    # A POST's limits: events in one session, and bytes of the body (larger: 413, nothing done).
    # A list's k is at most score.top_k, the length of the lists score writes.
    max_events: int = 500
    max_body_bytes: int = 262_144
    # The environment variable holding the API key that requests must send as X-API-Key; unset
    # or empty (or this key empty) = no authentication. /healthz, /readyz and /metrics are open.
    api_key_env: str = "RECSYS_SERVE_API_KEY"
    # Exposures (every served item) are written to paths.feedback as a Parquet file when this many
    # rows wait or the oldest has waited this long; beyond feedback_max_pending_rows waiting (a
    # stalled disk), new rows are dropped and counted as lost instead of growing memory.
    feedback_batch_rows: int = 1000
    feedback_flush_seconds: float = 5.0
    feedback_max_pending_rows: int = 100_000
    # How often the service asks the registry which version holds score.model_alias (a moved
    # alias is loaded in the background and swapped in; score.model_version > 0 pins one).
    model_poll_seconds: float = 30.0
    # After a failed Redis read, requests skip Redis (and fall back) for this long, then try again.
    redis_retry_seconds: float = 1.0

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first invalid serve setting."""
        _at_least("serve", self, {"keep_versions": 2, "publish_batch": 1, "publish_retries": 0, "port": 1,
                                  "max_events": 1, "max_body_bytes": 1024, "feedback_batch_rows": 1,
                                  "redis_retry_seconds": 0})
        if self.port > 65535:
            raise ConfigError(f"serve.port must be <= 65535, got {self.port}")
        if self.feedback_max_pending_rows < self.feedback_batch_rows:
            raise ConfigError(f"serve.feedback_max_pending_rows ({self.feedback_max_pending_rows}) must be >= "
                              f"serve.feedback_batch_rows ({self.feedback_batch_rows})")
        _bounded_waits("serve", self, ("socket_timeout_s", "socket_connect_timeout_s", "publish_timeout_s",
                                       "feedback_flush_seconds", "model_poll_seconds"))
        url = urlsplit(self.redis_url)
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ConfigError(f"serve.redis_url: {self.redis_url!r} is not a redis://host:port/db URL")
        if url.password or url.username:
            raise ConfigError(f"serve.redis_url holds credentials: put the password in the environment variable "
                              f"{self.redis_password_env or 'named by serve.redis_password_env'} instead")
        if not self.redis_prefix or not set(self.redis_prefix) <= REDIS_PREFIX_CHARS:
            raise ConfigError(f"serve.redis_prefix: {self.redis_prefix!r} must be non-empty letters, digits, _ . : -")


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        root = Path(self.paths.root).resolve()
        return f"sqlite:///{root}/mlflow/mlflow.db"

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for a newly created experiment, when the store is the local default."""
        if self.mlflow.tracking_uri:
            return None
        return (Path(self.paths.root).resolve() / "mlflow" / "artifacts").as_uri()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted ``section.key -> value`` view, for MLflow params."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


def is_uri(path: str) -> bool:
    return path.startswith(URI_SCHEMES)


# --------------------------------------------------------------------------- loading


def load_config(config_path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Build a :class:`Config` from defaults, an optional YAML profile and dotted overrides.

    Args:
        config_path: YAML file; ``extends: other.yaml`` (relative to it) is followed first.
        overrides: ``["train.epochs=3", "spark.master=local[4]"]``; values are YAML scalars.
            ``section.key.entry=value`` sets one entry of a mapping and keeps its others
            (``featurize.dq_max_null_rate.brand=1.0``); everything after the key is the entry's
            name, dots included (``spark.conf.spark.executor.memory=4g``).

    Raises:
        ConfigError: unknown key, wrong type, bad override syntax, unreadable file.
    """
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged = _read_layered_yaml(Path(config_path), seen=())
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        section, _, rest = key.strip().partition(".")
        name, dot, entry = rest.partition(".")
        if not section or not name or (dot and not entry):
            raise ConfigError(f"override key {key!r} must be section.key (e.g. train.epochs)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError):  # YAML reads 2019-13-01 as a date and fails: keep the text
            value = raw
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        if entry:
            # One entry of a mapping; the rest of it stays as the profile (or the default) has it.
            value = {**_mapping_to_extend(section, name, merged[section], key.strip()), entry: value}
        merged[section][name] = value
    cfg = from_dict(merged)
    check_search(cfg)
    return cfg


def check_search(cfg: Config) -> None:
    """The search's settings against the rest of the config, when the search is on (a search
    that cannot run stops here, not after its first trial). The trials' and the final
    training's configs are built from a checked one and are not checked again.

    Raises:
        ConfigError: naming the key: train.resume set, a search that leaves the final training
            no time in spark.stage_timeout_minutes, or an end of a range (or a choice) of
            ``search.space`` that the train section refuses on its own.
    """
    search = cfg.search
    if not search.trials:
        return
    if cfg.train.resume:
        raise ConfigError(f"search.trials={search.trials} with train.resume=true: the trials and the final "
                          "training start from scratch (set train.resume=false)")
    if search.timeout_minutes >= cfg.spark.stage_timeout_minutes:
        raise ConfigError(f"search.timeout_minutes ({search.timeout_minutes:g}) must be below "
                          f"spark.stage_timeout_minutes ({cfg.spark.stage_timeout_minutes:g}): the final training "
                          "runs in the same stage, after the search")
    for dimension in parse_space(search.space):
        for value in dimension.ends:
            try:
                dataclasses.replace(cfg.train, **{dimension.key: value})
            except ConfigError as exc:
                raise ConfigError(f"search.space.{dimension.key}: {value!r} is refused: {exc}") from None


def _mapping_to_extend(section: str, name: str, values: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The mapping an override ``section.name.<entry>=value`` adds its entry to: the one set so
    far (profile, earlier override), else the default.

    Raises:
        ConfigError: an unknown section or key, or ``section.name`` is not a mapping.
    """
    hint = _field_type(section, name)
    if typing.get_origin(hint) is not dict:
        raise ConfigError(f"override key {key!r}: {section}.{name} is not a mapping, so it has no entries "
                          f"(set it as {section}.{name}=value)")
    if name not in values:
        return getattr(_section_class(section)(), name)
    if not isinstance(values[name], dict):
        raise ConfigError(f"{section}.{name}: expected a mapping, got {_describe(values[name])}")
    return values[name]


def _read_layered_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file {path} extends itself in a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base: dict[str, Any] = {}
    parent = data.pop("extends", None)
    if parent:
        base = _read_layered_yaml(path.parent / str(parent), seen + (path,))
    for section, values in data.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path.name}: section {section!r} must be a mapping")
        base.setdefault(section, {})
        base[section] = {**base[section], **values} if isinstance(base[section], dict) else values
    return base


def from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a nested mapping against :class:`Config` and build it."""
    kwargs: dict[str, Any] = {}
    for section, values in data.items():
        section_cls = _section_class(section)
        if not isinstance(values, Mapping):
            raise ConfigError(f"section {section!r} must be a mapping, got {type(values).__name__}")
        kwargs[section] = section_cls(
            **{key: _check(f"{section}.{key}", value, _field_type(section, key)) for key, value in values.items()}
        )
    return Config(**kwargs)


def _section_class(section: str) -> type:
    """The dataclass of a config section; ConfigError (with a did-you-mean) for an unknown one."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(_unknown(section, sections))
    return _resolve(Config, sections[section])


def _field_type(section: str, key: str) -> Any:
    """The type hint of ``section.key``; ConfigError (with a did-you-mean) for an unknown key."""
    section_cls = _section_class(section)
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    if key not in fields:
        raise ConfigError(_unknown(f"{section}.{key}", {f"{section}.{k}" for k in fields}))
    return _resolve(section_cls, fields[key])


def _resolve(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _unknown(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}"


def _check(key: str, value: Any, hint: Any) -> Any:
    if hint is Any:  # checked by its section (search.space: parse_space)
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        return [_check(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return {
            _check(f"{key} (a key)", k, args[0]): _check(f"{key}.{k}", v, args[1]) for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        # YAML reads `2019-10-01` as a date and `4` as an int; a string key takes their text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # a programming error, named anyway


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"

