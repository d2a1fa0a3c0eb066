"""The ``publish`` stage: a run date's recommendations into the Redis store, served atomically.

Input: the ``run_date=<publish.run_date>`` partition of ``paths.recommendations`` (the latest
date present when empty). Output: one version of the store (serving/store.py, key layout in its
docstring and the README's "Publish to Redis"), made current once all of it is written.

How: the driver describes the partition in one pass (users, rows, the model and policy it was
scored with, an order-free digest of its rows) and names the version after it,
``<run_date>-<model_version>-<digest>``: publishing the same partition again writes the same
keys and values and leaves the same version current. It writes the version's meta, then Spark
tasks group the rows per user and write one JSON value per user in pipelined batches of
``serve.publish_batch``, each task returning the number of keys Redis acknowledged (rows, not an
accumulator: a retried task's count is not added twice). Only when those counts add up to the
partition's users does the driver switch ``current`` to the new version; otherwise it raises
and the version served stays as it was. The switch keeps ``serve.keep_versions`` versions and
deletes the keys of the others.

A date older than the one served is skipped (a backfill must not replace newer lists) unless
``publish.allow_older``. ``publish.rollback=true`` (``recsys publish --rollback``) instead makes the version published
before the current one current again; it reads no Parquet.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa
import redis
from pyspark.errors import PythonException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, schema, tracking
from recsys_spark.config import Config, ServeConfig
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.serving.store import LIST_FIELDS, RecommendationStore, connect, encode_list, redis_password

log = logging.getLogger(__name__)

# A user's value: store.LIST_FIELDS <- these recommendation columns, ordered by slot.
LIST_COLUMNS = dict(zip(LIST_FIELDS, (schema.ITEM_ID, schema.SCORE, schema.SLOT, schema.SOURCE, schema.PROPENSITY)))
# Columns that hold one value per run date (score writes them as constants).
CONSTANT_COLUMNS = (schema.MODEL_NAME, schema.MODEL_VERSION, schema.POLICY, schema.POLICY_VERSION)
KEYS_WRITTEN = "keys"


@dataclass(frozen=True)
class Partition:
    """What the driver knows of the partition it publishes (the version's meta but published_at)."""

    run_date: str
    model_name: str
    model_version: str
    policy: str
    policy_version: str
    users: int
    rows: int
    k: int  # the longest list
    source_path: str
    digest: str  # 16 hex digits: the XOR of every row's xxhash64, independent of the rows' order

    @property
    def version(self) -> str:
        """``<run_date>-<model_version>-<10 hex digits>``: the same partition gives the same version."""
        content = f"{self.run_date}|{self.model_name}|{self.policy_version}|{self.users}|{self.rows}|{self.digest}"
        model = re.sub(r"[^A-Za-z0-9._-]", "_", self.model_version)
        return f"{self.run_date}-{model}-{hashlib.sha256(content.encode()).hexdigest()[:10]}"

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "digest"}


def chosen_date(spark: SparkSession, path: str, run_date: str) -> str:
    """``run_date`` if ``path`` holds it, else the latest date it holds when ``run_date`` is empty.

    Raises:
        InputError: no partition of that date (or none at all), naming the path and the key.
    """
    dates = io.recommendation_dates(spark, path)
    if not dates:
        raise InputError(f"{path} holds no run_date partition with data: run `recsys score` first "
                         f"(config key paths.recommendations)")
    if not run_date:
        return dates[-1]
    if run_date not in dates:
        raise InputError(f"{path} has no {schema.RUN_DATE}={run_date} partition (config key publish.run_date); "
                         f"latest dates: {', '.join(dates[-5:])}")
    return run_date


def describe(recs: DataFrame, run_date: str, source_path: str) -> Partition:
    """One pass over a run date's rows (RECOMMENDATION_SCHEMA): counts, constants and digest.

    Raises:
        DataQualityError: no rows, or a constant column with several values (naming it).
    """
    row = recs.agg(
        F.count_distinct(schema.USER_ID).alias("users"),
        F.count(F.lit(1)).alias("rows"),
        F.max(F.col(schema.SLOT) + 1).alias("k"),
        F.bit_xor(F.xxhash64(*recs.columns)).alias("digest"),
        *[F.collect_set(c).alias(c) for c in CONSTANT_COLUMNS],
    ).first()
    where = f"{source_path}/{schema.RUN_DATE}={run_date}"
    if not row["users"]:
        raise DataQualityError(f"publish: {where} holds no recommendations (config key publish.run_date)")
    for column in CONSTANT_COLUMNS:
        if len(row[column]) != 1:
            raise DataQualityError(f"publish: {where} holds {len(row[column])} values of column {column} "
                                   f"({', '.join(sorted(map(str, row[column]))[:5])}): one score run per date")
    return Partition(
        run_date=run_date, users=int(row["users"]), rows=int(row["rows"]), k=int(row["k"]), source_path=source_path,
        digest=f"{row['digest'] & (2**64 - 1):016x}", **{c: str(row[c][0]) for c in CONSTANT_COLUMNS},
    )


def user_lists(recs: DataFrame) -> DataFrame:
    """Args: RECOMMENDATION_SCHEMA rows. Returns: one row per user: user_id and the arrays of
    LIST_FIELDS (items, scores, slots, sources, propensities), each ordered by slot."""
    entry = F.struct(*[F.col(c) for c in (schema.SLOT, *[v for v in LIST_COLUMNS.values() if v != schema.SLOT])])
    grouped = recs.groupBy(schema.USER_ID).agg(F.sort_array(F.collect_list(entry)).alias("entries"))
    return grouped.select(schema.USER_ID, *[F.col(f"entries.{c}").alias(f) for f, c in LIST_COLUMNS.items()])


Batches = Iterator[pa.RecordBatch]


def list_writer(sc: ServeConfig, password: str | None, version: str) -> Callable[[Batches], Batches]:
    """The ``mapInArrow`` function of a publish task: write its users' values of ``version`` in
    pipelined batches of ``serve.publish_batch``; yield one row, the keys Redis acknowledged."""

    def write(batches: Batches) -> Batches:
        store = RecommendationStore(connect(sc, for_publish=True, password=password), sc.redis_prefix)
        written = 0
        try:
            for batch in batches:
                users = batch.column(schema.USER_ID).to_pylist()
                # to_pylist: int64 ids stay Python ints, strings stay strings, float32 widens exactly.
                arrays = [batch.column(name).to_pylist() for name in LIST_FIELDS]
                for start in range(0, len(users), sc.publish_batch):
                    chunk = range(start, min(start + sc.publish_batch, len(users)))
                    written += store.write_batch(version, [(users[i], encode_list(*(a[i] for a in arrays)))
                                                           for i in chunk])
        finally:
            store.close()
        yield pa.RecordBatch.from_pydict({KEYS_WRITTEN: pa.array([written], pa.int64())})

    return write


def write_lists(lists: DataFrame, sc: ServeConfig, password: str | None, version: str) -> int:
    """Write every user's value of ``version`` from the Spark tasks; returns the keys acknowledged."""
    counts = lists.mapInArrow(list_writer(sc, password, version),
                              T.StructType([T.StructField(KEYS_WRITTEN, T.LongType())]))
    return int(counts.agg(F.sum(KEYS_WRITTEN)).first()[0] or 0)


def check_written(part: Partition, version: str, written: int, served: str | None) -> None:
    """Raises: DataQualityError when the keys written are not the partition's users (no switch)."""
    if written != part.users:
        raise DataQualityError(
            f"publish: {written} user keys written for version {version} but "
            f"{part.source_path}/{schema.RUN_DATE}={part.run_date} holds {part.users} users: "
            f"not switched, {served or 'no version'} stays current")


def task_error(exc: Exception) -> str:
    """The last ``module.Error: message`` line of a Spark task's Python traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    found = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Timeout): ", ln)]
    return found[-1] if found else next((ln for ln in reversed(lines) if ln), type(exc).__name__)


def open_store(sc: ServeConfig) -> RecommendationStore:
    """The store at ``serve.redis_url``, with the writer's bounds. Raises: InputError when Redis
    does not answer."""
    store = RecommendationStore(connect(sc, for_publish=True), sc.redis_prefix)
    try:
        store.ping()
    except redis.exceptions.RedisError as exc:
        store.close()
        raise InputError(f"cannot reach Redis at {sc.redis_url} (config key serve.redis_url): {exc}") from None
    return store


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Publish a run date's recommendations and serve them, or roll back (``publish.rollback``).

    Returns:
        published (where), run_date, version, users, rows, k, seconds, users_per_s (users over
        the seconds from reading the Parquet to the switch), current, versions, dropped; or
        skipped (why), run_date, current for a date older than the one served.
    """
    if cfg.publish.rollback:
        return rollback(cfg)
    import mlflow  # not at the top: Spark tasks import this module for list_writer (mlflow: 2 s)

    sc = cfg.serve
    path = cfg.paths.resolve("recommendations")
    run_date = chosen_date(spark, path, cfg.publish.run_date)
    recs = io.read_recommendations(spark, path, cfg.clean.id_types[schema.PRODUCT_ID])
    recs = recs.where(F.col(schema.RUN_DATE) == F.lit(run_date).cast(T.DateType()))
    store = open_store(sc)
    try:
        served = store.current_version()
        skipped = older_than_served(store, served, run_date, path, cfg.publish.allow_older)
        if skipped is not None:
            return skipped
        with tracking.stage_run(cfg, "publish", run_date=run_date):
            done = publish_version(store, recs, run_date, path, sc, served)
            mlflow.set_tags({"version": done.version, "redis_prefix": sc.redis_prefix, "redis_url": sc.redis_url,
                             "model_version": done.part.model_version, "policy_version": done.part.policy_version})
            mlflow.log_metrics({"publish.users": done.part.users, "publish.rows": done.part.rows,
                                "publish.seconds": done.seconds, "publish.users_per_s": done.users_per_s})
    finally:
        store.close()
    log.info("publish: %s is current (%d users in %.1f s, %.0f users/s); kept %s, deleted %s", done.version,
             done.part.users, done.seconds, done.users_per_s, done.versions, done.dropped or "none")
    return done.summary(sc, path)


@dataclass(frozen=True)
class Published:
    """A version written and made current: the partition, how long it took, the versions kept."""

    part: Partition
    version: str
    seconds: float
    versions: list[str]
    dropped: list[str]

    @property
    def users_per_s(self) -> float:
        return self.part.users / self.seconds

    def summary(self, sc: ServeConfig, path: str) -> dict[str, Any]:
        part = self.part
        return {"published": f"{sc.redis_url} {sc.redis_prefix}:v:{self.version}:*",
                "source": f"{path}/{schema.RUN_DATE}={part.run_date}", "run_date": part.run_date,
                "version": self.version, "users": part.users, "rows": part.rows, "k": part.k,
                "model_version": part.model_version, "policy_version": part.policy_version,
                "seconds": round(self.seconds, 2), "users_per_s": round(self.users_per_s, 1), "current": self.version,
                "versions": self.versions, "dropped": self.dropped}


def older_than_served(store: RecommendationStore, served: str | None, run_date: str, path: str,
                      allow_older: bool) -> dict[str, Any] | None:
    """The stage's result when ``run_date`` is older than the date served (and ``publish.allow_older``
    is off): nothing is published. None when it may be published."""
    served_date = store.meta(served)["run_date"] if served else ""
    if run_date >= served_date or allow_older:
        return None
    log.warning("publish: %s=%s is older than the date served, %s (version %s): not published "
                "(publish.allow_older=true serves it)", schema.RUN_DATE, run_date, served_date, served)
    return {"skipped": f"{path}/{schema.RUN_DATE}={run_date}: older than the date served, {served_date} "
                       f"(publish.allow_older=true serves it)", "run_date": run_date, "current": served}


def publish_version(store: RecommendationStore, recs: DataFrame, run_date: str, path: str, sc: ServeConfig,
                    served: str | None) -> Published:
    """Describe the partition, write its version (meta, then every user's list from Spark tasks),
    check the keys written, switch. Raises: InputError (a task's Redis error), DataQualityError
    (keys written != users); either way nothing is switched."""
    started = time.perf_counter()
    part = describe(recs, run_date, path)
    version = part.version
    log.info("publish: %s/%s=%s, %d users, as version %s to %s (%s:*); serving %s", path, schema.RUN_DATE,
             run_date, part.users, version, sc.redis_url, sc.redis_prefix, served or "nothing yet")
    store.write_meta(version, part.meta())
    try:
        written = write_lists(user_lists(recs), sc, redis_password(sc), version)
    except PythonException as exc:  # a task's error: Redis went away, or slower than its bounds
        raise InputError(f"publish: writing version {version} to Redis at {sc.redis_url} failed "
                         f"(config key serve.redis_url): {task_error(exc).rstrip('.')}; not switched, "
                         f"{served or 'no version'} stays current") from None
    check_written(part, version, written, served)
    dropped = store.switch(version, sc.keep_versions)
    return Published(part, version, time.perf_counter() - started, store.versions(), dropped)


def rollback(cfg: Config) -> dict[str, Any]:
    """Serve the version published before the current one (store.rollback); reads no Parquet.

    Returns:
        rolled_back ("<from> -> <to>"), version, run_date, users, versions.

    Raises:
        StoreError: nothing to roll back to, in one line naming the key and the versions kept.
    """
    import mlflow  # not at the top: Spark tasks import this module for list_writer (mlflow: 2 s)

    sc = cfg.serve
    store = open_store(sc)
    try:
        left, now = store.rollback()
        meta, versions = store.meta(now), store.versions()
    finally:
        store.close()
    with tracking.stage_run(cfg, "publish", run_date=meta["run_date"]):
        mlflow.set_tags({"action": "rollback", "version": now, "rolled_back_from": left,
                         "redis_prefix": sc.redis_prefix, "redis_url": sc.redis_url})
    log.warning("publish: rolled %s:current back from %s to %s", sc.redis_prefix, left, now)
    return {"rolled_back": f"{sc.redis_url} {sc.redis_prefix}:current {left} -> {now}", "version": now,
            "run_date": meta["run_date"], "users": meta["users"], "versions": versions}
