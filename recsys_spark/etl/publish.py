"""Replace date partitions of a table: write the run to a staging folder, then swap folders.

Guarantee (documented in the clean stage): a run writes nothing into the live table until all
of its output is written and reconciled. It then replaces each partition by two renames
(live -> ``_trash``, staged -> live). Renames of folders are atomic on a local disk and on
HDFS, so a reader sees each partition whole, old or new. A run killed during the swap leaves
some partitions new and, at worst, one partition missing (between its two renames); running
the same dates again restores the exact output of an uninterrupted run. On object stores
(S3, GCS) a rename is a copy, so the swap of one partition is not atomic there.

``_staging``, ``_trash`` and ``_stopped`` start with ``_``, so Spark's readers of the table ignore
them; a run deletes the leftovers of a killed run before it starts (``_stopped``, what a gate stopped,
stays until the next stop). One writer per table at a time.
"""

from __future__ import annotations

from pyspark.sql import SparkSession

from recsys_spark.io import HadoopFs

STAGING = "_staging"
TRASH = "_trash"
# A stopped run's staged output, kept apart (set_aside): the latest stopped run's only.
STOPPED = "_stopped"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # Spark's folder name for a null partition value


def staging_path(table: str, run_id: str) -> str:
    return f"{table.rstrip('/')}/{STAGING}/{run_id}"


def clear_leftovers(spark: SparkSession, table: str) -> None:
    """Delete the staging and trash folders a killed run may have left in ``table``."""
    fs = HadoopFs(spark, table)
    for name in (STAGING, TRASH):
        fs.delete(f"{table.rstrip('/')}/{name}")


def stopped_path(table: str, run_id: str) -> str:
    return f"{table.rstrip('/')}/{STOPPED}/{run_id}"


def set_aside(spark: SparkSession, staged: str, table: str, run_id: str) -> str:
    """Keep the staged output of a run that stopped before publishing (a data-quality gate) in
    :func:`stopped_path`, replacing an earlier stopped run's: Spark's readers of ``table`` and
    :func:`clear_leftovers` leave it alone, and the live partitions are untouched.

    Returns:
        the folder (a table of the same layout; absent when nothing was staged).
    """
    fs = HadoopFs(spark, table)
    target = stopped_path(table, run_id)
    fs.delete(f"{table.rstrip('/')}/{STOPPED}")
    if fs.exists(staged):
        fs.rename(staged, target)
    fs.delete(f"{table.rstrip('/')}/{STAGING}")
    return target


def partition_name(column: str, value: object | None) -> str:
    return f"{column}={NULL_PARTITION if value is None else value}"


def staged_values(spark: SparkSession, staged: str, column: str) -> list[str]:
    """The values of ``column`` that have a partition folder in ``staged`` (sorted, null excluded)."""
    fs = HadoopFs(spark, staged)
    if not fs.exists(staged):
        return []
    prefix = f"{column}="
    names = fs.folders(staged)
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix) and n != partition_name(column, None))


def swap_partitions(spark: SparkSession, staged: str, table: str, column: str, values: list[object | None],
                    run_id: str) -> list[str]:
    """Make partitions ``column=value`` of ``table`` those of ``staged``, for every value given.

    A value absent from ``staged`` removes the live partition (the run found no rows for it).

    Returns:
        the partition folder names now present in ``table`` for these values.
    """
    fs = HadoopFs(spark, table)
    table = table.rstrip("/")
    trash = f"{table}/{TRASH}/{run_id}"
    present = []
    for value in values:
        name = partition_name(column, value)
        live, new = f"{table}/{name}", f"{staged.rstrip('/')}/{name}"
        if fs.exists(live):
            fs.rename(live, f"{trash}/{name}")
        if fs.exists(new):
            fs.rename(new, live)
            present.append(name)
    fs.delete(f"{table}/{TRASH}")
    fs.delete(f"{table}/{STAGING}")  # this run's staging folder with it (one writer at a time)
    return present
