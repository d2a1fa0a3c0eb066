"""``horovodrun -np 2 --gloo python -m recsys_spark.train.horovodrun``, for real: two processes on
gloo take the same path as ``recsys train`` (the features checked, an incremental run's parent
and windows found on rank 0), and a rank 0 that cannot start stops both ranks in one line."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recsys_spark.config import load_config
from recsys_spark.train import horovodrun

from tests.train.test_data import FIRST_TARGET, write_features

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

HOROVODRUN = Path(sys.executable).parent / "horovodrun"
OLD_ITEMS, NEW_ITEMS, WINDOWS, REPLAY = 32, 40, 200, 40  # as tests/train/test_incremental.py


def overrides(root: Path, features: Path, alias: str, **train) -> list[str]:
    values = {"epochs": 1, "batch_size": 32, "embedding_dim": 16, "num_layers": 1, "uniform_negatives": 16,
              "warmup_steps": 0, "lr_schedule": "constant", "patience": 0, "threads_per_proc": 1,
              "replay_windows": REPLAY, **train}
    return [f"paths.root={root}", f"paths.features={features}", f"paths.checkpoints={features}_checkpoints",
            f"mlflow.alias={alias}", "spark.master=local[1]", "spark.show_progress=false",
            *[f"train.{k}={v}" for k, v in values.items()]]


def horovodrun_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HOROVODRUN), "-np", "2", "--gloo", sys.executable, "-m", "recsys_spark.train.horovodrun",
                           *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("horovodrun")
    write_features(root / "day1", num_items=OLD_ITEMS, n_windows=WINDOWS)
    write_features(root / "day2", num_items=NEW_ITEMS, n_windows=WINDOWS, seed=1,
                   first_target=FIRST_TARGET + dt.timedelta(minutes=100))
    return root


def test_two_ranks_train_in_full_then_incrementally_with_recsys_trains_tags(days):
    first = horovodrun_train(overrides(days, days / "day1", "champion"), days)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    child = horovodrun_train(overrides(days, days / "day2", "challenger", mode="incremental"), days)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]

    client = MlflowClient(load_config(None, overrides(days, days / "day1", "champion")).tracking_uri)
    parent, version = (client.get_model_version("recsys_two_tower", v) for v in ("1", "2"))
    parent_tags = client.get_run(parent.run_id).data.tags
    # The stage run's tags, as `recsys train` sets them (these features carry no date cutoffs, so
    # the data range is empty), copied onto the registered version.
    assert parent_tags["train.mode"] == "full" and parent.tags["train.data_range"] == parent_tags["train.data_range"]
    assert parent_tags["train.windows_end"] == (FIRST_TARGET + dt.timedelta(minutes=WINDOWS - 1)).isoformat()
    # The child found its parent through the alias and trained on the 100 windows after the
    # parent's last target plus REPLAY older ones, as `recsys train` does (test_incremental.py).
    tags = client.get_run(version.run_id).data.tags
    assert tags["train.mode"] == "incremental" and tags["train.parent_version"] == "1"
    assert tags["train.parent_run_id"] == parent.run_id
    assert (tags["train.new_windows"], tags["train.replayed_windows"]) == ("100", str(REPLAY))
    assert (days / "day2_checkpoints" / "incremental_windows").is_dir()
    assert version.tags["train.parent_version"] == "1"
    assert set(client.get_registered_model("recsys_two_tower").aliases) == {"champion", "challenger"}


def test_missing_features_stop_both_ranks_with_one_line(tmp_path):
    out = horovodrun_train(overrides(tmp_path, tmp_path / "nowhere", "challenger"), tmp_path)
    assert out.returncode != 0
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "recsys train (horovodrun): error:" in line]
    # Rank 0 names the path; rank 1 hears it from rank 0 rather than waiting for it.
    assert any("nowhere" in line for line in errors), out.stdout[-2000:] + out.stderr[-2000:]
    assert any("rank 0 could not prepare the training" in line for line in errors), out.stderr[-2000:]


@pytest.mark.unit
def test_a_search_is_refused_before_any_rank_starts(tmp_path, capsys):
    assert horovodrun.main(["search.trials=2", f"paths.root={tmp_path}"]) == 2
    assert "search.trials=2: the search starts its own trials" in capsys.readouterr().err
