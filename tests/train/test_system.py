"""A training process's threads, CPUs, device and AMP (train/system.py); on a GPU: test_gpu.py."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from recsys_spark.train.system import amp_settings, bind_threads, pick_device, pin_cpus

pytestmark = pytest.mark.unit


def test_pin_cpus_binds_every_thread_by_local_rank_and_is_undone():
    allowed = sorted(os.sched_getaffinity(0))
    release = threading.Event()
    worker = threading.Thread(target=release.wait)  # a thread that exists before pinning moves too
    worker.start()
    before = os.sched_getaffinity(0)
    try:
        chosen = pin_cpus(local_rank=1, threads=1)
        assert chosen == {allowed[1 % len(allowed)]}
        assert os.sched_getaffinity(0) == chosen
        assert os.sched_getaffinity(worker.native_id) == chosen
    finally:
        bind_threads(before)
        release.set()
        worker.join()
    assert os.sched_getaffinity(0) == set(allowed)


@pytest.mark.unit
def test_cpu_runs_without_autocast_or_loss_scaling():
    assert amp_settings(torch.device("cpu"), enabled=True) == (None, False)
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")
