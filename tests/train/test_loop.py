"""Checkpoints, resume after a real kill, early stopping and determinism of the training function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys_spark.config import load_config
from recsys_spark.errors import InputError
from recsys_spark.train.checkpoint import BEST_WEIGHTS, LAST_CHECKPOINT, read_checkpoint, state_checksum
from recsys_spark.train.loop import train_fn

from tests.train.test_data import write_features

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"examples_per_s", "data_wait_share", "train_s", "peak_rss_mb"}

# Dies by SIGKILL right after rank 0 has written the checkpoint of epoch 1: no cleanup, no
# `finally`, exactly what a lost executor or an OOM kill leaves behind.
KILLED_RUN = """
import json, os, signal, sys
from recsys_spark.config import load_config
from recsys_spark.train.loop import train_fn

cfg = load_config(None, json.loads(sys.argv[1]))
def die(epoch):
    if epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
train_fn(cfg.to_dict(), None, None, on_checkpoint=die)
"""


def overrides(root: Path, features: Path, **extra) -> list[str]:
    values = {
        "paths.root": root, "paths.features": features, "train.launcher": "local", "train.epochs": 3,
        "train.batch_size": 32, "train.embedding_dim": 16, "train.num_layers": 1, "train.uniform_negatives": 16,
        "train.warmup_steps": 3, "train.lr": 0.01, "train.dropout": 0.1, "train.patience": 0,
        "train.threads_per_proc": 1, "train.device": "cpu",
    }
    values.update({f"train.{k}": v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def train(args: list[str], **kwargs) -> dict:
    threads = torch.get_num_threads()
    try:
        return train_fn(load_config(None, args).to_dict(), None, None, **kwargs)
    finally:
        torch.set_num_threads(threads)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("features")
    write_features(root)
    return root


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, features):
    # Evaluations every 2 steps as well as at pass ends: the resumed run repeats them exactly.
    whole = train(overrides(tmp_path / "whole", features, eval_every_steps=2))
    assert len(whole["history"]) > 3

    killed_root = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN,
                           json.dumps(overrides(killed_root, features, eval_every_steps=2))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = read_checkpoint(str(killed_root / "checkpoints"), LAST_CHECKPOINT)
    assert last["epoch"] == 1 and not (killed_root / "checkpoints" / "epoch_002.pt").exists()
    assert set(last) >= {"model", "optimizer", "scheduler", "rng", "config", "model_args", "best", "history"}
    assert set(last["rng"][0]) >= {"python", "numpy", "torch", "negatives"}

    resumed = train(overrides(killed_root, features, resume="true", eval_every_steps=2))

    assert resumed["resumed_from"] == 1
    assert resumed["checksum"] == whole["checksum"]  # the final weights, bit for bit
    assert state_checksum(resumed["state_dict"]) == state_checksum(whole["state_dict"])  # the best epoch's
    assert resumed["best_evaluation"] == whole["best_evaluation"] and resumed["steps"] == whole["steps"]
    assert without_timings(resumed["history"]) == without_timings(whole["history"])


def test_resume_without_a_checkpoint_starts_from_scratch_and_a_finished_run_stays_finished(tmp_path, features):
    first = train(overrides(tmp_path, features, epochs=2, resume="true"))
    assert first["resumed_from"] == 0 and len(first["history"]) == 2
    again = train(overrides(tmp_path, features, epochs=2, resume="true"))
    assert again["resumed_from"] == 2 and again["checksum"] == first["checksum"] and len(again["history"]) == 2


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, features):
    train(overrides(tmp_path, features, epochs=1))
    with pytest.raises(InputError, match="train.resume: .* different model"):
        train(overrides(tmp_path, features, epochs=2, resume="true", embedding_dim=8))


def test_training_is_deterministic_on_cpu_for_a_seed(tmp_path, features):
    one = train(overrides(tmp_path / "a", features, epochs=1))
    two = train(overrides(tmp_path / "b", features, epochs=1))
    other = train(overrides(tmp_path / "c", features, epochs=1, seed=8))
    assert one["checksum"] == two["checksum"] != other["checksum"]


def test_early_stopping_counts_evaluations_and_keeps_the_best(tmp_path, features):
    # lr = 0: the weights never move, so validation NDCG never improves on the first evaluation's.
    result = train(overrides(tmp_path, features, epochs=5, lr=0.0, patience=2, patience_steps=0, eval_every_steps=0,
                             lr_schedule="cosine", plateau_decays=0))
    assert result["stopped_early"] is True and result["stop_reason"].startswith("no gain in validation NDCG@20 for 2")
    assert [(h["evaluation"], h["epoch"]) for h in result["history"]] == [(1, 1), (2, 2), (3, 3)]
    assert (result["best_evaluation"], result["best_epoch"]) == (1, 1)
    assert read_checkpoint(str(tmp_path / "checkpoints"))["stopped"] is True
    best = read_checkpoint(str(tmp_path / "checkpoints"), BEST_WEIGHTS)["model"]
    assert state_checksum(best) == state_checksum(result["state_dict"])


def test_a_plateau_first_cuts_the_learning_rate_then_stops(tmp_path, features):
    # No evaluation after the first can gain min_delta = 1: every one is a plateau step.
    result = train(overrides(tmp_path, features, epochs=8, patience=2, patience_steps=0, min_delta=1.0,
                             eval_every_steps=0, lr_schedule="constant", warmup_steps=0, plateau_decays=1,
                             plateau_factor=0.1))
    # Evaluations 2-3 make the first plateau (the rate drops to a tenth), 4-5 the second (stop).
    assert [h["evaluation"] for h in result["history"]] == [1, 2, 3, 4, 5]
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001])
    assert result["stopped_early"] is True and result["best_evaluation"] == 1
    plateau = read_checkpoint(str(tmp_path / "checkpoints"))["plateau"]
    assert (plateau["scale"], plateau["decays"]) == (pytest.approx(0.1), 1)


def test_wsd_cools_down_after_a_plateau_and_stops_when_the_cool_down_ends(tmp_path, features):
    # 7 steps a pass, an evaluation at each pass end. No evaluation after the first can gain
    # min_delta = 1, so after patience = 2 more (step 21) the plateau starts the cool-down, over
    # ceil(0.5 x 21) = 11 steps: linear from the peak 0.01 to 0.05 x 0.01, ending at step 32.
    result = train(overrides(tmp_path, features, epochs=8, patience=2, patience_steps=0, min_delta=1.0,
                             eval_every_steps=0, lr_schedule="wsd", warmup_steps=0, cooldown_share=0.5))
    assert [h["step"] for h in result["history"]] == [7, 14, 21, 28, 32]
    # The rate logged at an evaluation is the next step's: 1 - 0.95 x (28 - 21) / 11 at step 28.
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.01, 0.01, 0.01, 0.01 * (1 - 0.95 * 7 / 11), 0.0005])
    assert result["stop_reason"] == "the learning rate's cool-down ended at step 32" and result["stopped_early"]
    assert result["best_evaluation"] == 1


def test_wsd_without_a_plateau_cools_down_over_the_budgets_last_share(tmp_path, features):
    # 3 passes = 21 steps; the last ceil(0.2 x 21) = 5 (steps 16-21) decay linearly to 0.05 x the peak.
    result = train(overrides(tmp_path, features, epochs=3, eval_every_steps=2, lr_schedule="wsd", warmup_steps=0,
                             cooldown_share=0.2))
    lr = {h["step"]: h["lr"] for h in result["history"]}
    assert lr[14] == lr[16] == pytest.approx(0.01)
    assert lr[18] == pytest.approx(0.01 * (1 - 0.95 * 2 / 5)) and lr[20] == pytest.approx(0.01 * (1 - 0.95 * 4 / 5))
    assert result["steps"] == 21 and result["stopped_early"] is False


def test_the_budget_is_in_steps_and_evaluations_fall_inside_passes(tmp_path, features):
    one_pass = train(overrides(tmp_path / "pass", features, epochs=1, eval_every_steps=0))["steps"]
    assert one_pass >= 4
    budget, every = one_pass + one_pass // 2, one_pass // 2  # ends in mid-pass 2
    result = train(overrides(tmp_path / "budget", features, epochs=5, max_steps=budget, eval_every_steps=every))

    assert result["steps"] == budget and result["stop_reason"] == f"reached train.max_steps={budget}"
    assert result["stopped_early"] is False
    # Every `every` steps and at the end of each pass (or of the budget), never twice at one step.
    expected = sorted(set(range(every, budget, every)) | {one_pass, budget})
    history = result["history"]
    assert [h["step"] for h in history] == expected
    assert [h["evaluation"] for h in history] == list(range(1, len(expected) + 1))
    assert [h["epoch"] for h in history] == [1 if step <= one_pass else 2 for step in expected]
    # The learning rate decays over the budget: at its end it is min_lr_ratio x the peak.
    assert history[-1]["lr"] == pytest.approx(0.01 * 0.05)


def test_the_progress_bar_writes_at_most_one_update_per_30_s_where_stderr_is_a_log(tmp_path, features, capfd):
    # stderr captured to a file, not a terminal: per pass the bar may open and close, nothing in between
    # (21 steps in under 30 s; a refresh per step would write 21 updates).
    train(overrides(tmp_path, features, epochs=3, eval_every_steps=0))
    updates = capfd.readouterr().err.count("\r")
    assert 0 < updates <= 2 * 3


def test_the_progress_bar_of_a_log_never_refreshes_between_its_30_s_ticks():
    import io

    from recsys_spark.train.loop import PROGRESS_LOG_INTERVAL_S, progress_bar

    # tqdm's monitor thread forces a refresh every maxinterval (10 s) once a dynamic miniters
    # exceeds 1: seen as an update every 10-20 s on 3.5 s steps. Fixed miniters and a maxinterval
    # of the log interval leave mininterval alone in charge.
    bar = progress_bar("pass 1", 0, 100, enabled=True, stream=io.StringIO())
    assert PROGRESS_LOG_INTERVAL_S == 30
    assert (bar.mininterval, bar.maxinterval, bar.miniters, bar.dynamic_miniters) == (30, 30, 1, False)
    bar.close()
