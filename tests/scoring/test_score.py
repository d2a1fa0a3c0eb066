"""The score stage in Spark: its inputs, the written partitions, re-runs, errors, and scoring
with a model registered by a real (tiny) training run."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.config import from_dict
from recsys_spark.errors import ConfigError, DataQualityError, InputError
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY
from recsys_spark.scoring import inputs, policies, score

from tests.scoring.tiny import END, STATS, USERS, best, fallback_score, model_scores, tiny_bundle

pytestmark = pytest.mark.e2e

K = 3
DAY = "2019-11-01"


def write_clean(spark, path: str, rows: list[tuple]) -> None:
    df = spark.createDataFrame(rows, schema.CLEAN_SCHEMA)
    df.write.mode("overwrite").partitionBy(schema.EVENT_DATE).parquet(path)


def write_history(spark, features: str, users, vocab: pd.DataFrame) -> None:
    rows = [(u, h, [1 if i else 0 for i in h], [0] * len(h), sorted({i for i in h if i >= 2})) for u, h, *_ in users]
    io.write_table(spark.createDataFrame(rows, schema.USER_HISTORY_SCHEMA), io.feature_path(features, "user_history"))
    io.write_table(spark.createDataFrame(vocab, schema.ITEM_VOCAB_SCHEMA), io.feature_path(features, "item_vocab"))


def register(cfg, bundle, alias: str) -> str:
    """Log ``bundle`` as the pyfunc model, registered, and point ``alias`` at it. Returns: the version."""
    import mlflow
    from mlflow import MlflowClient

    from recsys_spark import tracking
    from recsys_spark.models.pyfunc import log_model

    with mlflow.start_run(experiment_id=tracking.setup(cfg)):
        info = log_model(bundle, cfg.mlflow.registered_model, k=2)
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(cfg.mlflow.registered_model, alias, version)
    return version


def read_recs(path: str) -> pd.DataFrame:
    recs = pq.read_table(path).to_pandas()
    return recs.assign(**{schema.RUN_DATE: recs[schema.RUN_DATE].astype(str)}).sort_values([schema.RUN_DATE, schema.USER_ID, schema.RANK])


def with_score(cfg, **changes):
    data = cfg.to_dict()
    return from_dict({**data, "score": {**data["score"], **changes}})


@pytest.fixture(scope="module")
def workspace(spark, tmp_path_factory):
    """Clean events, features and a registry holding tiny_bundle() as version 1 @champion."""
    from tests.scoring.tiny import event_rows

    root = tmp_path_factory.mktemp("score") / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = from_dict({"paths": {"root": str(root)},
                         "score": {"top_k": K, "block_size": 2, "run_date": DAY, "explore_share": 0.0}})
        bundle = tiny_bundle()
        write_clean(spark, cfg.paths.resolve("clean"), event_rows())
        write_history(spark, cfg.paths.resolve("features"), USERS, bundle.item_vocab)
        register(cfg, bundle, "champion")
        yield cfg, bundle


def test_user_context_and_product_stats_match_the_hand_counts(spark, workspace):
    cfg, _ = workspace
    events = io.read_clean(spark, cfg.paths.resolve("clean"))
    context = {r[schema.USER_ID]: r for r in inputs.user_context(events, ["purchase"]).collect()}
    assert {u: (context[u][EXCLUDE_PRODUCTS], context[u][USER_CATEGORY]) for u, _, _ in USERS} == {
        "known": ([1004], 77), "cold_cat": ([], 99), "cold_none": ([], None), "cold_buyer": ([2000], 88),
    }
    assert inputs.user_context(events, []).where(f"size({EXCLUDE_PRODUCTS}) > 0").count() == 0
    viewed = {r[schema.USER_ID]: r[EXCLUDE_PRODUCTS] for r in inputs.user_context(events, ["view", "purchase"]).collect()}
    assert viewed["known"] == [1002, 1003, 1004]

    import datetime as dt

    stats = inputs.product_stats(events, END - dt.timedelta(days=7)).toPandas().set_index(schema.PRODUCT_ID)
    assert {p: (r[inputs.RECENT_USERS], r[inputs.ALL_USERS]) for p, r in stats.iterrows()} == STATS
    assert stats.loc[3001, schema.CATEGORY_ID] is pd.NA or pd.isna(stats.loc[3001, schema.CATEGORY_ID])
    assert stats.loc[2000, schema.CATEGORY_ID] == 88


def test_score_writes_the_documented_lists_and_rerunning_a_date_replaces_only_it(spark, workspace, tmp_path):
    cfg, bundle = workspace
    summary = score.run(spark, cfg)
    out = cfg.paths.resolve("recommendations")
    assert summary["recommendations_path"] == out
    assert (summary["run_date"], summary["model_version"], summary["model"]) == (DAY, "1", "models:/recsys_two_tower/1")
    assert {k: summary[k] for k in ("users", "users_recommended", "users_model", "users_fallback", "rows",
                                    "rows_explore", "users_short_of_k")} == {
        "users": 4, "users_recommended": 4, "users_model": 1, "users_fallback": 3, "rows": 12, "rows_explore": 0,
        "users_short_of_k": 0}
    assert (summary["rows_propensity_below_1"], summary["min_propensity"]) == (0, 1.0)
    assert (summary["policy"], summary["policy_version"]) == ("epsilon", policies.policy_version(cfg.score, "1"))

    written = spark.read.parquet(out)
    assert [(f.name, f.dataType) for f in written.schema] == [(f.name, f.dataType) for f in schema.RECOMMENDATION_SCHEMA]
    recs = read_recs(out)
    lists = recs.groupby(schema.USER_ID)[schema.ITEM_ID].agg(list).to_dict()
    assert lists == {
        "known": best(model_scores(bundle, USERS[0][1]), exclude=[1004], k=K),
        "cold_cat": [1007, 1008, 3000],
        "cold_none": [2000, 1004, 1005],
        "cold_buyer": [1005, 1006, 1004],
    }
    assert recs.groupby(schema.USER_ID)[schema.RANK].agg(list).to_dict() == {u: [1, 2, 3] for u, _, _ in USERS}
    assert recs.groupby(schema.USER_ID)[schema.SOURCE].agg(set).to_dict() == {
        "known": {"model"}, "cold_cat": {"fallback"}, "cold_none": {"fallback"}, "cold_buyer": {"fallback"}}
    assert recs[recs[schema.USER_ID] == "cold_cat"][schema.SCORE].tolist() == pytest.approx(
        [fallback_score(1007), fallback_score(1008), fallback_score(3000)])
    assert set(recs[schema.MODEL_NAME]) == {"recsys_two_tower"} and set(recs[schema.MODEL_VERSION]) == {"1"}
    assert set(recs[schema.RUN_DATE]) == {DAY}
    # No exploration (explore_share 0): every placement is certain.
    assert (recs[schema.SLOT] == recs[schema.RANK] - 1).all() and (recs[schema.PROPENSITY] == 1.0).all()
    assert set(recs[schema.POLICY]) == {"epsilon"} and set(recs[schema.POLICY_VERSION]) == {summary["policy_version"]}

    # Another date, with an exclusion list (out of stock) and exploration: DAY stays as it was.
    stock = tmp_path / "out_of_stock.csv"
    stock.write_text("product_id,reason\n1005,sold out\n2000,recalled\n")
    other = with_score(cfg, run_date="2019-11-02", exclude_items_path=str(stock), explore_share=0.5)
    second = score.run(spark, other)
    assert second["excluded_items"] == 2 and second["users_short_of_k"] == 0
    both = read_recs(out)
    day2 = both[both[schema.RUN_DATE] == "2019-11-02"]
    assert not set(day2[schema.ITEM_ID]) & {1005, 2000}
    assert len(day2) == 12 and set(day2[schema.SOURCE]) <= {"model", "fallback", "explore"}
    assert second["rows_explore"] == (day2[schema.SOURCE] == "explore").sum()
    # The known user's list is random now; the cold-start users' lists are not.
    assert (day2[day2[schema.SOURCE] == "fallback"][schema.PROPENSITY] == 1.0).all()
    known = day2[day2[schema.USER_ID] == "known"][schema.PROPENSITY]
    assert ((known > 0) & (known <= 1)).all() and (known < 1).any()
    assert second["rows_propensity_below_1"] == (day2[schema.PROPENSITY] < 1).sum()
    assert second["min_propensity"] == pytest.approx(day2[schema.PROPENSITY].min())
    assert set(day2[schema.POLICY_VERSION]) == {second["policy_version"]} != {summary["policy_version"]}
    pd.testing.assert_frame_equal(both[both[schema.RUN_DATE] == DAY].reset_index(drop=True), recs.reset_index(drop=True))

    # DAY again, by version number: replaced (not appended to); 2019-11-02 untouched.
    assert score.run(spark, with_score(cfg, model_version=1))["rows"] == 12
    assert read_recs(out)[schema.RUN_DATE].value_counts().to_dict() == {DAY: 12, "2019-11-02": 12}


@pytest.mark.timeout(600)
def test_thompson_reads_the_feedback_counts_and_logs_its_propensities(spark, workspace, tmp_path):
    cfg, _ = workspace
    counts = str(tmp_path / "counts.parquet")
    spark.createDataFrame([(1009, 1000, 300), (1002, 600, 1), (1002, 400, 4)],
                          "product_id long, exposures long, clicks long").write.parquet(counts)
    assert score.read_feedback_counts(spark, counts).sort_values(schema.PRODUCT_ID).values.tolist() == [
        [1002, 1000, 5], [1009, 1000, 300]]  # rows of a product summed
    day = "2019-11-03"
    summary = score.run(spark, with_score(cfg, run_date=day, explore_policy="thompson", explore_share=1.0,
                                          feedback_counts_path=counts))
    recs = read_recs(cfg.paths.resolve("recommendations"))
    recs = recs[recs[schema.RUN_DATE] == day]
    known = recs[recs[schema.USER_ID] == "known"]
    # Every slot explores: the known user's list is 3 items of the pool (the least recently met
    # half of the model's catalogue: 1002, 1006, 1008, 1009), each with its propensity.
    assert set(known[schema.SOURCE]) == {"explore"} and set(known[schema.ITEM_ID]) <= {1002, 1006, 1008, 1009}
    assert len(known) == K and ((known[schema.PROPENSITY] > 0) & (known[schema.PROPENSITY] <= 1)).all()
    assert (recs[recs[schema.SOURCE] == "fallback"][schema.PROPENSITY] == 1.0).all()
    assert set(recs[schema.POLICY]) == {"thompson"} and summary["policy"] == "thompson"


@pytest.mark.timeout(600)
def test_bad_feedback_counts_fail_by_name(spark, tmp_path):
    missing = str(tmp_path / "missing.parquet")
    spark.createDataFrame([(1009, 10)], "product_id long, exposures long").write.parquet(missing)
    with pytest.raises(InputError, match=r"has no clicks column \(config key score.feedback_counts_path\)"):
        score.read_feedback_counts(spark, missing)
    too_many = str(tmp_path / "too_many.parquet")
    spark.createDataFrame([(1009, 10, 3), (1002, 10, 11)], "product_id long, exposures long, clicks long") \
        .write.parquet(too_many)
    with pytest.raises(DataQualityError, match=r"1 row\(s\) .* more clicks than exposures, e.g. \{'product_id': 1002"):
        score.read_feedback_counts(spark, too_many)
    fractions = str(tmp_path / "fractions.parquet")
    spark.createDataFrame([(1009, 10.0, 2.5)], "product_id long, exposures double, clicks double").write.parquet(fractions)
    with pytest.raises(DataQualityError, match="non-integer"):
        score.read_feedback_counts(spark, fractions)
    with pytest.raises(InputError, match="score.feedback_counts_path"):
        score.read_feedback_counts(spark, str(tmp_path / "nowhere.parquet"))


def test_a_missing_alias_says_what_to_do(spark, workspace):
    cfg, _ = workspace
    with pytest.raises(InputError, match=r"no alias 'challenger' \(@champion = version 1\): run `recsys evaluate`"):
        score.run(spark, with_score(cfg, model_alias="challenger"))
    with pytest.raises(InputError, match="version 7"):
        score.run(spark, with_score(cfg, model_version=7))


def test_bad_settings_and_exclusion_files_fail_by_name(spark, workspace, tmp_path):
    cfg, _ = workspace
    with pytest.raises(ConfigError, match="score.explore_share"):
        score.run(spark, with_score(cfg, explore_share=1.5))
    with pytest.raises(ConfigError, match="score.exclude_event_types"):
        score.run(spark, with_score(cfg, exclude_event_types=["bought"]))
    with pytest.raises(ConfigError, match="score.run_date"):
        score.run(spark, with_score(cfg, run_date="01/11/2019"))
    wrong = tmp_path / "stock.csv"
    wrong.write_text("sku\n1005\n")
    with pytest.raises(InputError, match=f"{wrong} has no product_id column"):
        score.run(spark, with_score(cfg, exclude_items_path=str(wrong)))
    with pytest.raises(InputError, match="score.exclude_items_path"):
        score.run(spark, with_score(cfg, exclude_items_path=str(tmp_path / "missing.parquet")))


@pytest.mark.distributed
def test_scoring_a_model_registered_by_a_training_run(spark, tmp_path):
    """Train the tiny walk model of tests/train (item i is followed by i + 2), then score with it."""
    import datetime as dt

    import mlflow
    from mlflow import MlflowClient

    from recsys_spark.config import load_config
    from recsys_spark.train import runner

    from tests.train.test_data import write_features

    write_features(tmp_path / "features")
    cfg = load_config(None, [
        f"paths.root={tmp_path}", "train.launcher=local", "train.epochs=3", "train.batch_size=32",
        "train.embedding_dim=16", "train.num_layers=1", "train.uniform_negatives=16", "train.warmup_steps=3",
        "train.lr=0.01", "train.dropout=0.0", f"score.top_k={K}", f"score.run_date={DAY}",
    ])
    trained = runner.run(spark, cfg)
    # The evaluate stage's gate would promote this first challenger; do it by hand here.
    mlflow.set_tracking_uri(cfg.tracking_uri)
    MlflowClient().set_registered_model_alias(cfg.mlflow.registered_model, "champion", trained["version"])

    vocab = pq.read_table(tmp_path / "features" / "item_vocab").to_pandas()
    users = [(f"w{s}", [0, 0, 0, 0, s, s + 2, s + 4, s + 6]) for s in (2, 8, 14)] + [("new", [0] * 7 + [1])]
    write_history(spark, str(tmp_path / "features"), users, vocab)
    at = dt.datetime(2019, 10, 30, tzinfo=dt.timezone.utc)
    events = [(at, "purchase" if u == "w2" else "view", 1000 + i, 5, None, None, 1.0, u, u, at.date())
              for u, hist in users for i in hist if i >= 2]
    events.append((at, "view", 4242, 5, None, None, 1.0, "new", "new", at.date()))
    write_clean(spark, cfg.paths.resolve("clean"), events)

    summary = score.run(spark, cfg)
    assert summary["model_version"] == trained["version"]
    assert (summary["users_model"], summary["users_fallback"], summary["rows"]) == (3, 1, 4 * K)
    recs = pq.read_table(summary["recommendations_path"]).to_pandas()
    lists = recs.sort_values(schema.RANK).groupby(schema.USER_ID)[schema.ITEM_ID].agg(list).to_dict()
    assert not set(lists["w2"]) & {1002, 1004, 1006, 1008}  # w2 bought its whole history
    assert set(recs[recs[schema.USER_ID] == "new"][schema.SOURCE]) == {"fallback"}
    assert all(len(items) == K for items in lists.values())
    assert set(recs[recs[schema.USER_ID] != "new"][schema.ITEM_ID]) <= set(vocab[schema.PRODUCT_ID])
