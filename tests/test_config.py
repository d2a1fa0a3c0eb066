"""The typed, layered config: defaults, profiles, overrides and their errors."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from recsys_spark.config import Config, PathsConfig, TrainConfig, load_config, parse_space
from recsys_spark.errors import ConfigError, InputError, relax_hint
from recsys_spark.features.split import compute_cutoffs

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
        ["train.epochs=3", "train.lr=1e-3", "spark.master=local[4]", "evaluate.ks=[5, 50]", "evaluate.primary_metric=ndcg@50",
         "clean.allow_dev_key=false", "train.event_weights={view: 1, purchase: 5}", "train.dropout=0"],
    )
    assert cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(0.001)
    assert cfg.spark.master == "local[4]"
    assert cfg.evaluate.ks == [5, 50]
    assert cfg.clean.allow_dev_key is False
    assert cfg.train.event_weights == {"view": 1.0, "purchase": 5.0}
    assert isinstance(cfg.train.dropout, float)


def test_nested_override_sets_one_entry_of_a_default_mapping():
    cfg = load_config(None, ["featurize.dq_max_null_rate.brand=1.0", "train.event_weights.view=0.5",
                             "clean.event_aliases.click=view"])
    assert cfg.featurize.dq_max_null_rate == {"category_id": 0.5, "brand": 1.0, "price": 0.5}
    assert cfg.train.event_weights == {"view": 0.5, "cart": 1.0, "remove_from_cart": 1.0, "purchase": 1.0}
    assert cfg.clean.event_aliases == {"addtocart": "cart", "transaction": "purchase", "click": "view"}


def test_nested_override_keeps_the_entries_a_profile_set(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("featurize:\n  dq_max_null_rate:\n    brand: 0.95\n    price: 0.4\n")
    # A profile's mapping replaces the default one; an entry override changes that mapping only.
    cfg = load_config(path, ["featurize.dq_max_null_rate.brand=1", "featurize.dq_max_null_rate.user_id=0"])
    assert cfg.featurize.dq_max_null_rate == {"brand": 1.0, "price": 0.4, "user_id": 0.0}
    # ... and so does it after a whole-mapping override earlier on the command line.
    cfg = load_config(path, ["featurize.dq_max_null_rate={price: 0.2}", "featurize.dq_max_null_rate.brand=1"])
    assert cfg.featurize.dq_max_null_rate == {"price": 0.2, "brand": 1.0}


def test_nested_override_of_a_spark_conf_key_with_dots():
    cfg = load_config(REPO / "conf" / "cluster.example.yaml",
                      ["spark.conf.spark.executor.memory=24g", "spark.conf.spark.kryoserializer.buffer.max=512m"])
    profile = load_config(REPO / "conf" / "cluster.example.yaml").spark.conf
    assert cfg.spark.conf == {**profile, "spark.executor.memory": "24g", "spark.kryoserializer.buffer.max": "512m"}
    assert profile["spark.executor.memory"] != "24g"  # the override changed something


def test_a_wrong_profile_value_is_not_hidden_by_a_nested_override(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  event_weights: 3\n")
    with pytest.raises(ConfigError, match="^train.event_weights: expected a mapping, got int 3$"):
        load_config(path, ["train.event_weights.view=1"])


def overrides_in(message: str) -> list[str]:
    """The overrides of a message's ``(to accept it: ...)`` hint (errors.relax_hint)."""
    found = re.search(r" \(to accept it: ([^()]+)\)$", message)
    assert found, f"no hint at the end of {message!r}"
    return found.group(1).split(" ")


@pytest.mark.parametrize("value", [1.0, 0.34, 6.2, 1e-05, 3, "view", True])
def test_relax_hint_reads_back_as_its_value(value):
    key = {float: "featurize.dq_max_popularity_psi", int: "train.epochs", str: "clean.event_aliases.click",
           bool: "clean.allow_dev_key"}[type(value)]
    [override] = overrides_in(f"a check failed {relax_hint(key, value)}")
    cfg = load_config(None, [override])
    section, name, *entry = key.split(".")
    got = getattr(getattr(cfg, section), name)
    assert (got[entry[0]] if entry else got) == value


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("data_start, validation_days, test_days, hint", [
    # Test from 01-05, so at most 1 validation day after 01-03 08:00.
    ("2024-01-03 08:00:00", 2, 2, ["featurize.validation_days=1"]),
    ("2024-01-01 08:00:00", 6, 2, ["featurize.validation_days=3"]),
    # No validation day fits before 01-05: test from 01-06 leaves one.
    ("2024-01-04 08:00:00", 2, 2, ["featurize.validation_days=1", "featurize.test_days=1"]),
    ("2024-01-04 08:00:00", 1, 2, ["featurize.test_days=1"]),
])
def test_a_split_without_training_days_names_days_that_fit(data_start, validation_days, test_days, hint):
    start, end = _t(data_start), _t("2024-01-06 15:30:00")
    with pytest.raises(InputError) as err:
        compute_cutoffs(start, end, validation_days, test_days)
    assert overrides_in(str(err.value)) == hint
    fc = load_config(None, [f"featurize.validation_days={validation_days}", f"featurize.test_days={test_days}",
                            *hint]).featurize
    assert compute_cutoffs(start, end, fc.validation_days, fc.test_days).validation > start


def test_a_split_on_too_few_days_names_no_override():
    with pytest.raises(InputError) as err:
        compute_cutoffs(_t("2024-01-05 08:00:00"), _t("2024-01-06 15:30:00"), 1, 1)
    assert "to accept it" not in str(err.value)


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
        ("score.ranker=ease", "score.ranker: 'ease' is not one of 'auto', 'model'"),
        ("evaluate.ks=10", "evaluate.ks: expected a list, got int 10"),
        ("evaluate.ks=[10, x]", "evaluate.ks[1]: expected an integer, got str 'x'"),
        ("epochs", "override 'epochs' is not of the form section.key=value"),
        ("train=3", "override key 'train' must be section.key (e.g. train.epochs)"),
        ("train.epochs.=3", "override key 'train.epochs.' must be section.key (e.g. train.epochs)"),
        ("train.epochs.x=1", "override key 'train.epochs.x': train.epochs is not a mapping, so it has no entries "
                             "(set it as train.epochs=value)"),
        ("evaluate.ks.0=5", "override key 'evaluate.ks.0': evaluate.ks is not a mapping, so it has no entries "
                            "(set it as evaluate.ks=value)"),
        ("featurize.dq_max_nul_rate.brand=1", "unknown config key 'featurize.dq_max_nul_rate' "
                                              "(did you mean 'featurize.dq_max_null_rate'?)"),
        ("featuriz.dq_max_null_rate.brand=1", "unknown config key 'featuriz' (did you mean 'featurize'?)"),
        ("featurize.dq_max_null_rate.brand=abc", "featurize.dq_max_null_rate.brand: expected a number, got str 'abc'"),
        ("train.event_weights.view=[1]", "train.event_weights.view: expected a number, got list [1]"),
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
    ({"grad_clip": -1.0}, "train.grad_clip must be >= 0 \\(0 = no clipping\\), got -1.0"),
    ({"target_horizon": 0}, "train.target_horizon must be >= 1, got 0"),
    ({"cooldown_share": 0.0}, "train.cooldown_share must lie in \\(0, 1\\]"),
    ({"batch_size": 65, "num_proc": 2}, "train.batch_size \\(65\\) is the batch over all ranks: it must be a multiple"),
])
def test_train_values_out_of_range_fail_fast_naming_the_key(overrides, message):
    TrainConfig()  # the defaults are in range
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**overrides)
    with pytest.raises(ConfigError, match=message):  # the same through a command-line override
        load_config(None, [f"train.{key}={value}" for key, value in overrides.items()])


def test_grad_clip_zero_means_off():
    assert TrainConfig(grad_clip=0.0).grad_clip == 0.0
    assert load_config(None, ["train.grad_clip=0"]).train.grad_clip == 0.0


def test_search_is_off_by_default_and_its_space_is_parsed_to_typed_values():
    assert Config().search.trials == 0
    cfg = load_config(None, ["search.trials=4", "search.space.lr=[1e-4, 1e-2, log]", "search.space.num_layers=[1, 3]",
                             "search.space.user_vector=[mean, mixture]"])
    assert cfg.search.space == {"lr": [0.0001, 0.01, "log"], "dropout": [0.0, 0.4], "embedding_dim": [32, 64, 128],
                                "max_steps": [1500, 6000], "num_layers": [1, 3], "user_vector": ["mean", "mixture"]}
    assert [(d.key, d.kind, d.log) for d in parse_space(cfg.search.space)] == [
        ("lr", "float", True), ("dropout", "float", False), ("embedding_dim", "choice", False),
        ("max_steps", "int", False), ("num_layers", "int", False), ("user_vector", "choice", False)]


@pytest.mark.parametrize("overrides, message", [
    (["search.trials=-1"], "search.trials must be >= 0, got -1"),
    (["search.timeout_minutes=0"], "search.timeout_minutes must be > 0 (every wait has a bound), got 0.0"),
    (["search.space.lrr=[0.1, 0.2]"], "search.space.lrr: the train section has no key 'lrr' (did you mean "
                                      "'search.space.lr'?)"),
    (["search.space.eval_k=[10, 20]"], "search.space.eval_k: train.eval_k cannot be searched: it sets the objective "
                                       "(validation NDCG@train.eval_k), which must compare across trials"),
    (["search.space.lr=0.1"], "search.space.lr: expected a list, got float 0.1"),
    (["search.space.lr=[]"], "search.space.lr: expected a list ([low, high], [low, high, log] or the choices), got "
                             "list []"),
    (["search.space.dropout=[0.1, 0.2, 0.3]"], "search.space.dropout: train.dropout is a real number: give a range "
                                                "[low, high] or [low, high, log], got [0.1, 0.2, 0.3]"),
    (["search.space.dropout=[0.3, 0.1]"], "search.space.dropout: the range's low (0.3) must be below its high (0.1)"),
    (["search.space.lr=[0, 0.1, log]"], "search.space.lr: a log range needs low > 0, got 0.0"),
    (["search.space.lr=[0.001, fast]"], "search.space.lr[1]: expected a number, got str 'fast'"),
    (["search.space.num_layers=[1, 2.5]"], "search.space.num_layers[1]: expected an integer, got float 2.5"),
    (["search.space.num_layers=[2]"], "search.space.num_layers: give at least two different choices (or a range "
                                      "[low, high] of a number), got [2]"),
    (["search.space.launcher=[local, mpi]"], "search.space.launcher[1]: 'mpi' is not one of 'horovod_spark', "
                                             "'torch_distributor', 'local'"),
    (["search.space.event_weights=[1, 2]"], "search.space.event_weights: train.event_weights is a mapping; only "
                                            "numbers, true/false and text keys can be searched"),
    # Checked against the train section only when the search is on.
    (["search.trials=2", "search.space.dropout=[0.1, 1.0]"], "search.space.dropout: 1.0 is refused: train.dropout "
                                                              "must lie in [0, 1), got 1.0"),
    (["search.trials=2", "search.space.embedding_dim=[32, 33, 64]"], "search.space.embedding_dim: 33 is refused: "
     "train.embedding_dim (33) must be a multiple of train.num_heads (2)"),
    (["search.trials=2", "search.space={}"], "search.space names no train key to search (search.trials=2)"),
    (["search.trials=2", "train.resume=true"], "search.trials=2 with train.resume=true: the trials and the final "
                                               "training start from scratch (set train.resume=false)"),
    (["search.trials=2", "search.timeout_minutes=720"], "search.timeout_minutes (720) must be below "
     "spark.stage_timeout_minutes (720): the final training runs in the same stage, after the search"),
])
def test_a_bad_search_setting_fails_fast_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value) == message


def test_an_unused_search_space_is_not_checked_against_the_train_section():
    cfg = load_config(None, ["search.space.embedding_dim=[32, 33, 64]"])  # search.trials=0: off
    assert cfg.search.space["embedding_dim"] == [32, 33, 64]


def test_extending_vocabularies_needs_the_folder_to_extend():
    assert load_config(None, ["featurize.vocab_from=/data/features", "featurize.vocab_mode=extend"]).featurize.vocab_mode == "extend"
    with pytest.raises(ConfigError, match="featurize.vocab_mode=extend needs featurize.vocab_from"):
        load_config(None, ["featurize.vocab_mode=extend"])
    with pytest.raises(ConfigError, match="featurize.vocab_mode"):
        load_config(None, ["featurize.vocab_mode=grow"])


@pytest.mark.parametrize("override, message", [
    ("serve.keep_versions=1", "serve.keep_versions must be >= 2, got 1"),
    ("serve.publish_batch=0", "serve.publish_batch must be >= 1, got 0"),
    ("serve.socket_timeout_s=0", "serve.socket_timeout_s must be > 0 (every wait has a bound), got 0.0"),
    ("serve.publish_timeout_s=-1", "serve.publish_timeout_s must be > 0 (every wait has a bound), got -1.0"),
    ("serve.redis_url=http://localhost:6379", "serve.redis_url: 'http://localhost:6379' is not a redis://host:port/db URL"),
    ("serve.redis_url=redis://:hunter2@localhost:6379/0",
     "serve.redis_url holds credentials: put the password in the environment variable RECSYS_REDIS_PASSWORD instead"),
    ("serve.redis_prefix=shop*", "serve.redis_prefix: 'shop*' must be non-empty letters, digits, _ . : -"),
    ("publish.run_date=yesterday", "publish.run_date: 'yesterday' is not an ISO date (YYYY-MM-DD)"),
])
def test_serve_and_publish_values_fail_fast_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_a_rollback_publishes_no_date():
    assert load_config(None, ["publish.rollback=true", "serve.redis_prefix=shop:recsys"]).publish.rollback
    with pytest.raises(ConfigError, match=r"^publish.rollback=true switches back to the previous version: it publishes "
                                          r"no run date \(drop publish.run_date=2019-10-12\)$"):
        load_config(None, ["publish.rollback=true", "publish.run_date=2019-10-12"])
