"""Build vocabularies, behaviour sequences and the temporal train/validation/test split.

Run with spark-submit (build the zip first with `make package`)::

    spark-submit --master local[2] --py-files dist/recsys_spark.zip \
        jobs/featurize.py --config conf/local.yaml [section.key=value ...]

The same stage runs as `recsys featurize --config conf/local.yaml`.
"""

from recsys_spark.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("featurize", argv)


if __name__ == "__main__":
    raise SystemExit(main())
