"""The collectives' helpers: gradient clipping, Horovod's environment (train/collective.py)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("max_norm, expected", [(0.0, [-3.0, -4.0]), (1.0, [-0.6, -0.8])])
def test_grad_clip_zero_leaves_the_gradient_alone_and_a_positive_norm_clips_it(max_norm, expected):
    from recsys_spark.train.collective import clip_and_step

    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, 4.0])  # norm 5
    norm = clip_and_step(torch.optim.SGD([param], lr=1.0), [param], max_norm, None)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(param.detach(), torch.tensor(expected))
    with pytest.raises(ValueError, match="grad_clip must be >= 0"):
        clip_and_step(torch.optim.SGD([param], lr=1.0), [param], -1.0, None)


def test_unparsable_horovod_settings_are_dropped_and_numbers_kept(monkeypatch):
    from recsys_spark.train.collective import drop_unparsable_horovod_settings

    # What horovod.run() (0.28.1) exports: its defaults end in a stray comma.
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "(None,)")
    monkeypatch.setenv("HOROVOD_CACHE_CAPACITY", "(None,)")
    assert drop_unparsable_horovod_settings() == ["HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY"]
    assert "HOROVOD_CYCLE_TIME" not in os.environ and "HOROVOD_CACHE_CAPACITY" not in os.environ
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "2.5")
    monkeypatch.setenv("HOROVOD_CACHE_CAPACITY", "1024")
    assert drop_unparsable_horovod_settings() == []
    assert os.environ["HOROVOD_CYCLE_TIME"] == "2.5" and os.environ["HOROVOD_CACHE_CAPACITY"] == "1024"
