"""Full-ranking metrics of the registered model against baselines, logged to MLflow.

Run with spark-submit (build the zip first with `make package`)::

    spark-submit --master local[2] --py-files dist/recsys_spark.zip \
        jobs/evaluate.py --config conf/local.yaml [section.key=value ...]

The same stage runs as `recsys evaluate --config conf/local.yaml`.
"""

from recsys_spark.cli import run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", argv)


if __name__ == "__main__":
    raise SystemExit(main())
