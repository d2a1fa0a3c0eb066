"""Command line: ``recsys <stage> [--config FILE] [section.key=value ...]``.

The same entry is behind ``jobs/<stage>.py`` for spark-submit. Problems with the user's
config, paths or data end in one line on stderr and exit status 2, never a stack trace.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from recsys_spark import io
from recsys_spark.config import Config, is_uri, load_config
from recsys_spark.errors import RecsysError
from recsys_spark.spark import get_session
# The stage list lives in stages.py (a new stage goes there); build_parser, STAGES and
# stage_function are imported here for the callers that know them as cli's.
from recsys_spark.stages import STAGE_INPUTS, STAGES, build_parser, needs_spark, overrides_of, stage_function  # noqa: F401

log = logging.getLogger("recsys_spark")


def run_stage(stage: str, argv: list[str] | None = None) -> int:
    """Parse args, build the config, start Spark, run one stage, print its summary, stop."""
    parser = build_parser(stage)
    args = parser.parse_intermixed_args(argv)
    return _execute(stage, args.config, overrides_of(parser, stage, args))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    return _execute(args.stage, args.config, overrides_of(parser, args.stage, args))


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
        fn = stage_function(stage)
        spark = get_session(cfg.spark) if needs_spark(stage, cfg) else None
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
    if not needs_spark(stage, cfg):  # it reads no table
        return
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
