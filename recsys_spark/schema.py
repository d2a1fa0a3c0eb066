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
  scoring      what a scoring task reads besides the history, and the lists it yields (Arrow)
  evaluation   the per-user metrics table and the columns off-policy evaluation adds

A column has one type in every table (``typed``); a table is the list of its columns (``table``).
Frames that live inside one function (a join's keys, a fit's intermediate) name their own columns.
"""

from __future__ import annotations

from typing import Iterable, Sequence

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

# ----------------------------------------------------------------------------- tables
# A column has one type in every table that holds it: each section below gives its columns
# their type (typed), and a table is the list of its columns (table), non-nullable but for the
# optional ones. The raw contract above is typed by its own rules (text, or the typed Parquet).
_TYPES: dict[str, T.DataType] = {}


def typed(dtype: T.DataType, *names: str) -> None:
    """Give each of ``names`` the type ``dtype``; a name already given another type is an error."""
    for name in names:
        if _TYPES.setdefault(name, dtype) != dtype:
            raise TypeError(f"column {name!r} is {_TYPES[name].simpleString()}, not {dtype.simpleString()}")


def table(*names: str, optional: Iterable[str] = ()) -> T.StructType:
    """A table of ``names``, in order, each of its one type; only the ``optional`` ones nullable."""
    optional = set(optional)
    return T.StructType([T.StructField(name, _TYPES[name], name in optional) for name in names])


_INTS = T.ArrayType(T.IntegerType(), False)  # a sequence of indices or codes, no nulls


# Parquet and Arrow batches written or read without Spark (the generator's raw files, the
# feedback simulator's partitions, the service's exposures and served lists, the scoring tasks'
# Arrow batches): each Spark type as Arrow holds it, so that Spark reads them with the types here.
ARROW_TYPES = {
    T.StringType(): pa.string(), T.LongType(): pa.int64(), T.IntegerType(): pa.int32(), T.ByteType(): pa.int8(),
    T.DoubleType(): pa.float64(), T.FloatType(): pa.float32(), T.DateType(): pa.date32(),
    T.TimestampType(): pa.timestamp("us", tz="UTC"), T.BooleanType(): pa.bool_(),
}


def arrow_type(dtype: T.DataType) -> pa.DataType:
    """``dtype`` as Arrow holds it (ARROW_TYPES; an array as a list of its element's type)."""
    if isinstance(dtype, T.ArrayType):
        return pa.list_(arrow_type(dtype.elementType))
    return ARROW_TYPES[dtype]


def arrow_schema(struct: T.StructType) -> pa.Schema:
    """``struct`` as an Arrow schema: its names, its types as arrow_type writes them, its nullability."""
    return pa.schema([pa.field(f.name, arrow_type(f.dataType), nullable=f.nullable) for f in struct.fields])


def arrow_table(*names: str) -> pa.Schema:
    """The Arrow batch of ``names`` (table's types), every field nullable: the batches passed
    between Spark and the rankers, which Arrow does not check for nulls."""
    return arrow_schema(table(*names, optional=names))


# ----------------------------------------------------------------------------- quarantine
REASON = "reason"
RAW_RECORD = "raw_record"  # the row's content as it was read
SOURCE_FILE = "source_file"
typed(T.StringType(), REASON, RAW_RECORD, SOURCE_FILE)

QUARANTINE_SCHEMA = table(REASON, RAW_RECORD, SOURCE_FILE, optional=(RAW_RECORD, SOURCE_FILE))

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
# user_id: from clean on, the keyed-hash pseudonym (hex); product_id: the shop's id (its 63-bit
# key under string ids, see product_ids below); event_date: the partition column.
SESSION_ID = "session_id"
EVENT_DATE = "event_date"
typed(T.StringType(), EVENT_TYPE, CATEGORY_CODE, BRAND, USER_ID, SESSION_ID)
typed(T.LongType(), PRODUCT_ID, CATEGORY_ID)
typed(T.TimestampType(), EVENT_TIME)
typed(T.DoubleType(), PRICE)
typed(T.DateType(), EVENT_DATE, LOAD_DATE)
# paths.quarantine as it reads back: QUARANTINE_SCHEMA partitioned by load_date.
QUARANTINE_TABLE_SCHEMA = table(REASON, RAW_RECORD, SOURCE_FILE, LOAD_DATE,
                                optional=(RAW_RECORD, SOURCE_FILE, LOAD_DATE))

CLEAN_SCHEMA = table(EVENT_TIME, EVENT_TYPE, PRODUCT_ID, CATEGORY_ID, CATEGORY_CODE, BRAND, PRICE, USER_ID,
                     SESSION_ID, EVENT_DATE, optional=(CATEGORY_ID, CATEGORY_CODE, BRAND, PRICE))

# ----------------------------------------------------------------------------- features
# Item indices: 0 is padding, 1 is out-of-vocabulary, real items start at FIRST_ITEM_INDEX.
PAD_INDEX = 0
OOV_INDEX = 1
FIRST_ITEM_INDEX = 2
# A slot of a top-K list left empty (fewer eligible items than K); empty slots only trail.
EMPTY_SLOT = -1

ITEM_IDX = "item_idx"  # OOV_INDEX outside the vocabulary
CATEGORY_IDX = "category_idx"  # 0 = unknown
BRAND_IDX = "brand_idx"  # 0 = unknown / rare
PRICE_BUCKET = "price_bucket"  # 0 = unknown, 1..price_buckets
TRAIN_COUNT = "train_count"  # events before the validation cutoff
PRETEST_COUNT = "pretest_count"  # events before the test cutoff
typed(T.IntegerType(), ITEM_IDX, CATEGORY_IDX, BRAND_IDX, PRICE_BUCKET)
typed(T.LongType(), TRAIN_COUNT, PRETEST_COUNT)

ITEM_VOCAB_SCHEMA = table(ITEM_IDX, PRODUCT_ID, CATEGORY_IDX, BRAND_IDX, PRICE_BUCKET, TRAIN_COUNT, PRETEST_COUNT)

# One training window: L+1 steps, left-padded with 0; inputs are [:-1], targets are [1:].
ITEM_SEQ = "item_seq"
EVENT_SEQ = "event_seq"
GAP_SEQ = "gap_seq"
# The time of a window's last step (its last target): incremental training picks the windows of
# the days its parent did not train on by it. Written by featurize beside TRAIN_SCHEMA's columns
# (readers of the windows need only those; features made before it lack the column).
TARGET_TIME = "target_time"
typed(_INTS, ITEM_SEQ, EVENT_SEQ, GAP_SEQ)
typed(T.TimestampType(), TARGET_TIME)

TRAIN_SCHEMA = table(ITEM_SEQ, EVENT_SEQ, GAP_SEQ)
TRAIN_TABLE_SCHEMA = table(ITEM_SEQ, EVENT_SEQ, GAP_SEQ, TARGET_TIME)

# One evaluation row per user: history before the cutoff (L steps, left-padded), every item
# seen before the cutoff, and the in-vocabulary items first met in the window after it.
HIST_ITEMS = "hist_items"
HIST_EVENTS = "hist_events"
HIST_GAPS = "hist_gaps"
SEEN_ITEMS = "seen_items"
TARGET_ITEMS = "target_items"
TARGET_EVENTS = "target_events"
typed(_INTS, HIST_ITEMS, HIST_EVENTS, HIST_GAPS, SEEN_ITEMS, TARGET_ITEMS, TARGET_EVENTS)

HISTORY_FIELDS = table(USER_ID, HIST_ITEMS, HIST_EVENTS, HIST_GAPS, SEEN_ITEMS).fields
EVAL_SCHEMA = T.StructType([*HISTORY_FIELDS, *table(TARGET_ITEMS, TARGET_EVENTS).fields])
# Latest history of every user up to the end of the data: the input of batch scoring.
USER_HISTORY_SCHEMA = T.StructType(HISTORY_FIELDS)

# Vocabularies of categories, brands and users: 0 = null (no value), 1 = out of vocabulary
# (rarer than the minimum count, or unseen in training), real values from VOCAB_FIRST_INDEX.
VOCAB_NULL_INDEX = 0
VOCAB_OOV_INDEX = 1
VOCAB_FIRST_INDEX = 2
USER_IDX = "user_idx"  # VOCAB_OOV_INDEX outside the vocabulary
typed(T.IntegerType(), USER_IDX)

CATEGORY_VOCAB_SCHEMA = table(CATEGORY_IDX, CATEGORY_ID, TRAIN_COUNT)
BRAND_VOCAB_SCHEMA = table(BRAND_IDX, BRAND, TRAIN_COUNT)
USER_VOCAB_SCHEMA = table(USER_IDX, USER_ID, TRAIN_COUNT)

# Point-in-time feature snapshots: each row is computed from events strictly before as_of.
# Snapshot "train" is as of the validation cutoff, "test" as of the test cutoff, "serve" as of
# the midnight after the last event.
SNAPSHOT = "snapshot"
AS_OF = "as_of"
FIRST_SEEN = "first_seen"
LAST_SEEN = "last_seen"
POPULARITY = "popularity"  # events in the featurize.popularity_days before as_of
LOG_PRICE_Z = "log_price_z"  # log1p(median price), standardised over the snapshot's items; 0.0 without a price
AGE_DAYS = "age_days"  # days from first_seen to as_of
RECENCY_DAYS = "recency_days"  # days from last_seen to as_of
N_EVENTS = "n_events"
N_SESSIONS = "n_sessions"
PURCHASE_RATE = "purchase_rate"  # purchases / events
EVENT_COUNT_COLUMNS = {t: f"n_{t}" for t in EVENT_TYPES}  # events of each type
typed(T.StringType(), SNAPSHOT)
typed(T.TimestampType(), AS_OF, FIRST_SEEN, LAST_SEEN)
typed(T.LongType(), POPULARITY, N_EVENTS, N_SESSIONS, *EVENT_COUNT_COLUMNS.values())
typed(T.DoubleType(), LOG_PRICE_Z, AGE_DAYS, RECENCY_DAYS, PURCHASE_RATE)

ITEM_FEATURES_SCHEMA = table(SNAPSHOT, AS_OF, PRODUCT_ID, ITEM_IDX, POPULARITY, LOG_PRICE_Z, PRICE_BUCKET,
                             CATEGORY_IDX, BRAND_IDX, AGE_DAYS, FIRST_SEEN, LAST_SEEN)
USER_FEATURES_SCHEMA = table(SNAPSHOT, AS_OF, USER_ID, USER_IDX, *EVENT_COUNT_COLUMNS.values(), N_EVENTS,
                             N_SESSIONS, PURCHASE_RATE, RECENCY_DAYS, FIRST_SEEN, LAST_SEEN)

# Each user's cutoffs (features/split.py): the same instants for every user under the temporal
# protocol, the user's validation and test target times under leave_last_out (far in the future
# for a training-only user). Evaluation filters each user's exclusions by them.
VALIDATION_AT = "validation_at"
TEST_AT = "test_at"
typed(T.TimestampType(), VALIDATION_AT, TEST_AT)
USER_SPLIT_SCHEMA = table(USER_ID, VALIDATION_AT, TEST_AT)

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
SLOT = "slot"  # 0-based position in the list: rank - 1
ITEM_ID = "item_id"  # the shop's product_id
SCORE = "score"
SOURCE = "source"  # model | fallback | explore
# P(the policy puts this item in this slot | the user's scores, the day's inputs), in (0, 1]
PROPENSITY = "propensity"
POLICY = "policy"  # score.explore_policy: epsilon | thompson | boost
POLICY_VERSION = "policy_version"  # "<model_version>:<digest of the score settings>"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
RUN_DATE = "run_date"  # the partition column
typed(T.StringType(), SOURCE, POLICY, POLICY_VERSION, MODEL_NAME, MODEL_VERSION)
typed(T.IntegerType(), RANK, SLOT)
typed(T.LongType(), ITEM_ID)
typed(T.FloatType(), SCORE)
typed(T.DoubleType(), PROPENSITY)
typed(T.DateType(), RUN_DATE)

RECOMMENDATION_SCHEMA = table(USER_ID, RANK, SLOT, ITEM_ID, SCORE, SOURCE, PROPENSITY, POLICY, POLICY_VERSION,
                              MODEL_NAME, MODEL_VERSION, RUN_DATE)

# ----------------------------------------------------------------------------- feedback
# What the shop logs back (paths.feedback, Parquet): one row per exposure, i.e. one recommended
# item shown to a user, with the served row's key and propensity copied as served, and what the
# user did. clean (etl/feedback.py) checks every row against paths.recommendations: the key
# (user_id, item_id, run_date, slot) must name a served row and the propensity must be the
# served one. Non-nullable fields are required (a null is quarantined); purchased may be null
# (not logged), as may shown_at, policy and policy_version. user_id is the pseudonym exactly as
# in the recommendations; run_date the recommendations partition that was served.
SHOWN_AT = "shown_at"
CLICKED = "clicked"
PURCHASED = "purchased"
typed(T.TimestampType(), SHOWN_AT)
typed(T.BooleanType(), CLICKED, PURCHASED)

FEEDBACK_SCHEMA = table(USER_ID, ITEM_ID, RUN_DATE, SLOT, PROPENSITY, POLICY, POLICY_VERSION, SHOWN_AT, CLICKED,
                        PURCHASED, optional=(POLICY, POLICY_VERSION, SHOWN_AT, PURCHASED))
# One exposure: a served row of the recommendations.
EXPOSURE_KEY = [USER_ID, ITEM_ID, RUN_DATE, SLOT]

# paths.clean_feedback: the valid rows, one per exposure, partitioned by run_date (the column
# comes last, as a partitioned table reads back).
CLEAN_FEEDBACK_SCHEMA = T.StructType(
    [*[f for f in FEEDBACK_SCHEMA.fields if f.name != RUN_DATE], FEEDBACK_SCHEMA[RUN_DATE]]
)

# paths.feedback_quarantine: QUARANTINE_SCHEMA (raw_record = the row's contract columns as read,
# as JSON) partitioned by run_date (null when the row has none: Spark's null partition).
FEEDBACK_QUARANTINE_SCHEMA = table(REASON, RAW_RECORD, SOURCE_FILE, RUN_DATE,
                                   optional=(RAW_RECORD, SOURCE_FILE, RUN_DATE))

# The lists the service answered without the batch's recommendations (real-time and fallback
# lists, serving/exposures.py), one row per item, under {paths.feedback}/_served_lists by run_date:
# the folder's leading "_" hides it from the readers of paths.feedback (Spark, pyarrow,
# io.HadoopFs.files). clean accepts an exposure whose key (EXPOSURE_KEY) and propensity match a
# row here as it accepts one that matches paths.recommendations (etl/feedback.py).
SERVED_LISTS_FOLDER = "_served_lists"
ANSWERED_BY = "answered_by"  # realtime | fallback
SERVED_AT = "served_at"
typed(T.StringType(), ANSWERED_BY)
typed(T.TimestampType(), SERVED_AT)
_SERVED_KEY = (USER_ID, ITEM_ID, SLOT, PROPENSITY)
_SERVED_AS = (POLICY, POLICY_VERSION, SCORE, SOURCE, MODEL_VERSION, ANSWERED_BY, SERVED_AT)
SERVED_LIST_SCHEMA = table(*_SERVED_KEY, *_SERVED_AS, RUN_DATE, optional=_SERVED_AS)
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
CLICKS = "clicks"  # exposures with clicked = true
typed(T.LongType(), EXPOSURES, CLICKS)
FEEDBACK_COUNTS_SCHEMA = table(PRODUCT_ID, EXPOSURES, CLICKS)

# ----------------------------------------------------------------------------- string product ids
# paths.product_ids (clean.id_types.product_id=string only, see product_ids.py): the key clean
# gives each product (its product_id in every layer from clean to the scoring internals) and
# the id as it came in (trimmed), by the event_date it was seen on (as the clean events).
ORIGINAL_ID = "original_id"
typed(T.StringType(), ORIGINAL_ID)
PRODUCT_IDS_SCHEMA = table(PRODUCT_ID, ORIGINAL_ID, EVENT_DATE)
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


# ----------------------------------------------------------------------------- scoring
# What a scoring task reads for each user besides the history (USER_HISTORY_SCHEMA), built in
# Spark by scoring/inputs.py, and each product's recent reach, which the fallback ranks by.
EXCLUDE_PRODUCTS = "exclude_products"  # the user's products never to recommend, sorted, distinct
USER_CATEGORY = "user_category"  # category_id of the user's latest categorised event, or null
USER_KEY = "user_key"  # hash of (user, seed, run date), seeds the user's exploration
USER_VECTOR = "user_vector"  # array<float>: a given user vector (benchmarks), see VectorEncoder
RECENT_USERS = "recent_users"  # distinct users with an event on the product in the recent window
ALL_USERS = "all_users"  # distinct users with an event on the product, all time
typed(T.ArrayType(T.LongType(), False), EXCLUDE_PRODUCTS)
typed(T.LongType(), USER_CATEGORY, USER_KEY, RECENT_USERS, ALL_USERS)

CONTEXT_SCHEMA = table(USER_ID, EXCLUDE_PRODUCTS, USER_CATEGORY, optional=(USER_CATEGORY,))
PRODUCT_STATS_SCHEMA = table(PRODUCT_ID, CATEGORY_ID, RECENT_USERS, ALL_USERS, optional=(CATEGORY_ID,))
# The row a Recommender reads for one user (the history and the context above), in Arrow.
SCORING_ROW_SCHEMA = arrow_table(USER_ID, HIST_ITEMS, HIST_EVENTS, HIST_GAPS, SEEN_ITEMS, EXCLUDE_PRODUCTS,
                                 USER_CATEGORY, USER_KEY)

# A user's list as a Recommender yields it: one row of arrays, best first (WIDE_SCHEMA), which
# Spark explodes into RECOMMENDATION_SCHEMA rows; the model's pyfunc answers item_ids and scores.
ITEM_IDS = "item_ids"  # the products
SCORES = "scores"
SOURCE_CODES = "source_codes"  # the position of each item's source in scoring.recommender.SOURCES
PROPENSITIES = "propensities"  # the probability of each item in its slot
typed(T.ArrayType(T.LongType(), False), ITEM_IDS)
typed(T.ArrayType(T.FloatType(), False), SCORES)
typed(T.ArrayType(T.ByteType(), False), SOURCE_CODES)
typed(T.ArrayType(T.DoubleType(), False), PROPENSITIES)
WIDE_SCHEMA = arrow_table(USER_ID, ITEM_IDS, SCORES, SOURCE_CODES, PROPENSITIES)

# ----------------------------------------------------------------------------- evaluation
# The column of excluded item indices, beside EVAL_SCHEMA rows (scoring/exclusions.py).
EXCLUDE_ITEMS = "exclude_items"
# reports/per_user_metrics: one row per ranker, segment and user, with the user's metrics (named
# by evaluation.per_user.all_metric_names) and the ranker's top items; USERS counts a segment's users.
RANKER = "ranker"
SEGMENT = "segment"
NUM_TARGETS = "num_targets"
TOP_ITEMS = "top_items"
USERS = "users"
typed(_INTS, EXCLUDE_ITEMS, TOP_ITEMS)
typed(T.StringType(), RANKER, SEGMENT)
typed(T.IntegerType(), NUM_TARGETS)


def per_user_metrics_schema(metric_names: Sequence[str]) -> T.StructType:
    """The per-user metrics table with the metric columns ``metric_names`` (doubles)."""
    metrics = [T.StructField(name, T.DoubleType(), False) for name in metric_names]
    return T.StructType([*table(RANKER, SEGMENT, USER_ID, NUM_TARGETS).fields, *metrics, *table(TOP_ITEMS).fields])


# Columns off-policy evaluation (evaluation/offpolicy.py) adds to the logged feedback rows: the
# target policy's propensity of the logged placement, and both policies' click models.
TARGET_PROPENSITY = "target_propensity"
Q_LOGGED = "q_logged"
Q_TARGET = "q_target"


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


# ----------------------------------------------------------------------------- raw and feedback files
# A raw Parquet file of the generator (data/generate.py).
RAW_ARROW_SCHEMA = arrow_schema(RAW_TYPED_SCHEMA)
# The feedback contract's columns, in order, as the simulator's frames hold them (data/feedback_sim.py).
FEEDBACK_COLUMNS = FEEDBACK_SCHEMA.fieldNames()


def partition_arrow_schema(struct: T.StructType, id_type: str = ID_INTEGER) -> pa.Schema:
    """One run_date partition's file of ``struct`` (FEEDBACK_SCHEMA, SERVED_LIST_SCHEMA) written
    without Spark: its fields but run_date, which the folder's name holds, the product id typed
    for ``id_type`` (with_product_ids), as Arrow."""
    fields = with_product_ids(struct, id_type).fields
    return arrow_schema(T.StructType([f for f in fields if f.name != RUN_DATE]))


# One partition's file of simulated feedback (data/feedback_sim.py).
FEEDBACK_PARTITION_ARROW_SCHEMA = partition_arrow_schema(FEEDBACK_SCHEMA)
