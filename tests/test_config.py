"""The typed, layered config: defaults, profiles, overrides and their errors."""

from __future__ import annotations

import pytest

from recsys_spark.config import Config, PathsConfig, TrainConfig, load_config
from recsys_spark.errors import ConfigError

from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_base_yaml_lists_exactly_the_builtin_defaults():
    assert load_config(REPO / "conf" / "base.yaml") == Config()


@pytest.mark.parametrize("profile", ["local.yaml", "cluster.example.yaml"])
def test_profiles_load(profile):
    cfg = load_config(REPO / "conf" / profile)
    assert isinstance(cfg, Config)


def test_local_profile_overlays_base():
    cfg = load_config(REPO / "conf" / "local.yaml")
    assert cfg.clean.allow_dev_key is True
    assert cfg.spark.shuffle_partitions == 4
    assert cfg.train.epochs == Config().train.epochs  # untouched keys keep the base value


def test_cluster_example_sets_cluster_keys():
    cfg = load_config(REPO / "conf" / "cluster.example.yaml")
    assert cfg.spark.master == "yarn"
    assert cfg.paths.resolve("features") == "s3a://my-bucket/recsys/features"
    assert cfg.paths.resolve("raw") == "s3a://my-bucket/clickstream/raw"
    assert cfg.spark.conf["spark.executor.instances"] == "8"


def test_overrides_are_typed_and_win_over_the_profile():
    cfg = load_config(
        REPO / "conf" / "local.yaml",
        ["train.epochs=3", "train.lr=1e-3", "spark.master=local[4]", "evaluate.ks=[5, 50]",
         "clean.allow_dev_key=false", "train.event_weights={view: 1, purchase: 5}", "train.dropout=0"],
    )
    assert cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(0.001)
    assert cfg.spark.master == "local[4]"
    assert cfg.evaluate.ks == [5, 50]
    assert cfg.clean.allow_dev_key is False
    assert cfg.train.event_weights == {"view": 1.0, "purchase": 5.0}
    assert isinstance(cfg.train.dropout, float)


def test_string_keys_take_yaml_dates_and_numbers_as_text():
    cfg = load_config(None, ["generate.start_date=2020-01-31", "spark.app_name=123"])
    assert cfg.generate.start_date == "2020-01-31"
    assert cfg.spark.app_name == "123"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("trian.epochs=3", "unknown config key 'trian' (did you mean 'train'?)"),
        ("train.epochs=three", "train.epochs: expected an integer, got str 'three'"),
        ("train.epochs=2.5", "train.epochs: expected an integer, got float 2.5"),
        ("train.lr=fast", "train.lr: expected a number, got str 'fast'"),
        ("clean.allow_dev_key=maybe", "clean.allow_dev_key: expected true or false, got str 'maybe'"),
        ("train.launcher=mpi", "train.launcher: 'mpi' is not one of 'horovod_spark', 'torch_distributor', 'local'"),
        ("evaluate.ks=10", "evaluate.ks: expected a list, got int 10"),
        ("evaluate.ks=[10, x]", "evaluate.ks[1]: expected an integer, got str 'x'"),
        ("epochs", "override 'epochs' is not of the form section.key=value"),
        ("train=3", "override key 'train' must be section.key (e.g. train.epochs)"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_unknown_key_in_a_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 64\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.batchsize' \(did you mean 'train.batch_size'\?\)"):
        load_config(path)


def test_wrong_type_in_a_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("spark:\n  shuffle_partitions: many\n")
    with pytest.raises(ConfigError, match="spark.shuffle_partitions: expected an integer"):
        load_config(path)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    cyc = tmp_path / "a.yaml"
    cyc.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself in a cycle"):
        load_config(cyc)


def test_extends_chain_later_file_wins(tmp_path):
    (tmp_path / "one.yaml").write_text("train:\n  epochs: 5\n  lr: 0.5\n")
    (tmp_path / "two.yaml").write_text("extends: one.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(tmp_path / "two.yaml")
    assert (cfg.train.epochs, cfg.train.lr) == (9, 0.5)


def test_paths_resolve_relative_absolute_and_uris(tmp_path):
    local = PathsConfig(root=str(tmp_path))
    assert local.resolve("clean") == str(tmp_path / "clean")
    assert PathsConfig(root="hdfs:///data/rs").resolve("clean") == "hdfs:///data/rs/clean"
    assert PathsConfig(root="work", raw="/mnt/raw").resolve("raw") == "/mnt/raw"
    assert PathsConfig(root="work", raw="gs://b/raw").resolve("raw") == "gs://b/raw"


def test_default_tracking_store_lives_under_root(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}"])
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert cfg.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()
    remote = load_config(None, ["mlflow.tracking_uri=http://127.0.0.1:5000"])
    assert remote.tracking_uri == "http://127.0.0.1:5000" and remote.artifact_location is None


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().train.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize("overrides,message", [
    ({"num_layers": 0}, "train.num_layers must be >= 1, got 0"),
    ({"lr": -0.1}, "train.lr must be >= 0"),
    ({"dropout": 1.0}, "train.dropout must lie in"),
    ({"min_lr_ratio": 1.5}, "train.min_lr_ratio must lie in \\[0, 1\\], got 1.5"),
    ({"visit_gap_s": -1}, "train.visit_gap_s must be >= 0"),
    ({"embedding_dim": 30, "num_heads": 4}, "train.embedding_dim \\(30\\) must be a multiple of train.num_heads"),
])
def test_train_values_out_of_range_fail_fast_naming_the_key(overrides, message):
    TrainConfig()  # the defaults are in range
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides)
    with pytest.raises(ConfigError, match=message):  # the same through a command-line override
        load_config(None, [f"train.{key}={value}" for key, value in overrides.items()])
