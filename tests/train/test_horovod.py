"""`recsys train` for real: two Horovod processes on gloo inside Spark tasks, and in-process."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.errors import InputError
from recsys_spark.models.pyfunc import RecommenderPyfunc
from recsys_spark.models.registry import load_bundle
from recsys_spark.schema import ITEM_IDS, SCORES
from recsys_spark.train import runner
from recsys_spark.train.checkpoint import state_checksum

from tests.train.test_data import write_features

pytestmark = pytest.mark.distributed

EPOCHS = 3


def tiny_config(root, launcher: str):
    return load_config(None, [
        f"paths.root={root}",
        f"train.launcher={launcher}",
        "train.num_proc=2",
        f"train.epochs={EPOCHS}",
        "train.batch_size=32",
        "train.embedding_dim=16",
        "train.num_layers=1",
        "train.uniform_negatives=16",
        "train.warmup_steps=3",
        "train.lr=0.01",
        "train.dropout=0.0",
        "train.patience=0",
    ])


def query_rows() -> pd.DataFrame:
    # Histories of the fixture's walk (i -> i + 2).
    return pd.DataFrame({
        schema.HIST_ITEMS: [[0, 0, 0, 0, 2, 4, 6, 8], [0, 0, 0, 0, 0, 0, 0, 11]],
        schema.HIST_EVENTS: [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 4]],
        schema.HIST_GAPS: [[0, 0, 0, 0, 0, 3, 3, 3], [0, 0, 0, 0, 0, 0, 0, 0]],
        schema.SEEN_ITEMS: [[2, 4, 6, 8], [11]],
    })


def test_horovod_on_spark_trains_registers_and_round_trips(spark, tmp_path):
    write_features(tmp_path / "features")
    cfg = tiny_config(tmp_path, "horovod_spark")

    summary = runner.run(spark, cfg)

    assert summary["version"] == "1"
    assert summary["model_uri"] == "models:/recsys_two_tower@challenger"
    assert 1 <= summary["best_evaluation"] <= EPOCHS and summary["examples_per_s"] > 0

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.tags["stage"] == "train"
    # Both ranks ended with bitwise-identical weights.
    checksums = json.loads(run.data.tags["train.rank_checksums"])
    assert run.data.tags["train.world_size"] == "2" and len(checksums) == 2 and checksums[0] == checksums[1]
    # The inputs are logged as datasets: source path and a content digest.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"features/train", "features/validation"}
    assert str(tmp_path / "features" / "train") in inputs["features/train"].dataset.source
    assert len(inputs["features/train"].dataset.digest) == 16
    assert [t.value for t in inputs["features/train"].tags] == ["training"]
    # The resolved config as params and as an artifact.
    assert run.data.params["train.num_proc"] == "2" and run.data.params["train.launcher"] == "horovod_spark"

    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == EPOCHS and losses[-1] < losses[0]
    # One evaluation per pass here (a pass is shorter than train.eval_every_steps), logged at its step.
    for key in ("val_ndcg_at_20", "val_recall_at_20", "examples_per_s", "data_wait_share"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert len(steps) == EPOCHS and steps[-1] == summary["steps"] and steps == sorted(set(steps))
    assert summary["val_ndcg_at_20"] == pytest.approx(max(
        m.value for m in client.get_metric_history(run.info.run_id, "val_ndcg_at_20")), abs=1e-5)
    assert 0.0 <= run.data.metrics["data_wait_share"] < 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "training")}
    assert {"training/curve.png", "training/history.json"} <= artifacts
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}

    # MLflow 3.17 returns the version as an int here, as a str elsewhere.
    registered = client.get_model_version_by_alias("recsys_two_tower", "challenger")
    assert str(registered.version) == "1"
    assert f"best evaluation {summary['best_evaluation']} of {EPOCHS}" in registered.description
    bundle, version = load_bundle(cfg)
    assert version == "1"
    # train.user_vector=auto: every evaluation ranked validation in the three ways, and the best
    # (mode, step) was kept: the mode that led at the best step, whose figure is the summary's.
    by_mode = {mode: {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                        f"val_ndcg_at_20.user_vector_{mode}")}
               for mode in ("last", "mean", "mixture")}
    at_best = {mode: values[summary["best_step"]] for mode, values in by_mode.items()}
    best_mode = max(at_best, key=lambda mode: (at_best[mode], -("last", "mean", "mixture").index(mode)))  # ties: first
    assert bundle.model_args["user_vector"] == run.data.tags["train.user_vector"] == best_mode
    assert at_best[best_mode] == pytest.approx(summary["val_ndcg_at_20"], abs=1e-4)
    assert summary["val_ndcg_at_20"] == pytest.approx(max(max(v.values()) for v in by_mode.values()), abs=1e-4)
    # The registered weights are the best evaluation's, as saved by rank 0.
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert state_checksum(bundle.state_dict) == state_checksum(best["model"])
    assert best["model_args"] == bundle.model_args and best["config"]["train"]["epochs"] == EPOCHS
    assert set(bundle.item_vocab[schema.PRODUCT_ID]) == set(range(1002, 1032))

    direct = RecommenderPyfunc.from_bundle(bundle).predict(None, query_rows(), {"k": 5})
    served = mlflow.pyfunc.load_model(summary["model_uri"]).predict(query_rows(), params={"k": 5})
    pd.testing.assert_frame_equal(served.reset_index(drop=True), direct)
    for ids, scores, seen in zip(direct[ITEM_IDS], direct[SCORES], query_rows()[schema.SEEN_ITEMS]):
        assert len(ids) == 5 and scores == sorted(scores, reverse=True)
        assert set(ids) <= set(range(1002, 1032)) and not set(ids) & {1000 + int(s) for s in seen}

    same, _ = load_bundle(cfg, version=1)
    assert state_checksum(same.state_dict) == state_checksum(bundle.state_dict)
    with pytest.raises(InputError, match="champion"):
        load_bundle(cfg, alias="champion")


def test_local_launcher_trains_in_process(spark, tmp_path):
    write_features(tmp_path / "features")
    cfg = tiny_config(tmp_path, "local")
    torch.set_num_threads(2)

    summary = runner.run(spark, cfg)

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    tags = client.get_run(summary["run_id"]).data.tags
    assert tags["train.world_size"] == "1" and tags["train.launcher"] == "local"
    losses = [m.value for m in sorted(client.get_metric_history(summary["run_id"], "train_loss"), key=lambda m: m.step)]
    assert len(losses) == EPOCHS and losses[-1] < losses[0]
    bundle, version = load_bundle(cfg)
    assert version == summary["version"] == "1"
    assert bundle.build_module().training is False
    # train.threads_per_proc (1) applied only during the in-process run.
    assert torch.get_num_threads() == 2


@pytest.mark.timeout(300)
def test_horovod_that_cannot_start_all_processes_stops_naming_the_key(spark, tmp_path):
    from recsys_spark.waits import WaitTimeout

    # local[2] has two task slots: the third process never starts.
    cfg = load_config(None, [f"paths.root={tmp_path}", "train.launcher=horovod_spark", "train.num_proc=3",
                             "train.batch_size=96", "train.start_timeout_s=15"])
    with pytest.raises(WaitTimeout, match=r"did not all start within train.start_timeout_s=15"):
        runner.launch(spark, cfg, None, None)
    assert spark.range(4).count() == 4  # the session is free again
