"""GPU training: each rank pins its local GPU and trains with mixed precision. Skips without CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_spark.train.system import amp_settings, pick_device

from tests.train.test_data import write_features
from tests.train.test_loop import overrides, train

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")


@pytest.mark.gpu
@needs_gpu
def test_local_rank_pins_its_gpu_and_amp_picks_a_dtype():
    device = pick_device("cuda", local_rank=0)
    assert device == torch.device("cuda", 0) and torch.cuda.current_device() == 0
    dtype, scaled = amp_settings(device, enabled=True)
    assert dtype in (torch.bfloat16, torch.float16) and scaled == (dtype == torch.float16)
    assert amp_settings(device, enabled=False) == (None, False)


@pytest.mark.gpu
@needs_gpu
def test_training_on_gpu_with_amp_learns_and_returns_cpu_weights(tmp_path):
    write_features(tmp_path / "features")
    result = train(overrides(tmp_path, tmp_path / "features", epochs=3, device="cuda", amp="true", dropout=0.0))
    losses = [h["train_loss"] for h in result["history"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert all(v.device.type == "cpu" and torch.isfinite(v.float()).all() for v in result["state_dict"].values())
    cpu = train(overrides(tmp_path / "cpu", tmp_path / "features", epochs=3, device="cpu", dropout=0.0))
    # Mixed precision changes the arithmetic, not what is learned: validation quality is close.
    assert result["history"][-1]["val_ndcg_at_20"] == pytest.approx(cpu["history"][-1]["val_ndcg_at_20"], abs=0.15)
