"""The whole pipeline on a tiny generated sample, two Horovod processes on gloo, as a user runs it."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from recsys_spark import schema

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def test_recsys_run_end_to_end(tiny_pipeline):
    out, root = tiny_pipeline, tiny_pipeline.root

    # The summary says where everything is.
    assert "== recsys run: done" in out.stdout
    assert f"recommendations: {root / 'recommendations'}" in out.stdout
    assert "trained: models:/recsys_two_tower@challenger (version 1)" in out.stdout
    # The first model has no champion to beat: the gate promotes it, or the tuned baseline that beats
    # it on validation (then registered as version 2), and score uses what it promoted.
    serving = re.search(r"^  serving: (the model|\S+ \(tuned\)), version (\d+): ", out.stdout, re.MULTILINE)
    assert serving and (serving[1] == "the model") == (serving[2] == "1"), out.stdout[-3000:]
    assert f"gate: promoted (champion: version {serving[2]})" in out.stdout
    assert f"scored_with: models:/recsys_two_tower@champion (version {serving[2]})" in out.stdout
    assert "model.ndcg@20: " in out.stdout and "popularity.ndcg@20: " in out.stdout

    # Recommendations: the documented schema, K per user, no seen item.
    recs = pq.read_table(root / "recommendations").to_pandas()
    assert set(schema.RECOMMENDATION_SCHEMA.fieldNames()) <= set(recs.columns)
    per_user = recs.groupby(schema.USER_ID)[schema.RANK].agg(["count", "min", "max"])
    assert (per_user["count"] == 10).all() and (per_user["min"] == 1).all() and (per_user["max"] == 10).all()
    assert set(recs[schema.SOURCE]) <= {"model", "fallback", "explore"}

    # Evaluation ran both the model and the popularity baseline.
    report = json.loads((root / "reports" / "evaluation.json").read_text())
    text = json.dumps(report)
    assert "popularity" in text and "ndcg@10" in text

    # MLflow: the registered model has the alias, and the pipeline run has its stage runs nested.
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow/mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias("recsys_two_tower", "challenger")
    assert str(version.version) == "1"
    runs = mlflow.search_runs(experiment_names=["recsys_spark"], output_format="list")
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"pipeline", "clean", "featurize", "train", "evaluate", "score"} <= stages
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) >= 5
    train_run = next(r for r in runs if r.data.tags.get("stage") == "train")
    assert any(k.startswith("val_ndcg") for k in train_run.data.metrics)
