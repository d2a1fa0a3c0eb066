"""Exploring clean events (schema.CLEAN_SCHEMA): pure ``DataFrame -> DataFrame`` summaries.

Each result is small (a row per funnel stage, day, month or cohort) and meant for ``toPandas()``
and :mod:`recsys_spark.analysis.plots`; only :func:`sessions` keeps a row per session.
"""

from __future__ import annotations

from typing import Literal

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.errors import ConfigError

FUNNEL_STAGES = ("view", "cart", "purchase")
Period = Literal["day", "week", "month"]
PERIODS = ("day", "week", "month")


def event_counts(events: DataFrame) -> DataFrame:
    """Events, users and sessions of each event type.

    Returns:
        event_type, events, users, sessions, share (of all events); in schema.EVENT_TYPES order.
    """
    total = events.count()
    order = F.array_position(F.array(*[F.lit(t) for t in schema.EVENT_TYPES]), F.col(schema.EVENT_TYPE))
    return (
        events.groupBy(schema.EVENT_TYPE)
        .agg(
            F.count(F.lit(1)).alias("events"),
            F.countDistinct(schema.USER_ID).alias("users"),
            F.countDistinct(schema.SESSION_ID).alias("sessions"),
        )
        .withColumn("share", F.col("events") / F.lit(max(total, 1)))
        .orderBy(order)
    )


def event_funnel(events: DataFrame, stages: tuple[str, ...] = FUNNEL_STAGES) -> DataFrame:
    """The session funnel: sessions that reached each stage and every stage before it.

    A session reaches "cart" only if it also holds a view, "purchase" only if it holds a view
    and a cart, whatever the order of the events inside the session.

    Returns:
        stage, sessions, users (with at least one such session), rate (of the first stage's
        sessions), step_rate (of the previous stage's sessions); one row per stage, in order.
    """
    flags = events.groupBy(schema.USER_ID, schema.SESSION_ID).agg(
        *[F.max((F.col(schema.EVENT_TYPE) == stage).cast("int")).alias(stage) for stage in stages]
    )
    reached = []
    for i, stage in enumerate(stages):
        condition = F.lit(True)
        for earlier in stages[: i + 1]:
            condition = condition & (F.col(earlier) == 1)
        reached += [
            F.count(F.when(condition, 1)).alias(f"{i}_sessions"),
            F.countDistinct(F.when(condition, F.col(schema.USER_ID))).alias(f"{i}_users"),
        ]
    row = flags.agg(*reached).first()
    spark = events.sparkSession
    data, first, previous = [], None, None
    for i, stage in enumerate(stages):
        n = int(row[f"{i}_sessions"])
        first = n if first is None else first
        data.append((stage, n, int(row[f"{i}_users"]), _ratio(n, first), _ratio(n, previous if i else n)))
        previous = n
    return spark.createDataFrame(data, "stage string, sessions long, users long, rate double, step_rate double")


def _ratio(a: int, b: int | None) -> float:
    return a / b if b else 0.0


def sessions(events: DataFrame) -> DataFrame:
    """One row per session.

    Returns:
        user_id, session_id, start (timestamp), events, items (distinct products),
        duration_s (last event - first event, seconds), purchased (bool).
    """
    return events.groupBy(schema.USER_ID, schema.SESSION_ID).agg(
        F.min(schema.EVENT_TIME).alias("start"),
        F.count(F.lit(1)).alias("events"),
        F.countDistinct(schema.PRODUCT_ID).alias("items"),
        ((F.unix_micros(F.max(schema.EVENT_TIME)) - F.unix_micros(F.min(schema.EVENT_TIME))) / 1e6).alias("duration_s"),
        F.max(F.col(schema.EVENT_TYPE) == "purchase").alias("purchased"),
    )


def session_summary(per_session: DataFrame) -> DataFrame:
    """Args: the output of :func:`sessions`.

    Returns:
        one row: sessions, users, sessions_per_user, mean_events, median_events,
        median_duration_s, purchase_rate (share of sessions with a purchase).
    """
    return per_session.agg(
        F.count(F.lit(1)).alias("sessions"),
        F.countDistinct(schema.USER_ID).alias("users"),
        (F.count(F.lit(1)) / F.countDistinct(schema.USER_ID)).alias("sessions_per_user"),
        F.avg("events").alias("mean_events"),
        F.median("events").alias("median_events"),
        F.median("duration_s").alias("median_duration_s"),
        F.avg(F.col("purchased").cast("double")).alias("purchase_rate"),
    )


def sample(df: DataFrame, max_rows: int, seed: int = 0):
    """At most about ``max_rows`` rows of ``df``, drawn at random, as pandas (for plots)."""
    total = df.count()
    fraction = min(1.0, max_rows / total) if total else 1.0
    return (df if fraction >= 1.0 else df.sample(fraction=fraction, seed=seed)).toPandas()


def item_popularity(events: DataFrame) -> DataFrame:
    """Items by number of events, most popular first (ties by product_id).

    Returns:
        rank (1 = most popular), product_id, interactions, share (of all events),
        cumulative_share, item_share (rank / number of items): the long-tail (Lorenz) curve.
    """
    counts = events.groupBy(schema.PRODUCT_ID).agg(F.count(F.lit(1)).alias("interactions"))
    # The whole item table in one window: one row per item, small beside the events.
    ordered = Window.orderBy(F.desc("interactions"), F.asc(schema.PRODUCT_ID))
    everything = Window.partitionBy(F.lit(1))
    return (
        counts.withColumn("rank", F.row_number().over(ordered))
        .withColumn("share", F.col("interactions") / F.sum("interactions").over(everything))
        .withColumn("cumulative_share", F.sum("share").over(ordered.rowsBetween(Window.unboundedPreceding, 0)))
        .withColumn("item_share", F.col("rank") / F.count(F.lit(1)).over(everything))
        .select("rank", schema.PRODUCT_ID, "interactions", "share", "cumulative_share", "item_share")
        .orderBy("rank")
    )


def long_tail(popularity: DataFrame, head_item_share: float = 0.2, covered_share: float = 0.8) -> DataFrame:
    """How concentrated interactions are.

    Args:
        popularity: the output of :func:`item_popularity`.
        head_item_share: the head is this share of the items, the most popular ones.
        covered_share: count the items needed for this share of all interactions.

    Returns:
        one row: items, head_items, head_interaction_share (share of the events on the head),
        items_for_covered_share, single_interaction_items.

    Raises:
        ConfigError: a share outside (0, 1].
    """
    for name, value in (("head_item_share", head_item_share), ("covered_share", covered_share)):
        if not 0 < value <= 1:
            raise ConfigError(f"{name} must be in (0, 1], got {value}")
    # Float sums are never exactly the target share: compare with a hair of tolerance.
    eps = 1e-9
    return popularity.agg(
        F.count(F.lit(1)).alias("items"),
        F.count(F.when(F.col("item_share") <= head_item_share + eps, 1)).alias("head_items"),
        F.coalesce(F.max(F.when(F.col("item_share") <= head_item_share + eps, F.col("cumulative_share"))), F.lit(0.0))
        .alias("head_interaction_share"),
        F.min(F.when(F.col("cumulative_share") >= covered_share - eps, F.col("rank"))).alias("items_for_covered_share"),
        F.count(F.when(F.col("interactions") == 1, 1)).alias("single_interaction_items"),
    )


def _check_period(period: str) -> None:
    if period not in PERIODS:
        raise ConfigError(f"period {period!r} is not one of {', '.join(PERIODS)}")


def _period_start(period: str):
    return F.to_date(F.date_trunc(period, F.col(schema.EVENT_DATE).cast("timestamp")))


def active_users(events: DataFrame, period: Period = "day") -> DataFrame:
    """Distinct active users per day, week (from Monday) or calendar month.

    Returns:
        period_start (date), active_users; in date order.
    """
    _check_period(period)
    return (
        events.groupBy(_period_start(period).alias("period_start"))
        .agg(F.countDistinct(schema.USER_ID).alias("active_users"))
        .orderBy("period_start")
    )


def stickiness(events: DataFrame) -> DataFrame:
    """DAU/MAU per calendar month: the mean daily active users over the monthly active users.

    The mean is over the days of the month that have any event.

    Returns:
        month (date), mau, mean_dau, stickiness (mean_dau / mau); in date order.
    """
    daily = active_users(events, "day").withColumn("month", F.trunc("period_start", "month"))
    monthly = active_users(events, "month").withColumnRenamed("period_start", "month").withColumnRenamed(
        "active_users", "mau"
    )
    mean_dau = daily.groupBy("month").agg(F.avg("active_users").alias("mean_dau"))
    return (
        monthly.join(mean_dau, "month")
        .withColumn("stickiness", F.col("mean_dau") / F.col("mau"))
        .select("month", "mau", "mean_dau", "stickiness")
        .orderBy("month")
    )


def cohort_retention(events: DataFrame, period: Period = "week") -> DataFrame:
    """Retention curves: of the users first seen in a period, the share active n periods later.

    Returns:
        cohort (date: the period of a user's first event), offset (periods since, 0 = the
        first), users (of the cohort active then), cohort_size, retention (users / cohort_size);
        ordered by cohort and offset. Periods without any active user of a cohort have no row.
    """
    _check_period(period)
    active = events.select(schema.USER_ID, _period_start(period).alias("active")).distinct()
    first = active.groupBy(schema.USER_ID).agg(F.min("active").alias("cohort"))
    if period == "month":
        offset = F.months_between("active", "cohort").cast("int")
    else:
        offset = (F.datediff("active", "cohort") / (7 if period == "week" else 1)).cast("int")
    counts = active.join(first, schema.USER_ID).groupBy("cohort", offset.alias("offset")).agg(
        F.countDistinct(schema.USER_ID).alias("users")
    )
    sizes = counts.where(F.col("offset") == 0).select("cohort", F.col("users").alias("cohort_size"))
    return (
        counts.join(sizes, "cohort")
        .withColumn("retention", F.col("users") / F.col("cohort_size"))
        .orderBy("cohort", "offset")
    )


def item_catalogue(events: DataFrame) -> DataFrame:
    """Each product's category_code and brand, to label product ids in tables.

    Returns:
        product_id, category_code, brand: the largest non-null value seen (a product keeps
        one category and brand in practice; the largest makes the choice deterministic).
    """
    return events.groupBy(schema.PRODUCT_ID).agg(F.max(schema.CATEGORY_CODE).alias(schema.CATEGORY_CODE), F.max(schema.BRAND).alias(schema.BRAND))
