"""The driver-side checks of `recsys train` that need no Horovod job."""

from __future__ import annotations

import pytest

from recsys_spark.config import TrainConfig
from recsys_spark.train.runner import training_curve
from recsys_spark.train.validation import metric_key

pytestmark = pytest.mark.unit


def test_training_curve_plots_every_evaluation_against_its_step():
    history = [{"evaluation": e, "epoch": 1, "step": 50 * e, "train_loss": 5.0 - e, metric_key("val_ndcg", 10): 0.1 * e,
                metric_key("val_recall", 10): 0.2 * e} for e in (1, 2, 3)]
    fig = training_curve(history, 10)
    loss_axis, val_axis = fig.axes
    assert list(loss_axis.lines[0].get_ydata()) == [4.0, 3.0, 2.0]
    assert list(loss_axis.lines[0].get_xdata()) == [50, 100, 150] and loss_axis.get_xlabel() == "optimiser step"
    assert [line.get_label() for line in val_axis.lines] == ["val_ndcg_at_10", "val_recall_at_10"]


def test_horovod_cycle_time_must_not_be_negative():
    from recsys_spark.errors import ConfigError

    assert TrainConfig().horovod_cycle_time_ms == 5.0
    with pytest.raises(ConfigError, match="train.horovod_cycle_time_ms"):
        TrainConfig(horovod_cycle_time_ms=-1.0)
