"""Checkpoints: save and read, the checksum of a state, a read every rank survives, the model's
arguments (train/checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys_spark.config import TrainConfig
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.train.checkpoint import model_args_from, save_checkpoint, state_checksum

pytestmark = pytest.mark.unit


def test_checkpoint_round_trip_and_checksum(tmp_path):
    state = {"w": torch.arange(4.0), "b": torch.ones(2)}
    path = save_checkpoint(str(tmp_path / "ckpt"), {"epoch": 3, "model": state})
    assert Path(path).name == "epoch_003.pt" and (tmp_path / "ckpt" / "last.pt").is_file()
    loaded = torch.load(path, weights_only=False)
    assert loaded["epoch"] == 3 and state_checksum(loaded["model"]) == state_checksum(state)
    assert state_checksum({"w": torch.arange(4.0), "b": torch.zeros(2)}) != state_checksum(state)


class StubComm:
    """One rank of two: rank 0 records what it broadcasts, rank 1 receives ``received``."""

    def __init__(self, is_main: bool, received=None):
        self.is_main, self.received, self.sent = is_main, received, []

    def broadcast_object(self, obj):
        self.sent.append(obj)
        return obj if self.is_main else self.received


def test_a_read_that_fails_on_rank_0_fails_every_rank_instead_of_hanging_the_others():
    from recsys_spark.train.checkpoint import read_on_main

    def broken():
        raise InputError("checkpoint /x/last.pt cannot be read: truncated")

    main = StubComm(is_main=True)
    with pytest.raises(InputError, match="truncated"):
        read_on_main(main, broken)
    assert main.sent == [(False, "InputError: checkpoint /x/last.pt cannot be read: truncated")]  # rank 0 still broadcast
    other = StubComm(is_main=False, received=main.sent[0])
    with pytest.raises(InputError, match="rank 0 could not read its input: InputError: checkpoint /x/last.pt"):
        read_on_main(other, broken)  # rank 1 never reads
    assert read_on_main(StubComm(is_main=True), lambda: {"step": 3}) == {"step": 3}


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
