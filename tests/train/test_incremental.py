"""train.mode=incremental: a registered parent's weights grown to an extended vocabulary."""

from __future__ import annotations

import datetime as dt

import mlflow
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.errors import InputError
from recsys_spark.models import ranking
from recsys_spark.models.registry import load_bundle
from recsys_spark.train import runner

from tests.train.test_data import FIRST_TARGET, write_features

pytestmark = [pytest.mark.unit, pytest.mark.timeout(900)]

OLD_ITEMS, NEW_ITEMS = 32, 40  # the day after adds items 32..39; 2..31 keep their index
WINDOWS = 200  # per day; day 2's windows end 100 minutes later: 100 new, 100 the parent saw too
REPLAY = 40


def config(root, features, alias="challenger", checkpoints=None, **train):
    """The day's config; the parent registers as @champion, its children as @challenger (the gate
    of evaluate promotes, not training)."""
    values = {"launcher": "local", "epochs": 2, "batch_size": 32, "embedding_dim": 16, "num_layers": 1,
              "uniform_negatives": 16, "warmup_steps": 0, "lr_schedule": "constant", "lr": 0.01, "dropout": 0.0,
              "patience": 0, "threads_per_proc": 1, "replay_windows": REPLAY, **train}
    return load_config(None, [f"paths.root={root}", f"paths.features={features}",
                              f"paths.checkpoints={checkpoints or str(features) + '_checkpoints'}",
                              f"mlflow.alias={alias}", *[f"train.{k}={v}" for k, v in values.items()]])


@pytest.fixture(scope="module")
def parent(spark, tmp_path_factory):
    """A parent trained in full on the first day's 32 items, registered as @champion."""
    root = tmp_path_factory.mktemp("incremental")
    write_features(root / "day1", num_items=OLD_ITEMS, n_windows=WINDOWS)
    write_features(root / "day2", num_items=NEW_ITEMS, n_windows=WINDOWS, seed=1,
                   first_target=FIRST_TARGET + dt.timedelta(minutes=100))
    threads = torch.get_num_threads()
    summary = runner.run(spark, config(root, root / "day1", alias="champion"))
    torch.set_num_threads(threads)
    return root, summary


def test_a_frozen_incremental_run_starts_from_the_parents_rows_and_records_its_parent(spark, parent):
    root, first = parent
    # lr 0 freezes the weights: what is registered is exactly where the run started.
    cfg = config(root, root / "day2", mode="incremental", lr=0.0, epochs=1)
    summary = runner.run(spark, cfg)
    parent_bundle, _ = load_bundle(cfg, version=int(first["version"]))
    child_bundle, _ = load_bundle(cfg, version=int(summary["version"]))
    old, new = parent_bundle.state_dict, child_bundle.state_dict
    assert new["item_tower.id_embedding.weight"].shape[0] == NEW_ITEMS
    assert torch.equal(new["item_tower.id_embedding.weight"][:OLD_ITEMS], old["item_tower.id_embedding.weight"])
    assert torch.equal(new["encoder.layers.0.linear1.weight"], old["encoder.layers.0.linear1.weight"])
    # Item 33's category (33 % 4 = 1) has parent items 5, 9, ..., 29: its row starts at their mean.
    same = [i for i in range(2, OLD_ITEMS) if i % 4 == 1]
    torch.testing.assert_close(new["item_tower.id_embedding.weight"][33],
                               old["item_tower.id_embedding.weight"][same].mean(dim=0))
    mlflow.set_tracking_uri(cfg.tracking_uri)
    tags = MlflowClient().get_run(summary["run_id"]).data.tags
    assert tags["train.parent_version"] == first["version"] and tags["train.parent_run_id"] == first["run_id"]
    assert tags["train.mode"] == "incremental"
    # The registered version carries the same lineage.
    version_tags = MlflowClient().get_model_version("recsys_two_tower", summary["version"]).tags
    assert version_tags["train.parent_version"] == first["version"] and version_tags["train.mode"] == "incremental"
    assert version_tags["train.data_range"] == tags["train.data_range"] and "train.windows_end" in version_tags
    # It trained on day 2's 100 windows after the parent's last target and REPLAY older ones.
    assert tags["train.windows_end"] == (FIRST_TARGET + dt.timedelta(minutes=299)).isoformat()
    assert (tags["train.new_windows"], tags["train.replayed_windows"]) == ("100", str(REPLAY))
    selected = pq.read_table(root / "day2_checkpoints" / "incremental_windows").to_pandas()
    last_parent = FIRST_TARGET + dt.timedelta(minutes=WINDOWS - 1)
    assert len(selected) == 100 + REPLAY
    assert (selected[schema.TARGET_TIME] > last_parent).sum() == 100


def test_a_new_item_is_recommended_after_one_incremental_day(spark, parent):
    root, _ = parent
    cfg = config(root, root / "day2", mode="incremental", epochs=3)
    summary = runner.run(spark, cfg)
    model = load_bundle(cfg, version=int(summary["version"]))[0].build_module()
    # The data walks i -> i + 2: after 26, 28, 30 comes 32, an item the parent never saw.
    history = [torch.tensor([[0, 0, 0, 0, 0, 26, 28, 30]]), torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]]),
               torch.tensor([[0, 0, 0, 0, 0, 0, 3, 3]])]
    with torch.no_grad():
        top, _ = ranking.rank_histories(model, history, model.item_vectors(), 5,
                                        blocked=ranking.blocked_items(NEW_ITEMS))
    assert set(top[0]) & set(range(OLD_ITEMS, NEW_ITEMS)), top


def test_no_parent_or_another_shape_trains_from_scratch_and_a_foreign_vocabulary_stops(spark, parent, tmp_path, caplog):
    root, _ = parent
    summary = runner.run(spark, config(root, root / "day2", mode="incremental", parent_alias="nobody", epochs=1))
    assert "no parent model @nobody" in caplog.text
    mlflow.set_tracking_uri(config(root, root / "day2").tracking_uri)
    assert "train.parent_version" not in MlflowClient().get_run(summary["run_id"]).data.tags
    runner.run(spark, config(root, root / "day2", mode="incremental", embedding_dim=32, epochs=1))
    assert "cannot be grown (dim is 32 here, 16 in the parent model)" in caplog.text

    # Features whose vocabulary was rebuilt, not extended: products moved to other indices.
    foreign = tmp_path / "foreign"
    write_features(foreign, num_items=NEW_ITEMS)
    vocab = pq.read_table(foreign / "item_vocab" / "part-00000.parquet").to_pandas()
    vocab[schema.PRODUCT_ID] = vocab[schema.PRODUCT_ID].to_numpy()[::-1]
    (foreign / "item_vocab" / "part-00000.parquet").unlink()
    vocab.to_parquet(foreign / "item_vocab" / "part-00000.parquet", index=False)
    with pytest.raises(InputError, match="featurize.vocab_mode=extend and featurize.vocab_from"):
        runner.run(spark, config(root, foreign, mode="incremental", epochs=1))
    # More replay than there are older windows (100) replays them all, with a warning.
    clamped = config(root, root / "day2", mode="incremental", replay_windows=101, checkpoints=tmp_path / "clamped")
    last_parent = FIRST_TARGET + dt.timedelta(minutes=WINDOWS - 1)
    assert runner.select_windows(spark, clamped, last_parent.isoformat())["replayed"] == 100
    assert "train.replay_windows=101 exceeds the 100 windows of the history before" in caplog.text
    # A failed incremental run (the foreign vocabulary above) leaves the champion where it was.
    champion = MlflowClient().get_model_version_by_alias("recsys_two_tower", "champion")
    assert str(champion.version) == parent[1]["version"]


def test_vocab_from_an_alias_is_the_folder_that_models_features_came_from(spark, parent, caplog):
    import dataclasses

    from recsys_spark.features.featurize import resolve_vocab_from

    root, _ = parent
    cfg = config(root, root / "day3")

    def at(value):
        return dataclasses.replace(cfg, featurize=dataclasses.replace(cfg.featurize, vocab_from=value,
                                                                       vocab_mode="extend"))

    assert resolve_vocab_from(at("@champion")) == str(root / "day1")
    assert resolve_vocab_from(at(str(root / "elsewhere"))) == str(root / "elsewhere")
    # A first run: no model at the alias yet, so the vocabularies are built from the data.
    assert resolve_vocab_from(at("@nobody")) == ""
    assert "featurize.vocab_from=@nobody: 'recsys_two_tower' has no such alias yet" in caplog.text


@pytest.mark.distributed
def test_two_horovod_ranks_start_from_the_parent_and_resume_an_incremental_run_exactly(spark, parent):
    import json

    root, first = parent
    horovod = {"mode": "incremental", "launcher": "horovod_spark", "num_proc": 2, "device": "cpu"}
    # Frozen (lr 0): both ranks start from the grown parent (the ranks' checksums must agree),
    # and what is registered is the parent's rows.
    frozen = runner.run(spark, config(root, root / "day2", checkpoints=root / "hvd_frozen", lr=0.0, epochs=1,
                                      **horovod))
    cfg = config(root, root / "day2")
    parent_rows = load_bundle(cfg, version=int(first["version"]))[0].state_dict["item_tower.id_embedding.weight"]
    child_rows = load_bundle(cfg, version=int(frozen["version"]))[0].state_dict["item_tower.id_embedding.weight"]
    assert torch.equal(child_rows[:OLD_ITEMS], parent_rows)

    # Two passes at once, or one pass and a resume to two: the same weights on every rank.
    def checksums(summary):
        mlflow.set_tracking_uri(cfg.tracking_uri)
        return json.loads(MlflowClient().get_run(summary["run_id"]).data.tags["train.rank_checksums"])

    whole = runner.run(spark, config(root, root / "day2", checkpoints=root / "hvd_whole", epochs=2, **horovod))
    runner.run(spark, config(root, root / "day2", checkpoints=root / "hvd_resumed", epochs=1, **horovod))
    resumed = runner.run(spark, config(root, root / "day2", checkpoints=root / "hvd_resumed", epochs=2,
                                       resume="true", **horovod))
    assert len(set(checksums(whole))) == 1
    assert checksums(resumed) == checksums(whole)
    assert resumed["steps"] == whole["steps"]


def test_an_incremental_run_continues_the_parents_optimiser_moments(spark, parent):
    from recsys_spark.train.checkpoint import WARM_START, read_checkpoint

    root, first = parent
    cfg = config(root, root / "day2", checkpoints=root / "moments", mode="incremental", epochs=1)
    mlflow.set_tracking_uri(cfg.tracking_uri)

    def logged_moments(run_id):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=runner.MOMENTS_ARTIFACT)
        return torch.load(path, weights_only=True)

    parent_moments = logged_moments(first["run_id"])
    table = "item_tower.id_embedding.weight"
    assert parent_moments[table]["step"] == first["steps"]
    summary = runner.run(spark, cfg)
    warm = read_checkpoint(str(root / "moments"), WARM_START)["moments"]
    # The parent's rows keep their moments; a new item's rows start at zero.
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(warm[table][key][:OLD_ITEMS], parent_moments[table][key])
        assert not warm[table][key][OLD_ITEMS:].any()
    # AdamW went on counting from the parent's steps.
    assert logged_moments(summary["run_id"])[table]["step"] == first["steps"] + summary["steps"]
    assert MlflowClient().get_run(summary["run_id"]).data.tags["train.optimizer_start"] == "parent's moments"

    fresh = runner.run(spark, config(root, root / "day2", checkpoints=root / "fresh", mode="incremental", epochs=1,
                                     warm_optimizer="false"))
    assert MlflowClient().get_run(fresh["run_id"]).data.tags["train.optimizer_start"] == "fresh"
