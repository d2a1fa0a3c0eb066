"""The second launcher: the same training function under Spark's TorchDistributor (DDP on gloo)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from recsys_spark.models.registry import load_bundle
from recsys_spark.train import runner
from recsys_spark.train.checkpoint import state_checksum

from tests.train.test_data import write_features
from tests.train.test_horovod import EPOCHS, tiny_config

pytestmark = pytest.mark.distributed


def test_torch_distributor_trains_two_ddp_processes_and_registers(spark, tmp_path):
    write_features(tmp_path / "features")
    cfg = tiny_config(tmp_path, "torch_distributor")

    summary = runner.run(spark, cfg)

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.tags["train.launcher"] == "torch_distributor"
    checksums = json.loads(run.data.tags["train.rank_checksums"])
    assert run.data.tags["train.world_size"] == "2" and len(checksums) == 2 and checksums[0] == checksums[1]
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)]
    assert len(losses) == EPOCHS and losses[-1] < losses[0]
    bundle, version = load_bundle(cfg)
    assert version == summary["version"] == "1"
    import torch

    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state_checksum(bundle.state_dict) == state_checksum(best["model"]) and last["world_size"] == 2
