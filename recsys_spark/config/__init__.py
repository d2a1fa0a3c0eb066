"""Typed, layered configuration.

Layers, later wins:
  1. the dataclass defaults below (the built-in defaults; ``conf/base.yaml`` lists them all),
  2. a YAML profile given with ``--config`` (``extends:`` chains to another file),
  3. dotted ``section.key=value`` overrides from the command line (``section.key.entry=value``
     sets one entry of a mapping).

Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
Secrets never live here: the pseudonymisation key and tracking credentials are read from
the environment (see ``CleanConfig.pseudonym_key_env``).
"""


# The package, by concept: base.py (what the checks share), platform.py (spark, paths, mlflow),
# data.py (generate, clean, featurize), train.py (train, search), evaluate.py (evaluate, score),
# serve.py (publish, serve), root.py (Config and its checks across sections), loading.py.
from recsys_spark.config.base import EVENT_TYPES, iso_date
from recsys_spark.config.data import (
    CLEAN_COLUMNS,
    EMPTYABLE_COLUMNS,
    ID_COLUMNS,
    ID_TYPES,
    MAX_ITEM_ID_OFFSET,
    PRODUCT_ID_BASE,
    PRODUCT_ID_SPAN,
    CleanConfig,
    clean_dates,
    FeaturizeConfig,
    GenerateConfig,
)
from recsys_spark.config.evaluate import BASELINES, COOCCURRENCE_SIMILARITIES, EvaluateConfig, ScoreConfig
from recsys_spark.config.loading import from_dict, load_config
from recsys_spark.config.platform import URI_SCHEMES, MlflowConfig, PathsConfig, SparkConfig, is_uri
from recsys_spark.config.root import Config, check_search
from recsys_spark.config.serve import REDIS_PREFIX_CHARS, PublishConfig, ServeConfig
from recsys_spark.config.train import (
    NOT_SEARCHABLE,
    TRAINING_USER_VECTOR,
    SearchConfig,
    SearchDimension,
    TrainConfig,
    parse_space,
)

__all__ = [
    "BASELINES", "CLEAN_COLUMNS", "COOCCURRENCE_SIMILARITIES", "EMPTYABLE_COLUMNS", "EVENT_TYPES", "ID_COLUMNS",
    "ID_TYPES", "MAX_ITEM_ID_OFFSET", "NOT_SEARCHABLE", "PRODUCT_ID_BASE", "PRODUCT_ID_SPAN", "REDIS_PREFIX_CHARS",
    "TRAINING_USER_VECTOR", "URI_SCHEMES", "CleanConfig", "Config", "EvaluateConfig", "FeaturizeConfig",
    "GenerateConfig", "MlflowConfig", "PathsConfig", "PublishConfig", "ScoreConfig", "SearchConfig",
    "SearchDimension", "ServeConfig", "SparkConfig", "TrainConfig", "check_search", "clean_dates", "from_dict", "is_uri",
    "iso_date", "load_config", "parse_space",
]
