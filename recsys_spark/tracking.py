"""MLflow wiring: the store, the experiment, one run per stage (nested under a pipeline run).

Every stage opens its run with :func:`stage_run`; inside ``recsys run`` those runs nest under
the pipeline's parent run. The resolved config travels with each run (params + artifact).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from recsys_spark.config import Config

log = logging.getLogger(__name__)

_MAX_PARAM = 500  # MLflow's limit on a param value's length


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store and return the experiment id (created if new)."""
    import mlflow

    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by Spark tasks on this machine
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.artifact_location)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, run_date: str | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage, nested when a pipeline run is active.

    Yields:
        the active ``mlflow.ActiveRun``.
    """
    import mlflow

    experiment_id = setup(cfg)
    run_date = run_date or dt.date.today().isoformat()
    nested = mlflow.active_run() is not None
    tags = {"stage": stage, "run_date": run_date, "git_commit": git_commit()}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{stage}-{run_date}", nested=nested, tags=tags
    ) as run:
        log_config(cfg)
        yield run


def log_config(cfg: Config) -> None:
    """Log the resolved config as params (dotted keys) and as ``config.yaml``."""
    import mlflow

    params = {k: str(v)[:_MAX_PARAM] for k, v in cfg.flat().items()}
    mlflow.log_params(params)
    mlflow.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True), "config.yaml")


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(obj, artifact_file)


def log_figure(fig: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_figure(fig, artifact_file)


def log_local_dir(path: str, artifact_path: str) -> None:
    import mlflow

    mlflow.log_artifacts(path, artifact_path)


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="recsys_")
