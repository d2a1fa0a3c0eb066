"""The split of featurize, under one of two protocols (``evaluate.protocol``).

- ``temporal``: global cutoffs. The last ``test_days`` calendar days (UTC) are the test period,
  the ``validation_days`` before them the validation period, everything earlier the training
  period. What production serves: tomorrow's lists from today's data.
- ``leave_last_out``: cutoffs per user. A user's last *new* item (the last step on a product the
  user had not met before) is the test target, the new item before it the validation target;
  training sees the user's steps strictly before the validation target. The protocol of the
  SASRec, BERT4Rec and RecBole papers, adapted to a clickstream: evaluation never recommends an
  item the user has already met, so a repeat cannot be a target. Users with fewer than
  ``LEAVE_LAST_OUT_MIN_NEW_ITEMS`` new items are training-only (their cutoffs lie in the far
  future). Training then holds other users' later events: the protocol measures how well the
  model ranks a user's next new item, not how it would have done on a given day.

Either way every table filters with :func:`before` against ``split.validation`` /
``split.test``: a datetime under ``temporal``, the columns ``validation_at`` / ``test_at`` under
``leave_last_out`` (on frames :meth:`Split.attach` has joined them to). Vocabularies and training
windows see the training part only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.errors import InputError, relax_hint


@dataclass(frozen=True)
class Cutoffs:
    """Timezone-aware UTC instants of the split.

    Train: ``time < validation``; validation: ``[validation, test)``; test: ``[test, data_end]``.
    """

    data_start: dt.datetime
    data_end: dt.datetime
    validation: dt.datetime
    test: dt.datetime

    def as_dict(self) -> dict[str, str]:
        return {
            "data_start": self.data_start.isoformat(),
            "data_end": self.data_end.isoformat(),
            "validation_cutoff": self.validation.isoformat(),
            "test_cutoff": self.test.isoformat(),
        }


def data_range(events: DataFrame, time_col: str = schema.EVENT_TIME) -> tuple[dt.datetime, dt.datetime]:
    """First and last event time as aware UTC datetimes (one small aggregation).

    Read as epoch microseconds so that the driver's local time zone cannot shift them.

    Raises:
        InputError: no events at all.
    """
    row = events.agg(
        F.min(F.unix_micros(F.col(time_col))).alias("start"),
        F.max(F.unix_micros(F.col(time_col))).alias("end"),
    ).first()
    if row is None or row["start"] is None:
        raise InputError("featurize: the clean events are empty")
    return _from_micros(row["start"]), _from_micros(row["end"])


def compute_cutoffs(
    data_start: dt.datetime, data_end: dt.datetime, validation_days: int, test_days: int
) -> Cutoffs:
    """Cutoffs from the data range.

    Args:
        data_start, data_end: aware datetimes, the first and last event.
        validation_days: calendar days of validation (>= 1).
        test_days: calendar days of test (>= 1), counted back from ``data_end``'s day.

    Returns:
        :class:`Cutoffs` with ``test = day_start(data_end) - (test_days - 1) days`` and
        ``validation = test - validation_days days``.

    Raises:
        InputError: non-positive day counts, or no training period left before the cutoffs.
    """
    if validation_days < 1 or test_days < 1:
        raise InputError(
            f"featurize.validation_days ({validation_days}) and featurize.test_days ({test_days}) must be >= 1"
        )
    data_start = data_start.astimezone(dt.timezone.utc)
    data_end = data_end.astimezone(dt.timezone.utc)
    last_day = data_end.replace(hour=0, minute=0, second=0, microsecond=0)
    test = last_day - dt.timedelta(days=test_days - 1)
    validation = test - dt.timedelta(days=validation_days)
    if validation <= data_start:
        raise InputError(
            f"featurize: data from {data_start.isoformat()} to {data_end.isoformat()} leaves no training "
            f"period before the validation cutoff {validation.isoformat()} "
            f"(featurize.validation_days={validation_days}, featurize.test_days={test_days})"
            f"{_fitting_days_hint(data_start, last_day, test, validation_days)}"
        )
    return Cutoffs(data_start=data_start, data_end=data_end, validation=validation, test=test)


def _fitting_days_hint(data_start: dt.datetime, last_day: dt.datetime, test: dt.datetime, validation_days: int) -> str:
    """A space and the override that leaves a training period: fewer validation days, else one
    validation day and fewer test days; "" when the data spans too few days for any split."""

    def days_fitting_before(cutoff: dt.datetime) -> int:  # the most whole days d with cutoff - d days > data_start
        return -((data_start - cutoff) // dt.timedelta(days=1)) - 1

    validation_days_fitting = days_fitting_before(test)
    if validation_days_fitting >= 1:
        return " " + relax_hint("featurize.validation_days", validation_days_fitting)
    # With one validation day, validation = last_day - test_days days.
    test_days_fitting = days_fitting_before(last_day)
    if test_days_fitting < 1:
        return ""
    if validation_days == 1:
        return " " + relax_hint("featurize.test_days", test_days_fitting)
    return " " + relax_hint("featurize.validation_days", 1, ("featurize.test_days", test_days_fitting))


def before(time: Column, cutoff: dt.datetime | Column) -> Column:
    """``time < cutoff`` for an aware datetime (Spark converts it as an instant) or a timestamp
    column (a per-user cutoff)."""
    return time < (cutoff if isinstance(cutoff, Column) else F.lit(cutoff))


def _from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)


TEMPORAL, LEAVE_LAST_OUT, AUTO = "temporal", "leave_last_out", "auto"
# Per-user cutoff columns (leave_last_out), on the frames Split.attach joins them to.
VALIDATION_AT = schema.VALIDATION_AT
TEST_AT = schema.TEST_AT
# A user needs a training step's item, a validation target and a test target.
LEAVE_LAST_OUT_MIN_NEW_ITEMS = 3
# The cutoffs of a training-only user: every step lies before them.
FAR_FUTURE = dt.datetime(9000, 1, 1, tzinfo=dt.timezone.utc)

_FIRST_POS, _FIRST_TIME, _RANK, _NEW = "_first_pos", "_first_time", "_rank", "_new_items"


@dataclass(frozen=True)
class Split:
    """The split featurize builds and every table is filtered by.

    Attributes:
        protocol: "temporal" or "leave_last_out".
        data_start, data_end: the first and last event (aware UTC).
        cutoffs: the global cutoffs (temporal only).
        users: per-user cutoffs (leave_last_out only): user_id, validation_at, test_at, one row
            per user with a step (FAR_FUTURE for training-only users).
        reason: why this protocol (the configured one, or what ``auto`` measured).
    """

    protocol: Literal["temporal", "leave_last_out"]
    data_start: dt.datetime
    data_end: dt.datetime
    cutoffs: Cutoffs | None = None
    users: DataFrame | None = None
    reason: str = ""

    @property
    def per_user(self) -> bool:
        return self.users is not None

    @property
    def validation(self) -> dt.datetime | Column:
        """The validation cutoff: a datetime, or the ``validation_at`` column of attached frames."""
        return F.col(VALIDATION_AT) if self.per_user else self.cutoffs.validation

    @property
    def test(self) -> dt.datetime | Column:
        return F.col(TEST_AT) if self.per_user else self.cutoffs.test

    def describe(self, which: str) -> str:
        """"the validation cutoff 2024-01-03T00:00:00+00:00" or "each user's validation target"."""
        if self.per_user:
            return f"each user's {which} target"
        return f"the {which} cutoff {getattr(self.cutoffs, which).isoformat()}"

    def attach(self, frame: DataFrame) -> DataFrame:
        """``frame`` (with user_id) with the per-user cutoff columns; unchanged under temporal
        or when it has them already."""
        if not self.per_user or VALIDATION_AT in frame.columns:
            return frame
        far = F.lit(FAR_FUTURE)
        return (frame.join(self.users, schema.USER_ID, "left")
                .withColumn(VALIDATION_AT, F.coalesce(F.col(VALIDATION_AT), far))
                .withColumn(TEST_AT, F.coalesce(F.col(TEST_AT), far)))

    def user_table(self, steps: DataFrame) -> DataFrame:
        """One row per user of ``steps``: user_id, validation_at, test_at (schema.USER_SPLIT_SCHEMA),
        what evaluate filters each user's exclusions by."""
        if self.per_user:
            return self.users
        return (steps.select(schema.USER_ID).distinct()
                .withColumn(VALIDATION_AT, F.lit(self.cutoffs.validation))
                .withColumn(TEST_AT, F.lit(self.cutoffs.test)))

    def as_dict(self) -> dict[str, str | None]:
        """The metadata.json keys: protocol, data range and (temporal) the global cutoffs."""
        return {
            "protocol": self.protocol,
            "data_start": self.data_start.isoformat(),
            "data_end": self.data_end.isoformat(),
            "validation_cutoff": self.cutoffs.validation.isoformat() if self.cutoffs else None,
            "test_cutoff": self.cutoffs.test.isoformat() if self.cutoffs else None,
        }


def temporal_split(cutoffs: Cutoffs, reason: str = "") -> Split:
    return Split(TEMPORAL, cutoffs.data_start, cutoffs.data_end, cutoffs=cutoffs, reason=reason)


def leave_last_out_cutoffs(steps: DataFrame, step_pos: str, step_time: str) -> DataFrame:
    """Per user: validation_at and test_at, the times of the user's second-to-last and last new
    item (the first step on each product, ordered by step position).

    Users with fewer than LEAVE_LAST_OUT_MIN_NEW_ITEMS new items get FAR_FUTURE for both.

    Args:
        steps: one row per step: user_id, product_id, ``step_pos`` (1.. per user, in time
            order), ``step_time``.

    Returns:
        user_id, validation_at, test_at: one row per user.
    """
    firsts = steps.groupBy(schema.USER_ID, schema.PRODUCT_ID).agg(
        F.min(step_pos).alias(_FIRST_POS), F.min(step_time).alias(_FIRST_TIME))
    latest = Window.partitionBy(schema.USER_ID).orderBy(F.desc(_FIRST_POS))
    ranked = firsts.withColumn(_RANK, F.row_number().over(latest))
    per_user = ranked.groupBy(schema.USER_ID).agg(
        F.count("*").alias(_NEW),
        F.max(F.when(F.col(_RANK) == 2, F.col(_FIRST_TIME))).alias(VALIDATION_AT),
        F.max(F.when(F.col(_RANK) == 1, F.col(_FIRST_TIME))).alias(TEST_AT),
    )
    enough = F.col(_NEW) >= LEAVE_LAST_OUT_MIN_NEW_ITEMS
    far = F.lit(FAR_FUTURE)
    return per_user.select(
        schema.USER_ID,
        F.when(enough, F.col(VALIDATION_AT)).otherwise(far).alias(VALIDATION_AT),
        F.when(enough, F.col(TEST_AT)).otherwise(far).alias(TEST_AT),
    )


def leave_last_out_split(steps: DataFrame, data_start: dt.datetime, data_end: dt.datetime,
                         step_pos: str, step_time: str, reason: str = "") -> Split:
    """The leave_last_out split of ``steps`` (its per-user cutoffs computed once and kept)."""
    users = leave_last_out_cutoffs(steps, step_pos, step_time).localCheckpoint(eager=True)
    return Split(LEAVE_LAST_OUT, data_start, data_end, users=users, reason=reason)


def temporal_eval_users(steps: DataFrame, cutoffs: Cutoffs, step_time: str) -> dict[str, int]:
    """How many users the temporal cutoffs could evaluate, before any table is built: users
    with a step before a window and a product new to them in it (an upper bound of the
    validation / test rows: targets outside the vocabulary are not known yet).

    Returns:
        {"users", "validation_users", "test_users"} (one aggregation).
    """
    firsts = steps.groupBy(schema.USER_ID, schema.PRODUCT_ID).agg(F.min(step_time).alias(_FIRST_TIME))
    first = F.col(_FIRST_TIME)
    per_user = firsts.groupBy(schema.USER_ID).agg(
        F.min(first).alias("_start"),
        F.max((~before(first, cutoffs.validation) & before(first, cutoffs.test)).cast("int")).alias("_validation"),
        F.max((~before(first, cutoffs.test)).cast("int")).alias("_test"),
    )
    start = F.col("_start")
    row = per_user.agg(
        F.count("*").alias("users"),
        F.count(F.when((F.col("_validation") == 1) & before(start, cutoffs.validation), 1)).alias("validation_users"),
        F.count(F.when((F.col("_test") == 1) & before(start, cutoffs.test), 1)).alias("test_users"),
    ).first()
    return {key: int(row[key]) for key in ("users", "validation_users", "test_users")}
