"""The temporal split: global cutoffs, and the guard that nothing crosses them.

The last ``test_days`` calendar days (UTC) are the test period, the ``validation_days`` before
them the validation period, everything earlier the training period. Vocabularies and training
windows see the training period only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark import schema as S
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


def data_range(events: DataFrame, time_col: str = S.EVENT_TIME) -> tuple[dt.datetime, dt.datetime]:
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


def before(time: Column, cutoff: dt.datetime) -> Column:
    """``time < cutoff`` for an aware datetime (Spark converts it as an instant)."""
    return time < F.lit(cutoff)


def _from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)
