"""The stages: their list, the paths each reads, and how one is called.

``recsys <stage>`` (cli.py), ``jobs/<stage>.py``, ``recsys run`` (pipeline.py), the horovodrun
entry (train/horovodrun.py) and the MLflow run descriptions (tracking.py) all read the stages
from here. A stage is named by its module, which is imported only when the stage runs, so this
module sits below every stage and imports none of them.

A new stage: one entry in :data:`STAGES` (its module has ``run(spark, cfg) -> dict``, a summary)
and one in :data:`STAGE_INPUTS`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable, NamedTuple

from recsys_spark.config import Config
from recsys_spark.waits import stage_deadline


class Stage(NamedTuple):
    """A stage: its module, which has ``run(spark, cfg) -> dict`` (a summary), and what it does."""

    module: str
    purpose: str


STAGES: dict[str, Stage] = {
    "generate": Stage("recsys_spark.data.generate", "write a synthetic REES46-style clickstream to paths.raw"),
    "clean": Stage("recsys_spark.etl.clean", "validate, de-duplicate, sessionise, pseudonymise raw events"),
    "featurize": Stage("recsys_spark.features.featurize", "vocabularies, sequences, temporal split"),
    "train": Stage("recsys_spark.train.runner", "train the two-tower model with Horovod on Spark, register it"),
    "evaluate": Stage("recsys_spark.evaluation.evaluate", "full-ranking metrics against baselines"),
    "score": Stage("recsys_spark.scoring.score", "top-K recommendations per user from the registered model"),
    "publish": Stage("recsys_spark.serving.publish", "a run date's recommendations into Redis, then served atomically"),
    "serve": Stage("recsys_spark.serving.server",
                   "the HTTP service: cached, real-time and fallback lists, exposures logged"),
    "run": Stage("recsys_spark.pipeline", "the whole pipeline: generate, clean, featurize, train, evaluate, score"),
}

# The paths (config keys) each stage reads; local ones are checked before Spark starts.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "generate": (),
    "clean": ("raw",),
    "featurize": ("clean",),
    "train": ("features",),
    "evaluate": ("features",),
    "score": ("features",),
    "publish": ("recommendations",),
    "serve": ("features", "clean"),
    "run": (),
}


# Options that stand for an override of one stage's config: option -> (stage, override, help).
STAGE_OPTIONS: dict[str, tuple[str, str, str]] = {
    "--rollback": ("publish", "publish.rollback=true", "serve the version published before the current one again"),
}


def needs_spark(stage: str, cfg: Config) -> bool:
    """Whether the stage's run needs a SparkSession (and its input paths): not a rollback of the
    served version (``publish.rollback``), which only talks to Redis."""
    return not (stage == "publish" and cfg.publish.rollback)


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys" if stage is None else f"recsys {stage}",
        description="recsys_spark: clickstream to recommendations on Spark, Horovod and MLflow.",
    )
    if stage is None:
        parser.add_argument("stage", choices=list(STAGES), help="the stage to run")
    parser.add_argument("--config", "-c", default=None, help="YAML profile, e.g. conf/local.yaml")
    parser.set_defaults(stage_options=[])  # a stage without options of its own has none to give
    for option, (owner, override, text) in STAGE_OPTIONS.items():
        if stage in (None, owner):
            parser.add_argument(option, dest="stage_options", action="append_const", const=(owner, option, override),
                                default=[], help=f"recsys {owner}: {text} (= {override})")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="dotted overrides, e.g. train.epochs=3"
    )
    return parser


def overrides_of(parser: argparse.ArgumentParser, stage: str, args: argparse.Namespace) -> list[str]:
    """The dotted overrides of parsed ``args``: those given, then those its STAGE_OPTIONS stand for
    (an option of another stage is a usage error)."""
    implied = []
    for owner, option, override in args.stage_options:
        if owner != stage:
            parser.error(f"{option} is an option of recsys {owner}, not of recsys {stage}")
        implied.append(override)
    return [*args.overrides, *implied]


def stage_function(stage: str) -> Callable[[Any, Config], dict]:
    """The stage's ``run(spark, cfg)``, bounded by ``spark.stage_timeout_minutes`` (see waits.py).

    ``run`` itself is not bounded as a whole: it calls each stage through this function.
    """
    module = importlib.import_module(STAGES[stage].module)
    if stage in ("run", "serve"):  # serve runs until stopped; it bounds its own Spark part
        return module.run

    def bounded(spark: Any, cfg: Config) -> dict:
        with stage_deadline(spark, stage, cfg.spark.stage_timeout_minutes):
            return module.run(spark, cfg)

    return bounded

