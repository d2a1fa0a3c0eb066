"""MLflow wiring: the store, the experiment, one run per stage (nested under a pipeline run).

Every stage opens its run with :func:`stage_run`; inside ``recsys run`` those runs nest under
the pipeline's parent run. What the MLflow UI shows for each run:

* name ``<stage>-<run date>`` in the experiment ``mlflow.experiment``;
* tags ``stage``, ``run_date``, ``git_commit``, the Spark application (``spark.app_id``,
  ``spark.master``), and, where the stage knows it, the event dates it read
  (``data.first_event_date`` / ``data.last_event_date``, see :func:`tag_data_range`);
* a description (``mlflow.note.content``) saying what the stage does;
* the resolved config as params and as the artifact ``config.yaml``; the stage's reports and
  plots as further artifacts.

The run date is, in order: the ``run_date`` argument, the environment variable
``RECSYS_RUN_DATE`` (an orchestrator's logical date), ``score.run_date``, today in UTC.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import yaml
from pyspark.sql import SparkSession

from recsys_spark.config import Config
from recsys_spark.errors import ConfigError
from recsys_spark.stages import STAGES

# mlflow (2 s to import) is imported inside the functions that call it: every stage module imports
# this one, and the Spark executors import the stage modules whose functions they run.

log = logging.getLogger(__name__)

_MAX_PARAM = 500  # MLflow's limit on a param value's length

RUN_DATE_ENV = "RECSYS_RUN_DATE"
GIT_COMMIT_ENV = "RECSYS_GIT_COMMIT"

# Tag keys (also what the tests and the README refer to).
TAG_STAGE = "stage"
TAG_RUN_DATE = "run_date"
TAG_GIT_COMMIT = "git_commit"
TAG_FIRST_DATE = "data.first_event_date"
TAG_LAST_DATE = "data.last_event_date"
TAG_NOTE = "mlflow.note.content"  # the run's (or experiment's) description in the MLflow UI

EXPERIMENT_NOTE = (
    "recsys_spark: clickstream logs to a two-tower sequential recommender and daily batch "
    "recommendations. One run per stage, named `<stage>-<run date>`; `recsys run` nests them "
    "under a `pipeline-<run date>` run. Registered models carry the aliases that evaluate and "
    "score use."
)


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new)."""
    import mlflow  # not at the top: see the note at the imports

    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by Spark tasks on this machine
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    experiment_id = mlflow.create_experiment(
        cfg.mlflow.experiment, artifact_location=cfg.artifact_location, tags={TAG_NOTE: EXPERIMENT_NOTE}
    )
    log.info("created MLflow experiment %r (id %s) in %s", cfg.mlflow.experiment, experiment_id, uri)
    return experiment_id


def resolve_run_date(cfg: Config, explicit: str | None = None) -> str:
    """The date a run is named and tagged after (ISO): see the module docstring for the order.

    Raises:
        ConfigError: ``RECSYS_RUN_DATE`` is set but is not an ISO date.
    """
    if explicit:
        return explicit
    from_env = os.environ.get(RUN_DATE_ENV, "").strip()
    if from_env:
        try:
            return dt.date.fromisoformat(from_env).isoformat()
        except ValueError:
            raise ConfigError(f"environment variable {RUN_DATE_ENV}: {from_env!r} is not an ISO date "
                              "(YYYY-MM-DD)") from None
    return cfg.score.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()


def git_commit() -> str:
    """The commit of the code that runs: ``RECSYS_GIT_COMMIT`` if set (a CI build or an image
    records it there), else ``git rev-parse`` in the package's folder, then in the working
    directory (under spark-submit the package runs from a zip); "unknown" when neither is a
    git checkout."""
    pinned = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if pinned:
        return pinned
    package_dir = Path(__file__).resolve().parent
    for folder in (package_dir, Path.cwd()):
        if not folder.is_dir():
            continue
        try:
            out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                 timeout=5, cwd=folder)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


def run_tags(stage: str, date: str, description: str | None = None) -> dict[str, str]:
    """The tags every run of ``stage`` starts with (see the module docstring)."""
    tags = {TAG_STAGE: stage, TAG_RUN_DATE: date, TAG_GIT_COMMIT: git_commit(), **_spark_tags()}
    if description:
        tags[TAG_NOTE] = description
    return tags


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, run_date: str | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage, nested when a pipeline run is active.

    Args:
        cfg: the resolved config (logged as params and ``config.yaml``).
        stage: the stage's name, e.g. "train"; the run is named ``<stage>-<run date>``.
        run_date: the date the run is about; default: see :func:`resolve_run_date`.

    Yields:
        the active ``mlflow.ActiveRun``. A stage that raises leaves the run FAILED.
    """
    import mlflow  # not at the top: see the note at the imports

    experiment_id = setup(cfg)
    date = resolve_run_date(cfg, run_date)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{stage}-{date}",
        nested=nested,
        tags=run_tags(stage, date, _stage_description(stage)),
    ) as run:
        log_config(cfg)
        yield run


def tag_data_range(first: dt.date | dt.datetime | str | None, last: dt.date | dt.datetime | str | None) -> None:
    """Tag the active run with the first and last event date (ISO) of the data it read.

    Datetimes are reduced to their UTC date; None leaves that end untagged.
    """
    import mlflow  # not at the top: see the note at the imports

    tags = {key: _iso_date(value) for key, value in ((TAG_FIRST_DATE, first), (TAG_LAST_DATE, last))
            if value is not None}
    if tags:
        mlflow.set_tags(tags)


def data_range_of_features(metadata: dict[str, Any]) -> tuple[str, str] | None:
    """(first, last) event date of the data a features folder was built from, from its
    ``metadata.json`` (the featurize stage writes ``data_start`` / ``data_end``); None if absent."""
    start, end = metadata.get("data_start"), metadata.get("data_end")
    if not start or not end:
        return None
    return _iso_date(start), _iso_date(end)


def log_config(cfg: Config) -> None:
    """Log the resolved config as params (dotted keys) and as ``config.yaml``."""
    import mlflow  # not at the top: see the note at the imports

    params = {k: str(v)[:_MAX_PARAM] for k, v in cfg.flat().items()}
    mlflow.log_params(params)
    mlflow.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True), "config.yaml")


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow  # not at the top: see the note at the imports

    mlflow.log_dict(obj, artifact_file)


def log_figure(fig: Any, artifact_file: str) -> None:
    import mlflow  # not at the top: see the note at the imports

    mlflow.log_figure(fig, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    import mlflow  # not at the top: see the note at the imports

    mlflow.log_text(text, artifact_file)


def log_results(metrics: dict[str, float], params: dict[str, Any], tags: dict[str, str]) -> None:
    """Log a stage's metrics, params and tags to the active run, in that order."""
    import mlflow  # not at the top: see the note at the imports

    mlflow.log_metrics(metrics)
    mlflow.log_params(params)
    mlflow.set_tags(tags)


def _iso_date(value: dt.date | dt.datetime | str) -> str:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.date().isoformat()
    return value.isoformat()


def _spark_tags() -> dict[str, str]:
    """The running Spark application, so that a run links to its Spark UI / history entry."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        return {}
    context = spark.sparkContext
    return {"spark.app_id": context.applicationId, "spark.master": context.master}


def _stage_description(stage: str) -> str | None:
    entry = STAGES.get(stage)
    return f"`recsys {stage}`: {entry.purpose}." if entry else None
