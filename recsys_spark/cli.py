"""Command line: ``recsys <stage> [--config FILE] [section.key=value ...]``.

The same entry is behind ``jobs/<stage>.py`` for spark-submit. Problems with the user's
config, paths or data end in one line on stderr and exit status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from typing import Any, Callable

from recsys_spark.config import Config, load_config
from recsys_spark.errors import RecsysError

# stage -> (module, what it does). Each module has ``run(spark, cfg) -> dict`` (a summary).
STAGES: dict[str, tuple[str, str]] = {
    "generate": ("recsys_spark.data.generate", "write a synthetic REES46-style clickstream to paths.raw"),
    "clean": ("recsys_spark.etl.clean", "validate, de-duplicate, sessionise, pseudonymise raw events"),
    "featurize": ("recsys_spark.features.featurize", "vocabularies, sequences, temporal split"),
    "train": ("recsys_spark.train.runner", "train the two-tower model with Horovod on Spark, register it"),
    "evaluate": ("recsys_spark.evaluation.evaluate", "full-ranking metrics against baselines"),
    "score": ("recsys_spark.scoring.score", "top-K recommendations per user from the registered model"),
    "run": ("recsys_spark.pipeline", "the whole pipeline: generate, clean, featurize, train, evaluate, score"),
}

# The paths (config keys) each stage reads; local ones are checked before Spark starts.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "generate": (),
    "clean": ("raw",),
    "featurize": ("clean",),
    "train": ("features",),
    "evaluate": ("features",),
    "score": ("features",),
    "run": (),
}

log = logging.getLogger("recsys_spark")


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys" if stage is None else f"recsys {stage}",
        description="recsys_spark: clickstream to recommendations on Spark, Horovod and MLflow.",
    )
    if stage is None:
        parser.add_argument("stage", choices=list(STAGES), help="the stage to run")
    parser.add_argument("--config", "-c", default=None, help="YAML profile, e.g. conf/local.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="dotted overrides, e.g. train.epochs=3"
    )
    return parser


def stage_function(stage: str) -> Callable[[Any, Config], dict]:
    """The stage's ``run(spark, cfg)``, bounded by ``spark.stage_timeout_minutes`` (see waits.py).

    ``run`` itself is not bounded as a whole: it calls each stage through this function.
    """
    module = importlib.import_module(STAGES[stage][0])
    if stage == "run":
        return module.run

    def bounded(spark: Any, cfg: Config) -> dict:
        from recsys_spark.waits import stage_deadline

        with stage_deadline(spark, stage, cfg.spark.stage_timeout_minutes):
            return module.run(spark, cfg)

    return bounded


def run_stage(stage: str, argv: list[str] | None = None) -> int:
    """Parse args, build the config, start Spark, run one stage, print its summary, stop."""
    args = build_parser(stage).parse_intermixed_args(argv)
    return _execute(stage, args.config, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return _execute(args.stage, args.config, args.overrides)


def _execute(stage: str, config_path: str | None, overrides: list[str]) -> int:
    # Our progress at INFO; other libraries' warnings only (Horovod's rendezvous logs every key
    # it stores, and a closed py4j connection with a traceback, at INFO on the root logger).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recsys_spark").setLevel(logging.INFO)
    started = time.time()
    spark = None
    try:
        cfg = load_config(config_path, overrides)
        check_local_inputs(stage, cfg)
        from recsys_spark.spark import get_session

        fn = stage_function(stage)
        spark = get_session(cfg.spark)
        summary = fn(spark, cfg)
    except RecsysError as exc:
        print(f"recsys {stage}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if spark is not None:
            spark.stop()
    print_summary(stage, summary, time.time() - started)
    return 0


def check_local_inputs(stage: str, cfg: Config) -> None:
    """Fail fast, before a Spark session exists, on a missing local input path."""
    from recsys_spark import io
    from recsys_spark.config import is_uri

    for name in STAGE_INPUTS[stage]:
        path = cfg.paths.resolve(name)
        if not is_uri(path) or path.startswith("file:"):
            io.require_input(None, path, f"paths.{name}")


def print_summary(stage: str, summary: dict, seconds: float) -> None:
    print(f"\n== recsys {stage}: done in {seconds:.1f}s ==")
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        print(f"  {key}: {value}")
