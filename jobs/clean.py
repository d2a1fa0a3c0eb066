"""Validate, de-duplicate, sessionise and pseudonymise raw events into Parquet by day.

Run with spark-submit (build the zip first with `make package`)::

    spark-submit --master local[2] --py-files dist/recsys_spark.zip \
        jobs/clean.py --config conf/local.yaml [section.key=value ...]

The same stage runs as `recsys clean --config conf/local.yaml`.
"""

from recsys_spark.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("clean", argv)


if __name__ == "__main__":
    raise SystemExit(main())
