"""Finding a registered model version and loading its bundle (used by evaluate and score)."""

from __future__ import annotations

import os

from recsys_spark.config import Config
from recsys_spark.errors import InputError
from recsys_spark.models.bundle import ModelBundle
from recsys_spark.models.pyfunc import BUNDLE_FILE


def load_bundle(cfg: Config, alias: str | None = None, version: int | None = None) -> tuple[ModelBundle, str]:
    """Download the bundle of ``cfg.mlflow.registered_model`` by version or alias.

    Args:
        cfg: gives the tracking store and the registered model's name.
        alias: e.g. "champion" (``models:/name@champion``); None means ``cfg.mlflow.alias``.
        version: a version number; wins over ``alias`` when given.

    Returns:
        (the bundle, the version as a string, e.g. "3").

    Raises:
        InputError: no such model, alias or version in the registry.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(cfg.tracking_uri)
    name = cfg.mlflow.registered_model
    client = MlflowClient()
    try:
        if version is not None:
            model_version = client.get_model_version(name, str(version))
        else:
            model_version = client.get_model_version_by_alias(name, alias or cfg.mlflow.alias)
    except MlflowException as exc:
        wanted = f"version {version}" if version is not None else f"alias {alias or cfg.mlflow.alias!r}"
        raise InputError(
            f"registered model {name!r} has no {wanted} in {cfg.tracking_uri}; run `recsys train` first "
            f"({exc.message.splitlines()[0]})"
        ) from None
    with _temp_dir() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{model_version.version}", dst_path=tmp
        )
        path = _find(local, BUNDLE_FILE)
        return ModelBundle.load(path), str(model_version.version)


def _find(root: str, filename: str) -> str:
    for folder, _, files in os.walk(root):
        if filename in files:
            return os.path.join(folder, filename)
    raise InputError(f"registered model artifacts under {root} hold no {filename}")


def _temp_dir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="recsys_model_")
