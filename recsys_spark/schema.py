"""Column names and Parquet schemas, defined once for every layer.

Layers:
  raw          the REES46 e-commerce behaviour contract (CSV / JSON lines / Parquet)
  quarantine   rejected raw rows with a reason code and their original content
  clean        validated, de-duplicated, sessionised, pseudonymised events, by event_date
  product_ids  under string product ids: each product's 63-bit key and its id as it came in
  features     vocabularies, training windows, evaluation rows, latest user histories
  recommendations  top-K per user, by run_date
  feedback     what the shop logs back about the recommendations it showed (one row per
               exposure); clean validates it into clean feedback by run_date, quarantining
               bad rows with a reason; featurize counts it per item
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# ----------------------------------------------------------------------------- raw contract
EVENT_TIME = "event_time"
EVENT_TYPE = "event_type"
PRODUCT_ID = "product_id"
CATEGORY_ID = "category_id"
CATEGORY_CODE = "category_code"
BRAND = "brand"
PRICE = "price"
USER_ID = "user_id"
USER_SESSION = "user_session"

RAW_COLUMNS = [EVENT_TIME, EVENT_TYPE, PRODUCT_ID, CATEGORY_ID, CATEGORY_CODE, BRAND, PRICE, USER_ID, USER_SESSION]

# What an id column of the raw log holds (clean.id_types): whole numbers (REES46) or any text.
ID_INTEGER = "integer"
ID_STRING = "string"

# Raw text is read as strings so that every bad value can be quarantined with its reason.
RAW_TEXT_SCHEMA = T.StructType([T.StructField(c, T.StringType(), True) for c in RAW_COLUMNS])
CORRUPT_RECORD = "_corrupt_record"

# The typed raw contract, as a Parquet source is expected to carry it: the ids and the price as
# numbers, the other columns as text, every one nullable.
_RAW_NUMBERS = {PRODUCT_ID: T.LongType(), CATEGORY_ID: T.LongType(), PRICE: T.DoubleType(), USER_ID: T.LongType()}
RAW_TYPED_SCHEMA = T.StructType([T.StructField(c, _RAW_NUMBERS.get(c, T.StringType()), True) for c in RAW_COLUMNS])

# Event types, their integer codes in features (0 is padding) and their strength, used when
# consecutive events on one item collapse into one sequence step.
EVENT_TYPES = ["view", "cart", "remove_from_cart", "purchase"]
EVENT_CODE = {"view": 1, "cart": 2, "remove_from_cart": 3, "purchase": 4}
EVENT_STRENGTH = {"view": 1, "remove_from_cart": 2, "cart": 3, "purchase": 4}
NUM_EVENT_CODES = 5

# ----------------------------------------------------------------------------- quarantine
REASON = "reason"
RAW_RECORD = "raw_record"
SOURCE_FILE = "source_file"

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField(REASON, T.StringType(), False),
        T.StructField(RAW_RECORD, T.StringType(), True),
        T.StructField(SOURCE_FILE, T.StringType(), True),
    ]
)

# Reason codes, in the order rules are applied (a row gets the first that matches).
REASON_MALFORMED = "malformed_line"
REASON_BAD_TIME = "bad_event_time"
REASON_OUT_OF_WINDOW = "out_of_window"  # event date is not the date of its file
REASON_FUTURE = "future_event_time"  # later than the start of the run
REASON_NULL_USER = "null_user_id"
REASON_NULL_PRODUCT = "null_product_id"
REASON_BAD_ID = "bad_id"
REASON_UNKNOWN_EVENT = "unknown_event_type"
REASON_BAD_PRICE = "bad_price"
REASON_CODES = [
    REASON_MALFORMED,
    REASON_BAD_TIME,
    REASON_OUT_OF_WINDOW,
    REASON_FUTURE,
    REASON_NULL_USER,
    REASON_NULL_PRODUCT,
    REASON_BAD_ID,
    REASON_UNKNOWN_EVENT,
    REASON_BAD_PRICE,
]

# The date a raw row is attributed to (the date in its file's name, else its event date; null
# when neither is known): the partition column of the quarantine.
LOAD_DATE = "load_date"

# What else can happen to a valid row in clean (the reconciliation's other terms).
FATE_DUPLICATE = "duplicate"
FATE_NEAR_DUPLICATE = "near_duplicate"
FATE_BOT = "bot"

# ----------------------------------------------------------------------------- clean events
SESSION_ID = "session_id"
EVENT_DATE = "event_date"

CLEAN_SCHEMA = T.StructType(
    [
        T.StructField(EVENT_TIME, T.TimestampType(), False),
        T.StructField(EVENT_TYPE, T.StringType(), False),
        T.StructField(PRODUCT_ID, T.LongType(), False),
        T.StructField(CATEGORY_ID, T.LongType(), True),
        T.StructField(CATEGORY_CODE, T.StringType(), True),
        T.StructField(BRAND, T.StringType(), True),
        T.StructField(PRICE, T.DoubleType(), True),
        T.StructField(USER_ID, T.StringType(), False),  # keyed-hash pseudonym, hex
        T.StructField(SESSION_ID, T.StringType(), False),
        T.StructField(EVENT_DATE, T.DateType(), False),  # partition column
    ]
)

# ----------------------------------------------------------------------------- features
# Item indices: 0 is padding, 1 is out-of-vocabulary, real items start at FIRST_ITEM_INDEX.
PAD_INDEX = 0
OOV_INDEX = 1
FIRST_ITEM_INDEX = 2
# A slot of a top-K list left empty (fewer eligible items than K); empty slots only trail.
EMPTY_SLOT = -1

ITEM_IDX = "item_idx"
CATEGORY_IDX = "category_idx"
BRAND_IDX = "brand_idx"
PRICE_BUCKET = "price_bucket"
TRAIN_COUNT = "train_count"
PRETEST_COUNT = "pretest_count"

ITEM_VOCAB_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(PRODUCT_ID, T.LongType(), False),
        T.StructField(CATEGORY_IDX, T.IntegerType(), False),  # 0 = unknown
        T.StructField(BRAND_IDX, T.IntegerType(), False),  # 0 = unknown / rare
        T.StructField(PRICE_BUCKET, T.IntegerType(), False),  # 0 = unknown, 1..price_buckets
        T.StructField(TRAIN_COUNT, T.LongType(), False),  # events before the validation cutoff
        T.StructField(PRETEST_COUNT, T.LongType(), False),  # events before the test cutoff
    ]
)

# One training window: L+1 steps, left-padded with 0; inputs are [:-1], targets are [1:].
ITEM_SEQ = "item_seq"
EVENT_SEQ = "event_seq"
GAP_SEQ = "gap_seq"

TRAIN_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_SEQ, T.ArrayType(T.IntegerType(), False), False),
        T.StructField(EVENT_SEQ, T.ArrayType(T.IntegerType(), False), False),
        T.StructField(GAP_SEQ, T.ArrayType(T.IntegerType(), False), False),
    ]
)
# The time of a window's last step (its last target): incremental training picks the windows of
# the days its parent did not train on by it. Written by featurize beside TRAIN_SCHEMA's columns
# (readers of the windows need only those; features made before it lack the column).
TARGET_TIME = "target_time"
TRAIN_TABLE_SCHEMA = T.StructType([*TRAIN_SCHEMA.fields, T.StructField(TARGET_TIME, T.TimestampType(), False)])

# One evaluation row per user: history before the cutoff (L steps, left-padded), every item
# seen before the cutoff, and the in-vocabulary items first met in the window after it.
HIST_ITEMS = "hist_items"
HIST_EVENTS = "hist_events"
HIST_GAPS = "hist_gaps"
SEEN_ITEMS = "seen_items"
TARGET_ITEMS = "target_items"
TARGET_EVENTS = "target_events"

HISTORY_FIELDS = [
    T.StructField(USER_ID, T.StringType(), False),
    T.StructField(HIST_ITEMS, T.ArrayType(T.IntegerType(), False), False),
    T.StructField(HIST_EVENTS, T.ArrayType(T.IntegerType(), False), False),
    T.StructField(HIST_GAPS, T.ArrayType(T.IntegerType(), False), False),
    T.StructField(SEEN_ITEMS, T.ArrayType(T.IntegerType(), False), False),
]
EVAL_SCHEMA = T.StructType(
    HISTORY_FIELDS
    + [
        T.StructField(TARGET_ITEMS, T.ArrayType(T.IntegerType(), False), False),
        T.StructField(TARGET_EVENTS, T.ArrayType(T.IntegerType(), False), False),
    ]
)
# Latest history of every user up to the end of the data: the input of batch scoring.
USER_HISTORY_SCHEMA = T.StructType(HISTORY_FIELDS)

# Vocabularies of categories, brands and users: 0 = null (no value), 1 = out of vocabulary
# (rarer than the minimum count, or unseen in training), real values from VOCAB_FIRST_INDEX.
VOCAB_NULL_INDEX = 0
VOCAB_OOV_INDEX = 1
VOCAB_FIRST_INDEX = 2
USER_IDX = "user_idx"

CATEGORY_VOCAB_SCHEMA = T.StructType(
    [
        T.StructField(CATEGORY_IDX, T.IntegerType(), False),
        T.StructField(CATEGORY_ID, T.LongType(), False),
        T.StructField(TRAIN_COUNT, T.LongType(), False),  # events before the validation cutoff
    ]
)
BRAND_VOCAB_SCHEMA = T.StructType(
    [
        T.StructField(BRAND_IDX, T.IntegerType(), False),
        T.StructField(BRAND, T.StringType(), False),
        T.StructField(TRAIN_COUNT, T.LongType(), False),
    ]
)
USER_VOCAB_SCHEMA = T.StructType(
    [
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(TRAIN_COUNT, T.LongType(), False),
    ]
)

# Point-in-time feature snapshots: each row is computed from events strictly before as_of.
# Snapshot "train" is as of the validation cutoff, "test" as of the test cutoff, "serve" as of
# the midnight after the last event.
SNAPSHOT = "snapshot"
AS_OF = "as_of"
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"
POPULARITY = "popularity"  # events in the featurize.popularity_days before as_of
LOG_PRICE_Z = "log_price_z"  # log1p(median price), standardised over the snapshot's items
AGE_DAYS = "age_days"  # days from first_seen to as_of
RECENCY_DAYS = "recency_days"  # days from last_seen to as_of
N_EVENTS = "n_events"
N_SESSIONS = "n_sessions"
PURCHASE_RATE = "purchase_rate"  # purchases / events
EVENT_COUNT_COLUMNS = {t: f"n_{t}" for t in EVENT_TYPES}  # events of each type

ITEM_FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(SNAPSHOT, T.StringType(), False),
        T.StructField(AS_OF, T.TimestampType(), False),
        T.StructField(PRODUCT_ID, T.LongType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),  # OOV_INDEX outside the vocabulary
        T.StructField(POPULARITY, T.LongType(), False),
        T.StructField(LOG_PRICE_Z, T.DoubleType(), False),  # 0.0 without a price
        T.StructField(PRICE_BUCKET, T.IntegerType(), False),  # 0 = unknown, 1..price_buckets
        T.StructField(CATEGORY_IDX, T.IntegerType(), False),
        T.StructField(BRAND_IDX, T.IntegerType(), False),
        T.StructField(AGE_DAYS, T.DoubleType(), False),
        T.StructField(FIRST_SEEN, T.TimestampType(), False),
        T.StructField(LAST_SEEN, T.TimestampType(), False),
    ]
)
USER_FEATURES_SCHEMA = T.StructType(
    [
        T.StructField(SNAPSHOT, T.StringType(), False),
        T.StructField(AS_OF, T.TimestampType(), False),
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),  # VOCAB_OOV_INDEX outside the vocabulary
        *[T.StructField(EVENT_COUNT_COLUMNS[t], T.LongType(), False) for t in EVENT_TYPES],
        T.StructField(N_EVENTS, T.LongType(), False),
        T.StructField(N_SESSIONS, T.LongType(), False),
        T.StructField(PURCHASE_RATE, T.DoubleType(), False),
        T.StructField(RECENCY_DAYS, T.DoubleType(), False),
        T.StructField(FIRST_SEEN, T.TimestampType(), False),
        T.StructField(LAST_SEEN, T.TimestampType(), False),
    ]
)

# Each user's cutoffs (features/split.py): the same instants for every user under the temporal
# protocol, the user's validation and test target times under leave_last_out (far in the future
# for a training-only user). Evaluation filters each user's exclusions by them.
VALIDATION_AT = "validation_at"
TEST_AT = "test_at"
USER_SPLIT_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(VALIDATION_AT, T.TimestampType(), False),
        T.StructField(TEST_AT, T.TimestampType(), False),
    ]
)

# Sub-folders of paths.features.
FEATURE_TABLES = (
    "item_vocab", "train", "validation", "test", "user_history",
    "category_vocab", "brand_vocab", "user_vocab", "item_features", "user_features", "user_split",
    "feedback_counts",
)
FEATURE_METADATA = "metadata.json"
# The data-quality report of featurize, under paths.reports.
FEATURE_QUALITY_REPORT = "featurize_quality.json"

# ----------------------------------------------------------------------------- recommendations
RANK = "rank"
SLOT = "slot"
ITEM_ID = "item_id"
SCORE = "score"
SOURCE = "source"
PROPENSITY = "propensity"
POLICY = "policy"
POLICY_VERSION = "policy_version"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
RUN_DATE = "run_date"

RECOMMENDATION_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(SLOT, T.IntegerType(), False),  # 0-based position: rank - 1
        T.StructField(ITEM_ID, T.LongType(), False),  # the raw product_id
        T.StructField(SCORE, T.FloatType(), False),
        T.StructField(SOURCE, T.StringType(), False),  # model | fallback | explore
        # P(the policy puts this item in this slot | the user's scores, the day's inputs), in (0, 1]
        T.StructField(PROPENSITY, T.DoubleType(), False),
        T.StructField(POLICY, T.StringType(), False),  # score.explore_policy: epsilon | thompson | boost
        T.StructField(POLICY_VERSION, T.StringType(), False),  # "<model_version>:<digest of the score settings>"
        T.StructField(MODEL_NAME, T.StringType(), False),
        T.StructField(MODEL_VERSION, T.StringType(), False),
        T.StructField(RUN_DATE, T.DateType(), False),  # partition column
    ]
)

# ----------------------------------------------------------------------------- feedback
# What the shop logs back (paths.feedback, Parquet): one row per exposure, i.e. one recommended
# item shown to a user, with the served row's key and propensity copied as served, and what the
# user did. clean (etl/feedback.py) checks every row against paths.recommendations: the key
# (user_id, item_id, run_date, slot) must name a served row and the propensity must be the
# served one. Non-nullable fields are required (a null is quarantined); purchased may be null
# (not logged), as may shown_at, policy and policy_version.
SHOWN_AT = "shown_at"
CLICKED = "clicked"
PURCHASED = "purchased"

FEEDBACK_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),  # the pseudonym, exactly as in the recommendations
        T.StructField(ITEM_ID, T.LongType(), False),  # the raw product_id
        T.StructField(RUN_DATE, T.DateType(), False),  # the recommendations partition that was served
        T.StructField(SLOT, T.IntegerType(), False),  # 0-based, as served
        T.StructField(PROPENSITY, T.DoubleType(), False),  # as served, in (0, 1]
        T.StructField(POLICY, T.StringType(), True),
        T.StructField(POLICY_VERSION, T.StringType(), True),
        T.StructField(SHOWN_AT, T.TimestampType(), True),
        T.StructField(CLICKED, T.BooleanType(), False),
        T.StructField(PURCHASED, T.BooleanType(), True),
    ]
)
# One exposure: a served row of the recommendations.
EXPOSURE_KEY = [USER_ID, ITEM_ID, RUN_DATE, SLOT]

# paths.clean_feedback: the valid rows, one per exposure, partitioned by run_date (the column
# comes last, as a partitioned table reads back).
CLEAN_FEEDBACK_SCHEMA = T.StructType(
    [*[f for f in FEEDBACK_SCHEMA.fields if f.name != RUN_DATE], FEEDBACK_SCHEMA[RUN_DATE]]
)

# paths.feedback_quarantine: QUARANTINE_SCHEMA (raw_record = the row's contract columns as read,
# as JSON) partitioned by run_date (null when the row has none: Spark's null partition).
FEEDBACK_QUARANTINE_SCHEMA = T.StructType([*QUARANTINE_SCHEMA.fields, T.StructField(RUN_DATE, T.DateType(), True)])

# The lists the service answered without the batch's recommendations (real-time and fallback
# lists, serving/exposures.py), one row per item, under {paths.feedback}/_served_lists by run_date:
# the folder's leading "_" hides it from the readers of paths.feedback (Spark, pyarrow,
# io.HadoopFs.files). clean accepts an exposure whose key (EXPOSURE_KEY) and propensity match a
# row here as it accepts one that matches paths.recommendations (etl/feedback.py).
SERVED_LISTS_FOLDER = "_served_lists"
ANSWERED_BY = "answered_by"  # realtime | fallback
SERVED_AT = "served_at"
SERVED_LIST_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),  # the pseudonym
        T.StructField(ITEM_ID, T.LongType(), False),  # the shop's product id
        T.StructField(SLOT, T.IntegerType(), False),
        T.StructField(PROPENSITY, T.DoubleType(), False),
        T.StructField(POLICY, T.StringType(), True),
        T.StructField(POLICY_VERSION, T.StringType(), True),
        T.StructField(SCORE, T.FloatType(), True),
        T.StructField(SOURCE, T.StringType(), True),  # model | fallback | explore
        T.StructField(MODEL_VERSION, T.StringType(), True),
        T.StructField(ANSWERED_BY, T.StringType(), True),
        T.StructField(SERVED_AT, T.TimestampType(), True),
        T.StructField(RUN_DATE, T.DateType(), False),  # partition column
    ]
)
# Reasons, in the order they are tested (a row gets the first that matches); a value of the
# wrong type counts as missing.
FEEDBACK_NULL_ITEM = "null_item_id"
FEEDBACK_NULL_RUN_DATE = "null_run_date"
FEEDBACK_NULL_SLOT = "null_slot"
FEEDBACK_NEGATIVE_SLOT = "negative_slot"
FEEDBACK_NULL_PROPENSITY = "null_propensity"  # null or NaN
FEEDBACK_NONPOSITIVE_PROPENSITY = "nonpositive_propensity"  # <= 0
FEEDBACK_PROPENSITY_ABOVE_ONE = "propensity_above_one"
FEEDBACK_NULL_CLICKED = "null_clicked"
FEEDBACK_UNKNOWN_EXPOSURE = "unknown_exposure"  # no served row with the same key
FEEDBACK_PROPENSITY_DIFFERS = "propensity_differs_from_served"  # by more than 1e-9 relative
FEEDBACK_DUPLICATE = "duplicate_exposure"  # a valid row's key seen again: one is kept
FEEDBACK_REASON_CODES = [
    REASON_NULL_USER,
    FEEDBACK_NULL_ITEM,
    FEEDBACK_NULL_RUN_DATE,
    FEEDBACK_NULL_SLOT,
    FEEDBACK_NEGATIVE_SLOT,
    FEEDBACK_NULL_PROPENSITY,
    FEEDBACK_NONPOSITIVE_PROPENSITY,
    FEEDBACK_PROPENSITY_ABOVE_ONE,
    FEEDBACK_NULL_CLICKED,
    FEEDBACK_UNKNOWN_EXPOSURE,
    FEEDBACK_PROPENSITY_DIFFERS,
    FEEDBACK_DUPLICATE,
]

# Feature table feedback_counts: clean feedback per item over the run_dates before the serve
# snapshot; what score.feedback_counts_path reads (scoring/score.py read_feedback_counts).
EXPOSURES = "exposures"
CLICKS = "clicks"
FEEDBACK_COUNTS_SCHEMA = T.StructType(
    [
        T.StructField(PRODUCT_ID, T.LongType(), False),
        T.StructField(EXPOSURES, T.LongType(), False),
        T.StructField(CLICKS, T.LongType(), False),  # exposures with clicked = true
    ]
)

# ----------------------------------------------------------------------------- string product ids
# paths.product_ids (clean.id_types.product_id=string only, see product_ids.py): the key clean
# gives each product (its product_id in every layer from clean to the scoring internals) and
# the id as it came in, by the event_date it was seen on (as the clean events).
ORIGINAL_ID = "original_id"
PRODUCT_IDS_SCHEMA = T.StructType(
    [
        T.StructField(PRODUCT_ID, T.LongType(), False),  # the 63-bit key
        T.StructField(ORIGINAL_ID, T.StringType(), False),  # the product id as it came in, trimmed
        T.StructField(EVENT_DATE, T.DateType(), False),  # partition column
    ]
)
# The fields that carry the shop's product id outside the pipeline: a long under integer ids,
# the original text under string ids (RECOMMENDATION_SCHEMA, FEEDBACK_SCHEMA, FEEDBACK_COUNTS_SCHEMA).
_SHOP_PRODUCT_FIELDS = (ITEM_ID, PRODUCT_ID)


def with_product_ids(struct: T.StructType, id_type: str) -> T.StructType:
    """``struct`` (an output or feedback schema above) with its product id field typed for
    ``clean.id_types.product_id``: unchanged under integer ids, a string under string ids."""
    if id_type != ID_STRING:
        return struct
    return T.StructType([T.StructField(f.name, T.StringType(), f.nullable) if f.name in _SHOP_PRODUCT_FIELDS else f
                         for f in struct.fields])


# ----------------------------------------------------------------------------- time gaps
# A step's time gap (seconds since the user's previous step) as a log2 bucket:
# 0 = padding or the first step, else 1 + min(floor(log2(1 + seconds)), MAX_GAP_LOG2).
MAX_GAP_LOG2 = 22
NUM_GAP_BUCKETS = MAX_GAP_LOG2 + 2


def gap_bucket_of(seconds: int) -> int:
    """The gap bucket of a whole number of seconds (the Python twin of features' ``gap_bucket``)."""
    if seconds < 0:
        raise ValueError(f"a time gap cannot be negative, got {seconds}")
    return 1 + min((int(seconds) + 1).bit_length() - 1, MAX_GAP_LOG2)


# ----------------------------------------------------------------------------- conforming


def relaxed(dtype: T.DataType) -> T.DataType:
    """``dtype`` with nulls allowed inside arrays, maps and structs.

    Spark cannot narrow nullability in a cast, and reads every Parquet array back as "elements
    may be null"; the strict schemas above stay the contract for what is written.
    """
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(relaxed(dtype.elementType), True)
    if isinstance(dtype, T.MapType):
        return T.MapType(dtype.keyType, relaxed(dtype.valueType), True)
    if isinstance(dtype, T.StructType):
        return T.StructType([T.StructField(f.name, relaxed(f.dataType), True) for f in dtype.fields])
    return dtype


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select ``schema``'s columns in order, cast to its types (nullability not narrowed)."""
    return df.select(*[F.col(f.name).cast(relaxed(f.dataType)).alias(f.name) for f in schema.fields])


# --- data preparation (moved from etl/, features/, data/) ---
# Parquet written without Spark (the generator's raw files, the feedback simulator's partitions):
# each Spark type as Arrow writes it, so that Spark reads the files back with the types above.
ARROW_TYPES = {
    T.StringType(): pa.string(), T.LongType(): pa.int64(), T.IntegerType(): pa.int32(),
    T.DoubleType(): pa.float64(), T.DateType(): pa.date32(), T.TimestampType(): pa.timestamp("us", tz="UTC"),
    T.BooleanType(): pa.bool_(),
}


def arrow_schema(struct: T.StructType) -> pa.Schema:
    """``struct`` as an Arrow schema: its names, its types as ARROW_TYPES writes them, its nullability."""
    return pa.schema([pa.field(f.name, ARROW_TYPES[f.dataType], nullable=f.nullable) for f in struct.fields])


# A raw Parquet file of the generator (data/generate.py).
RAW_ARROW_SCHEMA = arrow_schema(RAW_TYPED_SCHEMA)
# The feedback contract's columns, in order, as the simulator's frames hold them (data/feedback_sim.py).
FEEDBACK_COLUMNS = FEEDBACK_SCHEMA.fieldNames()
# One run_date partition's file of simulated feedback: FEEDBACK_SCHEMA but run_date, which the
# partition folder's name holds.
FEEDBACK_PARTITION_ARROW_SCHEMA = arrow_schema(T.StructType([f for f in FEEDBACK_SCHEMA.fields if f.name != RUN_DATE]))
