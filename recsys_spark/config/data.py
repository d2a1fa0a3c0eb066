"""The data-preparation sections: the synthetic log (generate), clean and featurize."""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass, field
from typing import Literal

from recsys_spark import schema
from recsys_spark.config.base import EVENT_TYPES, _at_least, iso_date
from recsys_spark.errors import ConfigError

# clean.id_types: the id columns and what each may be (schema.ID_INTEGER / ID_STRING).
ID_COLUMNS = (schema.USER_ID, schema.PRODUCT_ID)
ID_TYPES = (schema.ID_INTEGER, schema.ID_STRING)
# The clean events' columns (schema.CLEAN_SCHEMA), for featurize.dq_max_null_rate.
CLEAN_COLUMNS = tuple(f.name for f in schema.CLEAN_SCHEMA.fields)
# Contract fields the generator may write empty (generate.empty_columns).
EMPTYABLE_COLUMNS = (schema.BRAND, schema.PRICE, schema.CATEGORY_ID, schema.CATEGORY_CODE)
# Generated product ids are drawn in [PRODUCT_ID_BASE, PRODUCT_ID_BASE + PRODUCT_ID_SPAN), then
# offset by generate.item_id_offset, which keeps them below 2^63.
PRODUCT_ID_BASE = 1_000_000
PRODUCT_ID_SPAN = 99_000_000
MAX_ITEM_ID_OFFSET = 2**63 - PRODUCT_ID_BASE - PRODUCT_ID_SPAN


def clean_dates(start_date: str, end_date: str) -> tuple[dt.date | None, dt.date | None]:
    """``clean.start_date`` and ``clean.end_date`` as dates (None: that end is open).

    Raises:
        ConfigError: a date that is not ``YYYY-MM-DD``, or the start after the end.
    """
    start, end = iso_date("clean.start_date", start_date), iso_date("clean.end_date", end_date)
    if start and end and start > end:
        raise ConfigError(f"clean.start_date {start} is after clean.end_date {end}")
    return start, end


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
    # 1% (REJECTED_WARN_SHARE in etl/reconciliation.py) it warns (report, run summary, MLflow tag).
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
        clean_dates(self.start_date, self.end_date)


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
