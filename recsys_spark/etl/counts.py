"""Counts taken while a frame is written: a Spark ``Observation`` read with a bound, and the same
aggregates computed directly from the frame when Spark does not report it (SPARK-54620, see
waits.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Observation

from recsys_spark import waits


@dataclass(frozen=True)
class Counted:
    """One observed frame: its observation and, to count the same rows directly when Spark does
    not report it, the frame and the aggregates."""

    observation: Observation
    frame: DataFrame
    aggregates: tuple[Column, ...]

    def counts(self, timeout_s: float) -> dict[str, int]:
        values = waits.observed(self.observation, timeout_s)
        if values is None:
            values = self.frame.agg(*self.aggregates).first().asDict()
        return {k: int(v or 0) for k, v in values.items()}


def observe(frame: DataFrame, name: str, *aggregates: Column) -> tuple[DataFrame, Counted]:
    """``frame`` observed under ``name`` with ``aggregates``, and the :class:`Counted` that reads
    them once an action has computed it."""
    observation = Observation(name)
    return frame.observe(observation, *aggregates), Counted(observation, frame, aggregates)
