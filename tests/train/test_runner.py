"""The driver-side checks of `recsys train` that need no Horovod job."""

from __future__ import annotations

import os
import threading

import pytest

from recsys_spark.config import TrainConfig
from recsys_spark.errors import DataQualityError
from recsys_spark.train.checkpoint import model_args_from
from recsys_spark.train.runner import check_ranks, training_curve
from recsys_spark.train.system import bind_threads, pin_cpus
from recsys_spark.train.validation import metric_key

pytestmark = pytest.mark.unit


def test_check_ranks_returns_rank_zero_and_refuses_diverged_weights():
    main = {"rank": 0, "checksum": "abc", "state_dict": {}}
    assert check_ranks([{"rank": 1, "checksum": "abc"}, main]) is main
    with pytest.raises(DataQualityError, match="different weights"):
        check_ranks([main, {"rank": 1, "checksum": "abd"}])
    with pytest.raises(DataQualityError, match="rank 0"):
        check_ranks([{"rank": 1, "checksum": "abc"}])


def test_model_args_come_from_metadata_and_config():
    metadata = {"num_items": 40, "num_categories": 5, "num_brands": 7, "num_price_buckets": 11, "max_seq_len": 20,
                "num_event_codes": 5, "num_gap_buckets": 24}
    args = model_args_from(metadata, TrainConfig(embedding_dim=32, num_layers=3, num_heads=4, dropout=0.2,
                                                 user_features=False, interest_pooling=True))
    assert args == {"num_items": 40, "num_categories": 5, "num_brands": 7, "num_price_buckets": 11,
                    "num_event_codes": 5, "num_gap_buckets": 24, "max_seq_len": 20,
                    "dim": 32, "num_layers": 3, "num_heads": 4, "dropout": 0.2, "use_user_features": False,
                    "use_interest_pooling": True, "user_vector": "mixture"}
    with pytest.raises(DataQualityError, match="num_items"):
        model_args_from({"max_seq_len": 20}, TrainConfig())


def test_training_curve_plots_every_evaluation_against_its_step():
    history = [{"evaluation": e, "epoch": 1, "step": 50 * e, "train_loss": 5.0 - e, metric_key("val_ndcg", 10): 0.1 * e,
                metric_key("val_recall", 10): 0.2 * e} for e in (1, 2, 3)]
    fig = training_curve(history, 10)
    loss_axis, val_axis = fig.axes
    assert list(loss_axis.lines[0].get_ydata()) == [4.0, 3.0, 2.0]
    assert list(loss_axis.lines[0].get_xdata()) == [50, 100, 150] and loss_axis.get_xlabel() == "optimiser step"
    assert [line.get_label() for line in val_axis.lines] == ["val_ndcg_at_10", "val_recall_at_10"]


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


def test_horovod_cycle_time_must_not_be_negative():
    from recsys_spark.errors import ConfigError

    assert TrainConfig().horovod_cycle_time_ms == 5.0
    with pytest.raises(ConfigError, match="train.horovod_cycle_time_ms"):
        TrainConfig(horovod_cycle_time_ms=-1.0)
