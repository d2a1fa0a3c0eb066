"""A run date's recommendations into the Redis store, then served atomically (or a rollback).

Run with spark-submit (build the zip first with `make package`)::

    spark-submit --master local[2] --py-files dist/recsys_spark.zip \
        jobs/publish.py --config conf/local.yaml [publish.run_date=YYYY-MM-DD] [section.key=value ...]

Add ``--rollback`` (or ``publish.rollback=true``) to serve the previous version again. The same
stage runs as `recsys publish --config conf/local.yaml`.
"""

from recsys_spark.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("publish", argv)


if __name__ == "__main__":
    raise SystemExit(main())
