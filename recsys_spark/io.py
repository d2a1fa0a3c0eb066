"""All reading and writing of pipeline data, driven by the paths in the config.

Transforms never touch storage; stages call these functions. Reads use the explicit schemas
of :mod:`recsys_spark.schema`; a missing input fails with :class:`InputError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.config import is_uri
from recsys_spark.errors import InputError

# ----------------------------------------------------------------------------- paths


class HadoopFs:
    """The Hadoop file system of a path (local disk, HDFS, object stores alike), through Spark's JVM.

    The one place that reaches into ``spark.sparkContext._jvm``: every other module goes
    through these methods. Paths are plain strings.
    """

    def __init__(self, spark: SparkSession, path: str):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.fs = self.path(path).getFileSystem(self._conf)

    def path(self, text: str):
        """The JVM ``org.apache.hadoop.fs.Path`` of ``text``."""
        return self._jvm.org.apache.hadoop.fs.Path(text)

    def exists(self, text: str) -> bool:
        return bool(self.fs.exists(self.path(text)))

    def delete(self, text: str, recursive: bool = True) -> None:
        self.fs.delete(self.path(text), recursive)

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (its parent is created); raises OSError if the file system refuses."""
        self.fs.mkdirs(self.path(dst).getParent())
        try:
            renamed = self.fs.rename(self.path(src), self.path(dst))
        except Py4JJavaError as exc:  # some file systems throw (a missing source) instead of returning False
            raise OSError(f"could not rename {src} to {dst}: {str(exc.java_exception).splitlines()[0]}") from None
        if not renamed:
            raise OSError(f"could not rename {src} to {dst}")

    def folders(self, text: str) -> list[str]:
        """The names of the folders directly inside ``text``."""
        return [s.getPath().getName() for s in self.fs.listStatus(self.path(text)) if s.isDirectory()]

    def files(self, root: str) -> list[str]:
        """Every file under ``root`` (a file or a folder, searched recursively), as full URIs,
        sorted; names starting with ``.`` or ``_`` (Spark's markers, temporary files) are skipped."""
        root_status = self.fs.getFileStatus(self.path(root))
        found: list[str] = []
        pending = [root_status]
        while pending:
            status = pending.pop()
            if status is not root_status and status.getPath().getName().startswith((".", "_")):
                continue
            if status.isDirectory():
                pending.extend(self.fs.listStatus(status.getPath()))
            else:
                found.append(status.getPath().toString())
        return sorted(found)

    def uri(self, text: str) -> str:
        """``text`` as a URI string, as Spark spells file names (a space as %20)."""
        return str(self.path(text).toUri().toString())

    def first_line(self, text: str) -> str:
        """The first line of a (possibly compressed) text file, without reading the rest."""
        hpath = self.path(text)
        stream = self.fs.open(hpath)
        try:
            codec = self._jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(self._conf).getCodec(hpath)
            source = codec.createInputStream(stream) if codec is not None else stream
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(source, "UTF-8"))
            return str(reader.readLine() or "").lstrip("\ufeff")
        finally:
            stream.close()

    def write_bytes(self, text: str, data: bytes) -> None:
        """Write a file atomically: a hidden temporary file beside it, then a rename over it."""
        folder, name = text.rstrip("/").rsplit("/", 1)
        tmp = self.path(f"{folder}/.{name}.tmp")
        out = self.fs.create(tmp, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()
        self.fs.delete(self.path(text), False)
        self.fs.rename(tmp, self.path(text))


def holds_data(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` exists and holds a data file (names starting with ``.`` or ``_`` skipped)."""
    fs = HadoopFs(spark, path)
    return fs.exists(path) and bool(fs.files(path))


def exists(spark: SparkSession | None, path: str) -> bool:
    if not is_uri(path) or path.startswith("file:"):
        return Path(path.removeprefix("file://")).exists()
    if spark is None:
        raise ValueError(f"need a Spark session to look up {path}")
    return HadoopFs(spark, path).exists(path)


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
    HadoopFs(spark, path).write_bytes(path, text.encode("utf-8"))  # type: ignore[arg-type]


def write_json(spark: SparkSession | None, path: str, obj: Any) -> None:
    write_text(spark, path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(spark: SparkSession | None, path: str) -> Any:
    return json.loads(read_text(spark, path))


def local_uri(path: str) -> str:
    """A URL for Petastorm / pyarrow: ``file:///abs/path`` for local paths, URIs unchanged.

    ``=`` stays as it is (``features/ds=2019-10-06``): pyarrow reads either form, but Petastorm
    does not decode ``%3D``. Other characters are percent-encoded as ``Path.as_uri`` does.
    """
    if is_uri(path):
        return path
    return "file://" + quote(str(Path(path).resolve()), safe="/=")


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
    return spark.read.schema(schema.QUARANTINE_TABLE_SCHEMA).parquet(path)


def read_feedback(spark: SparkSession, path: str) -> DataFrame | None:
    """The shop's logged feedback as read: FEEDBACK_SCHEMA's columns with the types the files
    have (clean types and checks them) and ``source_file``; None when ``path`` is missing or
    holds no data file (feedback is optional). Parquet only.

    Raises:
        InputError: a column of the contract is missing (naming it, the path and the key).
    """
    if not holds_data(spark, path):
        return None
    df = spark.read.parquet(path)
    missing = [f.name for f in schema.FEEDBACK_SCHEMA.fields if f.name not in df.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)} (config key paths.feedback)")
    return df.select(*schema.FEEDBACK_SCHEMA.names, F.col("_metadata.file_path").alias(schema.SOURCE_FILE))


def read_clean_feedback(spark: SparkSession, path: str, id_type: str = schema.ID_INTEGER) -> DataFrame | None:
    """The clean feedback (CLEAN_FEEDBACK_SCHEMA, item_id typed by ``clean.id_types.product_id``);
    None when clean has never written it."""
    if not exists(spark, path):
        return None
    return spark.read.schema(schema.with_product_ids(schema.CLEAN_FEEDBACK_SCHEMA, id_type)).parquet(path)


def read_recommendations(spark: SparkSession, path: str, id_type: str = schema.ID_INTEGER) -> DataFrame | None:
    """The served recommendations (RECOMMENDATION_SCHEMA, item_id typed by
    ``clean.id_types.product_id``); None when score has written none."""
    if not holds_data(spark, path):
        return None
    struct = schema.with_product_ids(schema.RECOMMENDATION_SCHEMA, id_type)
    return read_table(spark, path, struct, "paths.recommendations")


def served_lists_path(feedback_root: str) -> str:
    """The folder of the service's real-time and fallback lists under ``paths.feedback``."""
    return f"{feedback_root.rstrip('/')}/{schema.SERVED_LISTS_FOLDER}"


def read_served_lists(spark: SparkSession, feedback_root: str, id_type: str = schema.ID_INTEGER) -> DataFrame | None:
    """The lists the service answered in real time or from the fallback (SERVED_LIST_SCHEMA,
    item_id typed by ``clean.id_types.product_id``) under ``paths.feedback``; None when the
    service has written none."""
    path = served_lists_path(feedback_root)
    if not holds_data(spark, path):
        return None
    struct = schema.with_product_ids(schema.SERVED_LIST_SCHEMA, id_type)
    return read_table(spark, path, struct, "paths.feedback")


def recommendation_dates(spark: SparkSession, path: str) -> list[str]:
    """The run dates (ISO, sorted) of the partitions under ``path`` that hold a data file; [] when
    ``path`` is missing. Lists folders: no file is read."""
    if not exists(spark, path):
        return []
    fs = HadoopFs(spark, path)
    prefix = f"{schema.RUN_DATE}="
    return sorted(name.removeprefix(prefix) for name in fs.folders(path)
                  if name.startswith(prefix) and fs.files(f"{path.rstrip('/')}/{name}"))


# ----------------------------------------------------------------------------- features

# The schema of each feature table the later stages read (featurize reads its vocabulary
# tables back through their own specs, features/vocab.py).
FEATURE_SCHEMAS = {
    "item_vocab": schema.ITEM_VOCAB_SCHEMA,
    "train": schema.TRAIN_SCHEMA,
    "validation": schema.EVAL_SCHEMA,
    "test": schema.EVAL_SCHEMA,
    "user_history": schema.USER_HISTORY_SCHEMA,
    "user_split": schema.USER_SPLIT_SCHEMA,
    "feedback_counts": schema.FEEDBACK_COUNTS_SCHEMA,
}
FEATURES_KEY = "paths.features"


def read_features(spark: SparkSession, features_root: str, table: str, key: str = FEATURES_KEY) -> DataFrame:
    """One feature table with its explicit schema (FEATURE_SCHEMAS); a missing table or column
    fails naming the config ``key``."""
    if table not in FEATURE_SCHEMAS:
        raise ValueError(f"no reader for feature table {table!r}; one of {', '.join(FEATURE_SCHEMAS)}")
    return read_table(spark, feature_path(features_root, table), FEATURE_SCHEMAS[table], key)


def read_feature_metadata(spark: SparkSession | None, features_root: str, key: str = FEATURES_KEY) -> dict[str, Any]:
    """The features' ``metadata.json``; a missing file fails naming the config ``key``."""
    path = feature_path(features_root, schema.FEATURE_METADATA)
    require_input(spark, path, key)
    return read_json(spark, path)


def feature_path(features_root: str, table: str) -> str:
    if table not in schema.FEATURE_TABLES and table != schema.FEATURE_METADATA:
        raise ValueError(f"unknown feature table {table!r}")
    return features_root.rstrip("/") + "/" + table
