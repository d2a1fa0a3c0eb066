"""The feature table ``feedback_counts``: the clean feedback (``paths.clean_feedback``, which
clean writes, see etl/feedback.py) counted per item, the input of Thompson exploration
(``score.feedback_counts_path``).
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.config import Config

log = logging.getLogger(__name__)


def count_feedback(feedback: DataFrame, before: dt.date, id_type: str = schema.ID_INTEGER) -> DataFrame:
    """Exposures and clicks per item over the run dates before ``before``.

    Args:
        feedback: clean feedback (CLEAN_FEEDBACK_SCHEMA).
        before: the first run date not counted.

    Returns:
        FEEDBACK_COUNTS_SCHEMA (with_product_ids of ``id_type``): product_id (the exposures'
        item_id, the shop's id), exposures (rows), clicks (rows with clicked true); one row per
        item with an exposure.
    """
    counts = (feedback.where(F.col(schema.RUN_DATE) < F.lit(before))
              .groupBy(F.col(schema.ITEM_ID).alias(schema.PRODUCT_ID))
              .agg(F.count(F.lit(1)).alias(schema.EXPOSURES),
                   F.count(F.when(F.col(schema.CLICKED), 1)).alias(schema.CLICKS)))
    return schema.conform(counts, schema.with_product_ids(schema.FEEDBACK_COUNTS_SCHEMA, id_type))


def feedback_counts(spark: SparkSession, cfg: Config, before: dt.datetime | dt.date) -> DataFrame:
    """The feature table ``feedback_counts``: :func:`count_feedback` of ``paths.clean_feedback``
    over the run dates strictly before ``before``, one sorted file. Empty (with its schema) when
    clean has written no feedback, so its readers need no special case.

    Args:
        before: the features' serve snapshot (an aware datetime, or a date): a run date counts
            when its whole day lies before it.

    Returns:
        FEEDBACK_COUNTS_SCHEMA rows, as score's ``read_feedback_counts`` reads them.
    """
    if isinstance(before, dt.datetime):
        before = before.astimezone(dt.timezone.utc).date() if before.tzinfo else before.date()
    path = cfg.paths.resolve("clean_feedback")
    id_type = cfg.clean.id_types[schema.PRODUCT_ID]
    feedback = io.read_clean_feedback(spark, path, id_type)
    if feedback is None:
        log.info("featurize: no clean feedback at %s (paths.clean_feedback): feedback_counts is empty", path)
        return spark.createDataFrame([], schema.with_product_ids(schema.FEEDBACK_COUNTS_SCHEMA, id_type))
    log.info("featurize: feedback_counts from %s, run dates before %s", path, before.isoformat())
    return count_feedback(feedback, before, id_type).repartition(1).sortWithinPartitions(schema.PRODUCT_ID)
