"""recsys_spark: clickstream logs to a deep recommender and batch recommendations on Spark."""

__version__ = "0.1.0"
