"""All reading and writing of pipeline data, driven by the paths in the config.

Transforms never touch storage; stages call these functions. Reads use the explicit schemas
of :mod:`recsys_spark.schema`; a missing input fails with :class:`InputError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.config import is_uri
from recsys_spark.errors import InputError

# ----------------------------------------------------------------------------- paths


def _hadoop_path(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hpath


def exists(spark: SparkSession | None, path: str) -> bool:
    if not is_uri(path) or path.startswith("file:"):
        return Path(path.removeprefix("file://")).exists()
    if spark is None:
        raise ValueError(f"need a Spark session to look up {path}")
    fs, hpath = _hadoop_path(spark, path)
    return bool(fs.exists(hpath))


def require_input(spark: SparkSession | None, path: str, key: str) -> None:
    """Raise a one-line :class:`InputError` if ``path`` (the value of config ``key``) is missing."""
    if not exists(spark, path):
        raise InputError(f"input path {path} does not exist (config key {key})")


def read_text(spark: SparkSession | None, path: str) -> str:
    if not is_uri(path) or path.startswith("file:"):
        return Path(path.removeprefix("file://")).read_text()
    return "\n".join(r.value for r in spark.read.text(path, wholetext=True).collect())  # type: ignore[union-attr]


def write_text(spark: SparkSession | None, path: str, text: str) -> None:
    """Write a small text file atomically (temp file + rename) on local disk or a Hadoop FS."""
    if not is_uri(path) or path.startswith("file:"):
        local = Path(path.removeprefix("file://"))
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, local)
        return
    fs, hpath = _hadoop_path(spark, path)  # type: ignore[arg-type]
    tmp = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path + ".tmp")  # type: ignore[union-attr]
    out = fs.create(tmp, True)
    out.write(bytearray(text.encode("utf-8")))
    out.close()
    fs.delete(hpath, False)
    fs.rename(tmp, hpath)


def write_json(spark: SparkSession | None, path: str, obj: Any) -> None:
    write_text(spark, path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(spark: SparkSession | None, path: str) -> Any:
    return json.loads(read_text(spark, path))


def local_uri(path: str) -> str:
    """A URL for Petastorm / pyarrow: ``file:///abs/path`` for local paths, URIs unchanged."""
    if is_uri(path):
        return path
    return Path(path).resolve().as_uri()


# ----------------------------------------------------------------------------- raw


def read_raw(spark: SparkSession, path: str, fmt: str) -> DataFrame:
    """Read the raw contract with an explicit schema, never inferred.

    CSV and JSON are read as text columns plus ``_corrupt_record`` (the original line when
    it could not be parsed) so that clean can quarantine each bad value with its reason.
    Parquet is read with the typed contract and cast to text the same way.

    Returns:
        DataFrame of RAW_COLUMNS (strings), ``_corrupt_record`` and ``source_file``.
    """
    # A new StructType: StructType.add would change the shared schema in place.
    text_schema = T.StructType(schema.RAW_TEXT_SCHEMA.fields + [T.StructField(schema.CORRUPT_RECORD, T.StringType(), True)])
    if fmt == "csv":
        df = (
            spark.read.schema(text_schema)
            .option("header", "true")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", schema.CORRUPT_RECORD)
            .option("enforceSchema", "false")
            .csv(path)
        )
    elif fmt == "json":
        df = (
            spark.read.schema(text_schema)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", schema.CORRUPT_RECORD)
            .option("primitivesAsString", "true")
            .json(path)
        )
    elif fmt == "parquet":
        df = spark.read.schema(schema.RAW_TYPED_SCHEMA).parquet(path)
        df = df.select(*[F.col(c).cast("string").alias(c) for c in schema.RAW_COLUMNS])
        df = df.withColumn(schema.CORRUPT_RECORD, F.lit(None).cast("string"))
    else:
        raise InputError(f"clean.input_format {fmt!r} is not one of 'csv', 'json', 'parquet'")
    return df.withColumn(schema.SOURCE_FILE, F.input_file_name())


# ----------------------------------------------------------------------------- tables


def write_partitioned(df: DataFrame, path: str, partition_col: str) -> None:
    """Write Parquet partitioned by ``partition_col``, replacing only the partitions present.

    Relies on ``spark.sql.sources.partitionOverwriteMode=dynamic`` (set by get_session):
    re-running a date replaces exactly that date.
    """
    (
        df.write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(partition_col)
        .parquet(path)
    )


def write_table(df: DataFrame, path: str, row_group_mb: int | None = None) -> None:
    """Replace a whole Parquet table."""
    writer = df.write.mode("overwrite")
    if row_group_mb:
        writer = writer.option("parquet.block.size", str(row_group_mb * 1024 * 1024))
    writer.parquet(path)


def read_table(spark: SparkSession, path: str, struct: T.StructType, key: str) -> DataFrame:
    """Read a Parquet table of a known layer; missing input or columns fail by name."""
    require_input(spark, path, key)
    df = spark.read.parquet(path)
    missing = [f.name for f in struct.fields if f.name not in df.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)} (config key {key})")
    return schema.conform(df, struct)


def read_clean(spark: SparkSession, path: str) -> DataFrame:
    return read_table(spark, path, schema.CLEAN_SCHEMA, "paths.clean")


def read_quarantine(spark: SparkSession, path: str) -> DataFrame:
    """The quarantine (QUARANTINE_SCHEMA and ``load_date``); a run without a single bad row
    leaves it without files, which reads as an empty table."""
    require_input(spark, path, "paths.quarantine")
    struct = T.StructType([*schema.QUARANTINE_SCHEMA.fields, T.StructField(schema.LOAD_DATE, T.DateType())])
    return spark.read.schema(struct).parquet(path)


def feature_path(features_root: str, table: str) -> str:
    if table not in schema.FEATURE_TABLES and table != schema.FEATURE_METADATA:
        raise ValueError(f"unknown feature table {table!r}")
    return features_root.rstrip("/") + "/" + table
