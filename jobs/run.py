"""The whole pipeline: generate, clean, featurize, train, evaluate, score.

Run with spark-submit (build the zip first with `make package`)::

    spark-submit --master local[2] --py-files dist/recsys_spark.zip \
        jobs/run.py --config conf/local.yaml [section.key=value ...]

The same stage runs as `recsys run --config conf/local.yaml`.
"""

from recsys_spark.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("run", argv)


if __name__ == "__main__":
    raise SystemExit(main())
