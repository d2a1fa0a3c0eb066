"""The whole config: one section per stage, and the checks across sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_spark.config.data import CleanConfig, FeaturizeConfig, GenerateConfig
from recsys_spark.config.evaluate import EvaluateConfig, ScoreConfig
from recsys_spark.config.platform import MlflowConfig, PathsConfig, SparkConfig
from recsys_spark.config.serve import PublishConfig, ServeConfig
from recsys_spark.config.train import SearchConfig, TrainConfig, parse_space
from recsys_spark.errors import ConfigError


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        """Raise ConfigError naming the keys of a check across sections (the search's: check_search)."""
        vocab_from, features = self.featurize.vocab_from, self.paths.resolve("features")
        # A folder named here; the one an @alias names is known only from the registry (featurize checks it).
        if vocab_from and not vocab_from.startswith("@") and vocab_from.rstrip("/") == features.rstrip("/"):
            raise ConfigError(f"featurize.vocab_from ({vocab_from}) must differ from paths.features: "
                              "copy the vocabularies elsewhere first")

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        root = Path(self.paths.root).resolve()
        return f"sqlite:///{root}/mlflow/mlflow.db"

    @property
    def artifact_location(self) -> str | None:
        """Artifact root for a newly created experiment, when the store is the local default."""
        if self.mlflow.tracking_uri:
            return None
        return (Path(self.paths.root).resolve() / "mlflow" / "artifacts").as_uri()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted ``section.key -> value`` view, for MLflow params."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


def check_search(cfg: Config) -> None:
    """The search's settings against the rest of the config, when the search is on (a search
    that cannot run stops here, not after its first trial). The trials' and the final
    training's configs are built from a checked one and are not checked again.

    Raises:
        ConfigError: naming the key: train.resume set, a search that leaves the final training
            no time in spark.stage_timeout_minutes, or an end of a range (or a choice) of
            ``search.space`` that the train section refuses on its own.
    """
    search = cfg.search
    if not search.trials:
        return
    if cfg.train.resume:
        raise ConfigError(f"search.trials={search.trials} with train.resume=true: the trials and the final "
                          "training start from scratch (set train.resume=false)")
    if search.timeout_minutes >= cfg.spark.stage_timeout_minutes:
        raise ConfigError(f"search.timeout_minutes ({search.timeout_minutes:g}) must be below "
                          f"spark.stage_timeout_minutes ({cfg.spark.stage_timeout_minutes:g}): the final training "
                          "runs in the same stage, after the search")
    for dimension in parse_space(search.space):
        for value in dimension.ends:
            try:
                dataclasses.replace(cfg.train, **{dimension.key: value})
            except ConfigError as exc:
                raise ConfigError(f"search.space.{dimension.key}: {value!r} is refused: {exc}") from None
