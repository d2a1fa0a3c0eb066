"""The evaluate stage on a tiny feature set and a registered (randomly initialised) model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.models import ranking
from recsys_spark.config import EvaluateConfig, from_dict, load_config
from recsys_spark.errors import ConfigError, InputError
from recsys_spark.evaluation import evaluate
from recsys_spark.evaluation import intervals
from recsys_spark.metrics import metric_names

from tests.evaluation.kit import G2, KS, POPULARITY, TEST_USERS, eval_rows
from tests.evaluation.test_metrics import pandas_reference
from tests.evaluation.test_rankers import MAX_SEQ_LEN, NUM_ITEMS, tiny_bundle
from tests.models.test_ranking import brute_force

# ndcg@2 of popularity per user u1..u4 (the bootstrap resamples these).
POPULARITY_NDCG2 = [1.0, 0.0, 1.0, G2]
# ndcg@2 of popularity per segment (cold: fewer than 2 seen items, i.e. u1, u2, u3).
POPULARITY_SEGMENTS = {
    "cold_users": (1 + 0 + 1) / 3,
    "warm_users": G2,
    "head_targets": 1.0,  # u3 with target 2 only, at rank 1
    "tail_targets": (1 + 0 + G2 / 1 + G2) / 4,  # u3 with target 4 only, at rank 2
    "view_targets": (1 + 0 + 1) / 3,  # u1 [3], u2 [4, 7], u3 [2]
    "cart_targets": G2,  # u4 [6]
    "purchase_targets": G2,  # u3 [4]
}
# AUC of popularity per segment: with only some targets kept, the others are non-targets like any item.
POPULARITY_AUC_SEGMENTS = {
    "cold_users": (1 + 1 / 4 + 1) / 3,
    "head_targets": 1.0,  # u3 [2]: above 4, 5, 6, 7
    "tail_targets": (1 + 1 / 4 + 3 / 4 + 1 / 2) / 4,  # u3 [4]: below 2, above 5, 6, 7
    "purchase_targets": 3 / 4,  # u3 [4]
}
# Validation rows (the baselines' tuning) and training windows (L + 1 = 5).
VALIDATION_USERS = [
    ("v1", [0, 0, 2, 3], [2, 3], [4], [1]),
    ("v2", [0, 0, 0, 5], [5], [3, 6], [1, 4]),
    ("v3", [0, 0, 4, 2], [2, 4], [3], [2]),
]
TRAIN_WINDOWS = [[0, 2, 3, 4, 2], [0, 0, 3, 5, 1], [2, 3, 4, 5, 6], [0, 0, 0, 6, 7]]


def write_features(spark, root: str, bundle, validation=VALIDATION_USERS, train_windows=TRAIN_WINDOWS) -> None:
    io.write_json(spark, io.feature_path(root, schema.FEATURE_METADATA),
                  {"num_items": NUM_ITEMS, "max_seq_len": MAX_SEQ_LEN, "counts": {}})
    vocab = [tuple(int(v) for v in row) for row in bundle.item_vocab[schema.ITEM_VOCAB_SCHEMA.fieldNames()].to_numpy()]
    io.write_table(spark.createDataFrame(vocab, schema.ITEM_VOCAB_SCHEMA), io.feature_path(root, "item_vocab"))
    io.write_table(spark.createDataFrame(eval_rows(), schema.EVAL_SCHEMA), io.feature_path(root, "test"))
    io.write_table(spark.createDataFrame(eval_rows(validation), schema.EVAL_SCHEMA),
                   io.feature_path(root, "validation"))
    train = [(w, [1 if i else 0 for i in w], [0] * len(w)) for w in train_windows]
    io.write_table(spark.createDataFrame(train, schema.TRAIN_SCHEMA), io.feature_path(root, "train"))
    history = [row[:5] for row in eval_rows()]
    io.write_table(spark.createDataFrame(history, schema.USER_HISTORY_SCHEMA), io.feature_path(root, "user_history"))


def register(cfg, bundle) -> str:
    """Log ``bundle`` as the pyfunc model and point ``cfg.mlflow.alias`` (challenger) at it.

    Returns: the version."""
    import mlflow
    from mlflow import MlflowClient

    from recsys_spark import tracking
    from recsys_spark.models.pyfunc import log_model

    experiment = tracking.setup(cfg)
    with mlflow.start_run(experiment_id=experiment):
        info = log_model(bundle, cfg.mlflow.registered_model, k=2)
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(cfg.mlflow.registered_model, cfg.mlflow.alias, version)
    return version


EVALUATE = {
    "ks": KS, "primary_metric": "ndcg@2", "block_size": 2, "cold_user_threshold": 2,
    "cooccurrence_windows": [1, 2], "cooccurrence_decays": [0.5, 1.0], "cooccurrence_similarities": ["count"],
    "als_ranks": [2], "als_reg_params": [0.1], "als_alphas": [1.0], "als_max_iter": 2,
}


@pytest.fixture(scope="module")
def workspace(spark, tmp_path_factory):
    """A features folder and a registry holding tiny_bundle() as version 1 @challenger."""
    root = tmp_path_factory.mktemp("evaluate") / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the module
        # score.ranker=model: a random model may lose to a tuned baseline on three validation
        # users, and these tests gate the model (a baseline served instead: see the tests below).
        cfg = from_dict({"paths": {"root": str(root)}, "evaluate": EVALUATE, "score": {"ranker": "model"}})
        bundle = tiny_bundle()
        write_features(spark, cfg.paths.resolve("features"), bundle)
        version = register(cfg, bundle)
        yield cfg, bundle, version


def model_per_user(bundle):
    """The model's per-user metrics (u1..u4) and top lists by brute force over its own towers
    and the pandas reference."""
    users = [u for u in TEST_USERS if u[3]]
    module = bundle.build_module()
    hist = torch.tensor([u[1] for u in users])
    events = torch.tensor([[1 if i else 0 for i in u[1]] for u in users])
    with torch.no_grad():
        user_vecs = ranking.user_vectors(module, hist, events, torch.zeros_like(hist)).double().numpy()
        item_vecs = module.item_vectors().double().numpy()
    ranked = brute_force(user_vecs, item_vecs, max(KS), [u[2] for u in users])
    per_user = pandas_reference(ranked, [np.array(u[3]) for u in users], KS)
    per_user["auc"] = [brute_force_auc(user_vecs[i] @ item_vecs.T, u[2], u[3]) for i, u in enumerate(users)]
    return per_user, ranked


def brute_force_auc(scores: np.ndarray, seen: list[int], targets: list[int]) -> float:
    """scikit-learn's ROC AUC of one user over the real items not seen."""
    from sklearn.metrics import roc_auc_score

    eligible = np.setdiff1d(np.arange(schema.FIRST_ITEM_INDEX, len(scores)), seen)
    return roc_auc_score(np.isin(eligible, targets), scores[eligible])


def model_expectation(bundle) -> dict[str, float]:
    """The model's metrics by brute force over its own towers and the pandas reference."""
    per_user, ranked = model_per_user(bundle)
    out = per_user.mean().to_dict()
    for k in KS:
        out[f"coverage@{k}"] = len(np.unique(ranked[:, :k])) / (NUM_ITEMS - 2)
    return out


@pytest.mark.e2e
def test_evaluate_stage_compares_the_model_with_tuned_baselines_and_promotes_the_first_champion(spark, workspace):
    from mlflow import MlflowClient

    from recsys_spark.models import registry

    cfg, bundle, version = workspace
    summary = evaluate.run(spark, cfg)

    model = model_expectation(bundle)
    assert summary["model_version"] == version == "1"
    for name in ("ndcg@2", "recall@2", "map@2", "mrr", "coverage@2"):
        assert summary[f"popularity.{name}"] == pytest.approx(POPULARITY[name], abs=1e-9), name
        assert summary[f"model.{name}"] == pytest.approx(model[name], abs=1e-6), name
    for ranker in ("cooccurrence", "als"):
        assert 0.0 <= summary[f"{ranker}.ndcg@2"] <= 1.0
    assert summary["users"] == summary["users_evaluated"] == 4

    # Intervals: the bootstrap over u1..u4 of each user's value, from evaluate.bootstrap_seed.
    ec = cfg.evaluate
    boot = (ec.bootstrap_samples, ec.bootstrap_seed, ec.confidence)
    popularity = intervals.mean_interval(np.array(POPULARITY_NDCG2), *boot)
    assert popularity.low < popularity.mean < popularity.high and popularity.users == 4
    assert summary["popularity.ndcg@2.interval"] == popularity.describe()
    model_users = model_per_user(bundle)[0]["ndcg@2"].to_numpy()
    versus = intervals.mean_interval(model_users - np.array(POPULARITY_NDCG2), *boot)
    assert summary["model_vs_popularity.ndcg@2"] == versus.describe(signed=True)
    assert versus.mean == pytest.approx(model["ndcg@2"] - POPULARITY["ndcg@2"], abs=1e-6)

    report = json.loads(open(summary["report"]).read())
    assert summary["report"] == f"{cfg.paths.resolve('reports')}/evaluation.json"
    # The per-user values behind the report: popularity's NDCG@2 per user by hand, the model's
    # as model_per_user computes them.
    per_user = pd.read_parquet(f"{cfg.paths.resolve('reports')}/{evaluate.PER_USER_TABLE}")
    assert set(per_user["ranker"]) == {"model", "popularity", "cooccurrence", "als", "ease"}
    popular = per_user[per_user["ranker"] == "popularity"].sort_values("user_id")
    assert popular["ndcg@2"].tolist() == pytest.approx(POPULARITY_NDCG2, abs=1e-9)
    assert sorted(per_user[per_user["ranker"] == "model"]["ndcg@2"]) == pytest.approx(sorted(model_users), abs=1e-6)
    assert (report["users"], report["users_with_targets"], report["catalogue_size"], report["head_items"]) == (5, 4, 6, 1)
    assert set(report["rankers"]) == {"model", "popularity", "cooccurrence", "als", "ease"}
    for name, value in POPULARITY.items():
        assert report["rankers"]["popularity"][name] == pytest.approx(value, abs=1e-9), name
    for name in metric_names(KS) + ["auc", "coverage@1", "coverage@2"]:
        assert report["rankers"]["model"][name] == pytest.approx(model[name], abs=1e-6), name
    for segment, value in POPULARITY_SEGMENTS.items():
        assert report["segments"]["popularity"][segment]["ndcg@2"] == pytest.approx(value, abs=1e-9), segment
    for segment, value in POPULARITY_AUC_SEGMENTS.items():
        assert report["segments"]["popularity"][segment]["auc"] == pytest.approx(value, abs=1e-9), segment
    assert report["segments"]["model"]["cold_users"]["users"] == 3
    # Every per-user metric of every ranker has its interval (coverage, over the catalogue, none),
    # and the model is compared with every baseline, paired, on the headline metrics.
    assert report["users_evaluated"] == 4
    assert report["bootstrap"] == {"samples": 1000, "seed": 5, "confidence": 0.95}
    assert set(report["intervals"]) == set(report["rankers"])
    for ranker, bounds in report["intervals"].items():
        assert set(bounds) == set(evaluate.all_metric_names(KS)), ranker
        for name, (low, high) in bounds.items():
            assert low <= report["rankers"][ranker][name] + 1e-12 and report["rankers"][ranker][name] <= high + 1e-12
    assert report["intervals"]["popularity"]["ndcg@2"] == [popularity.low, popularity.high]
    assert set(report["paired"]) == {f"model_vs_{r}" for r in report["rankers"] if r != "model"}
    assert set(report["paired"]["model_vs_popularity"]) == {
        "ndcg@2", "recall@2", "map@2", "hitrate@2", "precision@2", "f1@2", "mrr", "auc", "novelty@2", "diversity@2",
        "head_share@2",
    }
    assert report["paired"]["model_vs_popularity"]["ndcg@2"] == {
        "diff": versus.mean, "low": versus.low, "high": versus.high, "users": 4
    }

    # Baselines: every grid point ranked on validation, the best by ndcg@2 kept for test.
    cooc, als = report["baselines"]["cooccurrence"], report["baselines"]["als"]
    assert len(cooc["grid"]) == 4 and len(als["grid"]) == 1
    best = max(cooc["grid"], key=lambda row: row["ndcg@2"])
    assert cooc["chosen"] == {k: best[k] for k in ("window", "decay", "similarity")}
    assert als["chosen"] == {"rank": 2, "reg_param": 0.1, "alpha": 1.0}

    # The gate: no champion yet, so the challenger becomes it, and says why everywhere.
    assert report["gate"]["promote"] and report["gate"]["reasons"][0].startswith("no champion yet")
    assert summary["gate"] == "promoted" and summary["champion_version"] == "1"
    assert registry.alias_version(cfg, "champion") == "1"
    assert report["ranker_choice"]["ranker"] == "model" and report["ranker_choice"]["version"] == "1"
    assert summary["serving"].startswith("the model, version 1: ")

    client = MlflowClient()
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.tags["stage"] == "evaluate" and run.data.tags["gate.decision"] == "promoted"
    assert run.data.metrics["popularity.ndcg_at_2"] == pytest.approx(POPULARITY["ndcg@2"])
    assert run.data.metrics["model.mrr"] == pytest.approx(model["mrr"], abs=1e-6)
    assert run.data.metrics["popularity.auc"] == pytest.approx(POPULARITY["auc"])
    assert run.data.metrics["popularity.precision_at_2"] == pytest.approx(POPULARITY["precision@2"])
    assert run.data.metrics["popularity.f1_at_2.ci_low"] <= POPULARITY["f1@2"] <= (
        run.data.metrics["popularity.f1_at_2.ci_high"])
    assert run.data.metrics["popularity.cold_users.ndcg_at_2"] == pytest.approx(POPULARITY_SEGMENTS["cold_users"])
    assert run.data.params["baseline.als.rank"] == "2"
    assert run.data.metrics["popularity.ndcg_at_2.ci_low"] == pytest.approx(popularity.low)
    assert run.data.metrics["popularity.ndcg_at_2.ci_high"] == pytest.approx(popularity.high)
    assert run.data.metrics["paired.model_vs_popularity.ndcg_at_2.diff"] == pytest.approx(versus.mean)
    assert run.data.metrics["paired.model_vs_popularity.ndcg_at_2.low"] == pytest.approx(versus.low)
    assert run.data.metrics["paired.model_vs_popularity.ndcg_at_2.high"] == pytest.approx(versus.high)
    assert run.data.metrics["paired.model_vs_popularity.ndcg_at_2.users"] == 4
    assert run.data.metrics["users_evaluated"] == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation.json", "evaluation.html", "curves.png", "popularity_bias.png", "segments.png",
            "paired.png"} <= artifacts
    html = open(summary["html_report"]).read()
    assert html.count("data:image/png;base64,") == 4 and "Registry gate: promoted" in html
    assert f"{POPULARITY['ndcg@2']:.4f} [{popularity.low:.4f}, {popularity.high:.4f}]" in html
    assert "<td>model - popularity</td>" in html
    tags = client.get_model_version(cfg.mlflow.registered_model, version).tags
    assert float(tags["eval.ndcg_at_2"]) == pytest.approx(model["ndcg@2"], abs=1e-5)
    assert tags["eval.users"] == "4"
    assert tags["eval.model_vs_popularity.ndcg_at_2"] == versus.describe(signed=True)
    assert float(tags["eval.popularity.ndcg_at_2"]) == pytest.approx(POPULARITY["ndcg@2"], abs=1e-5)
    assert tags["eval.run_id"] == run.info.run_id
    assert tags["gate.decision"] == "promoted" and tags["gate.run_id"] == run.info.run_id


@pytest.mark.e2e
def test_a_new_challenger_is_compared_with_the_champion_on_the_same_test_data(spark, workspace):
    from recsys_spark.models import registry

    cfg, champion_bundle, champion = workspace
    if registry.alias_version(cfg, "champion") is None:  # when run alone
        evaluate.run(spark, cfg)
    challenger = register(cfg, tiny_bundle(seed=1))
    quick = from_dict({"paths": {"root": cfg.paths.root}, "evaluate": {**EVALUATE, "baselines": ["popularity"],
                                                                       "gate_max_coverage_loss": 1.0}})
    summary = evaluate.run(spark, quick)

    report = json.loads(open(summary["report"]).read())
    assert (report["model_version"], report["champion_version"]) == (challenger, champion)
    assert set(report["rankers"]) == {"model", "champion", "popularity"}
    expected = {"model": model_expectation(tiny_bundle(seed=1)), "champion": model_expectation(champion_bundle)}
    for ranker, values in expected.items():
        assert report["rankers"][ranker]["ndcg@2"] == pytest.approx(values["ndcg@2"], abs=1e-6), ranker
    # The gate read the paired difference model - champion on the same users.
    assert set(report["paired"]) == {"model_vs_champion", "model_vs_popularity"}
    paired = report["paired"]["model_vs_champion"]["ndcg@2"]
    users = [u for u in TEST_USERS if u[3]]
    expected = intervals.mean_interval(model_per_user(tiny_bundle(seed=1))[0]["ndcg@2"].to_numpy()
                               - model_per_user(champion_bundle)[0]["ndcg@2"].to_numpy(), 1000, 5, 0.95)
    assert (paired["diff"], paired["users"]) == (pytest.approx(expected.mean, abs=1e-6), len(users))
    assert paired["low"] == pytest.approx(expected.low, abs=1e-6)
    assert paired["high"] == pytest.approx(expected.high, abs=1e-6)
    difference = (paired["diff"], paired["low"], paired["high"], paired["users"])
    decision = registry.decide(challenger, report["rankers"]["model"], champion, report["rankers"]["champion"],
                               "ndcg@2", "coverage@2", 0.0, 1.0, difference=difference)
    assert report["gate"] == decision.as_dict()
    assert "paired difference" in report["gate"]["reasons"][0]  # coverage passes here: the primary decides
    assert decision.promote == (paired["low"] > 0.0)
    assert registry.alias_version(cfg, "champion") == (challenger if decision.promote else champion)


@pytest.mark.unit
def test_config_is_checked_before_any_work():
    ok = EvaluateConfig()
    replace(ok, primary_metric="coverage@20")
    bad = {
        "evaluate.primary_metric": dict(primary_metric="ndcg@7"),
        "evaluate.ks": dict(ks=[0, 10]),
        "evaluate.exclude_seen_event_types": dict(exclude_seen_event_types=["click"]),
        "evaluate.baselines": dict(baselines=["svd"]),
        "evaluate.head_share": dict(head_share=0.0),
        "evaluate.champion_alias": dict(champion_alias="challenger"),
        "evaluate.cooccurrence_decays": dict(cooccurrence_decays=[1.5]),
        "evaluate.als_ranks": dict(als_ranks=[]),
    }
    for key, change in bad.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            replace(ok, **change)
    replace(ok, baselines=["popularity"], als_ranks=[])  # ALS off: its grid is unused


@pytest.mark.unit
def test_bootstrap_settings_are_checked_when_the_config_is_built():
    for key, value in {"bootstrap_samples": 0, "bootstrap_seed": -1, "confidence": 1.0}.items():
        with pytest.raises(ConfigError, match=rf"^evaluate\.{key}"):
            load_config(None, [f"evaluate.{key}={value}"])
    with pytest.raises(ConfigError, match=r"^evaluate\.confidence"):
        load_config(None, ["evaluate.confidence=0.0"])
    load_config(None, ["evaluate.confidence=0.9", "evaluate.bootstrap_samples=10"])


@pytest.mark.unit
def test_table_shows_every_ranker():
    values = {**POPULARITY, **{f"{m}@{k}": 0.5 for m in ("novelty", "diversity") for k in KS}}
    text = evaluate.table({"model": values, "popularity": values}, KS)
    assert text.splitlines()[0].split()[:7] == ["ranker", "recall@1", "ndcg@1", "map@1", "precision@1", "f1@1",
                                                "coverage@1"]
    assert text.splitlines()[0].split()[-3:] == ["mrr", "auc", "users"]
    auc = text.splitlines()[0].split().index("auc")
    assert text.splitlines()[1].split()[auc] == f"{POPULARITY['auc']:.4f}"
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["model", "popularity"]
    with_users = {"model": {**values, "users": 1168}, "popularity": {**values, "users": 1168}}
    found = {"model": {"ndcg@2": intervals.Interval(0.5, 0.4, 0.61, 1168)}}
    text = evaluate.table(with_users, KS, found, "ndcg@2")
    assert text.splitlines()[0].endswith("users  ndcg@2 interval")
    assert text.splitlines()[1].endswith(" 1168  [0.4000, 0.6100]")
    assert text.splitlines()[2].endswith(" 1168")


# ----------------------------------------------------------------------- a baseline served instead

# Training windows in which every item has a partner (2-3, 4-5, 6-7, twice each) and weaker links
# (3-4, 5-6); validation users whose next item is their last item's partner. Plain EASE (lambda 1,
# decay 1) ranks every partner first: ndcg@2 = 1 for all six users, so model - EASE is at most 0
# for each, and below 0 wherever the model misses the partner at rank 1.
PARTNER_WINDOWS = [[0, 0, 0, 2, 3]] * 2 + [[0, 0, 0, 4, 5]] * 2 + [[0, 0, 0, 6, 7]] * 2 + [[0, 0, 0, 3, 4],
                                                                                           [0, 0, 0, 5, 6]]
PARTNER_USERS = [(f"v{a}", [0, 0, 0, a], [a], [b], [1]) for a, b in ((2, 3), (3, 2), (4, 5), (5, 4), (6, 7), (7, 6))]
SERVING = {**EVALUATE, "baselines": ["popularity", "ease"], "ease_lambdas": [1.0], "ease_decays": [1.0]}
SCORE = {"top_k": 3, "explore_share": 0.0, "run_date": "2019-11-01"}
BOUGHT = {"u4": [5]}  # u4 bought item 5 (product 1005): the score stage never recommends it to u4
# The EASE weights of PARTNER_WINDOWS (rows: history item 2..7, columns: scored item 2..7), rounded:
#   2: [ 0.    0.667 -0.25   0.138 -0.048  0.026]    5: [ 0.104 -0.19   0.552  0.     0.345 -0.189]
#   3: [ 0.547 0.    0.375 -0.207  0.071 -0.039]    6: [-0.039  0.071 -0.207  0.375  0.     0.547]
#   4: [-0.189 0.345 0.    0.552 -0.19   0.104]     7: [ 0.026 -0.048  0.138 -0.25   0.667  0.   ]
# so a user's list is the order of the sum of their items' rows (u2 knows no item: fallback).
EASE_LISTS = {"u1": [1003, 1005, 1007], "u3": [1002, 1004, 1006], "u4": [1003, 1002, 1004], "u5": [1005, 1007, 1006]}


def partner_gram() -> np.ndarray:
    """X'X of PARTNER_WINDOWS by hand: a row per window, a 1 for each of its items 2..7."""
    x = np.array([[float(i in window) for i in range(2, NUM_ITEMS)] for window in PARTNER_WINDOWS])
    return x.T @ x


def serving_workspace(spark, root, ranker: str):
    """Partner features, clean events (views of each history item, u4's purchase) and a registry
    holding tiny_bundle() as version 1 @challenger, under ``score.ranker=ranker``."""
    import datetime as dt

    cfg = from_dict({"paths": {"root": str(root)}, "evaluate": SERVING, "score": {**SCORE, "ranker": ranker}})
    bundle = tiny_bundle()
    write_features(spark, cfg.paths.resolve("features"), bundle, PARTNER_USERS, PARTNER_WINDOWS)
    at = dt.datetime(2019, 10, 20, 12, tzinfo=dt.timezone.utc)
    events = [("view", 1000 + i, user) for user, hist, *_ in TEST_USERS for i in hist if i >= 2]
    events += [("view", 1003, "u2")] + [("purchase", 1000 + i, user) for user, items in BOUGHT.items() for i in items]
    rows = [(at, kind, product, None, None, None, 10.0, user, f"{user}-s", at.date()) for kind, product, user in events]
    clean = spark.createDataFrame(rows, schema.CLEAN_SCHEMA)
    clean.write.mode("overwrite").partitionBy(schema.EVENT_DATE).parquet(cfg.paths.resolve("clean"))
    return cfg, bundle, register(cfg, bundle)


def served_lists(path: str) -> tuple[dict[str, list[int]], dict[str, set[str]], set[str]]:
    """The written recommendations: (user -> product ids by rank, user -> sources, model versions)."""
    import pyarrow.parquet as pq

    recs = pq.read_table(path).to_pandas().sort_values([schema.USER_ID, schema.RANK])
    assert [c for c in recs.columns if c != schema.RUN_DATE] == [
        c for c in schema.RECOMMENDATION_SCHEMA.fieldNames() if c != schema.RUN_DATE]
    lists = recs.groupby(schema.USER_ID)[schema.ITEM_ID].agg(list).to_dict()
    return lists, recs.groupby(schema.USER_ID)[schema.SOURCE].agg(set).to_dict(), set(recs[schema.MODEL_VERSION])


def own_lists(ranker, users, k: int, exclude_seen: bool) -> dict[str, list[int]]:
    """A ranker's own top K of TEST_USERS ``users`` as product ids, leaving out what they bought
    (as the score stage does) or their seen items (as the pyfunc does)."""
    rows = [row[:5] for row in eval_rows([u for u in TEST_USERS if u[0] in users])]
    frame = pd.DataFrame(rows, columns=schema.USER_HISTORY_SCHEMA.fieldNames())
    bought = None if exclude_seen else [np.array(BOUGHT.get(u, []), dtype=np.int64) for u in frame[schema.USER_ID]]
    top, _ = ranker.recommend(frame, k, exclude=bought)
    return {u: [1000 + int(i) for i in row if i >= 0] for u, row in zip(frame[schema.USER_ID], top)}


@pytest.mark.e2e
def test_a_tuned_baseline_that_beats_the_model_on_validation_is_registered_and_served(spark, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from recsys_spark.evaluation import baselines
    from recsys_spark.models import registry
    from recsys_spark.models.bundle import BaselineBundle
    from recsys_spark.scoring import score

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, _, model_version = serving_workspace(spark, tmp_path / "work", "auto")
    summary = evaluate.run(spark, cfg)
    report = json.loads(open(summary["report"]).read())

    # Decided on validation: EASE beats the model on the six users (upper bound below 0), so it
    # is registered as version 2 and gated in the model's place; with no champion yet, promoted.
    choice = report["ranker_choice"]
    assert (choice["ranker"], choice["baseline"], choice["ahead"], choice["version"]) == ("ease", "ease", True, "2")
    assert choice["difference"]["users"] == 6 and choice["difference"]["high"] < 0
    assert choice["reason"].startswith("EASE (tuned) beats the model on validation: model - EASE (tuned) on 6 "
                                       "validation users = -")
    assert choice["reason"].endswith(" (95% interval); score.ranker=auto puts it forward instead")
    assert report["gate"]["challenger_version"] == "2" and report["gate"]["reasons"][0] == choice["reason"]
    assert report["gate"]["reasons"][1].startswith("no champion yet: challenger version 2 becomes the first champion")
    assert (summary["gate"], summary["champion_version"]) == ("promoted", "2")
    assert summary["serving"] == f"EASE (tuned), version 2: {choice['reason']}"
    assert (registry.alias_version(cfg, "champion"), registry.alias_version(cfg, "challenger")) == ("2", model_version)

    # The version: EASE fitted on the training windows with its tuned lambda, tagged with why; the
    # model's version says it was not gated, and the evaluate run says what is served.
    client, name = MlflowClient(), cfg.mlflow.registered_model
    served, version = registry.load_bundle(cfg, alias="champion")
    weights = baselines.fit_ease(partner_gram(), 1.0)
    assert isinstance(served, BaselineBundle) and (served.family, served.params, version) == (
        "ease", {"lambda": 1.0, "decay": 1.0}, "2")
    assert served.arrays["items"].tolist() == list(range(2, NUM_ITEMS))
    np.testing.assert_allclose(served.arrays["weights"], weights, atol=1e-6)
    tags = client.get_model_version(name, "2").tags
    assert (tags["ranker"], json.loads(tags["ranker.params"]), tags["ranker.instead_of_version"]) == (
        "ease", {"lambda": 1.0, "decay": 1.0}, model_version)
    assert tags["ranker.reason"] == choice["reason"] and tags["gate.decision"] == "promoted"
    assert tags["eval.run_id"] == report["mlflow_run_id"] and tags["eval.users"] == "4"
    assert client.get_model_version(name, model_version).tags["gate.reasons"] == choice["reason"]
    run = client.get_run(report["mlflow_run_id"])
    assert (run.data.tags["gate.ranker"], run.data.tags["serving"]) == ("ease", summary["serving"])
    assert client.get_model_version(name, "2").run_id == report["mlflow_run_id"]  # its lineage: this run

    # The score stage serves its lists: EASE's own top 3 of every known user, what they bought left out.
    ease = baselines.EaseRanker(np.arange(2, NUM_ITEMS), weights, 1.0, NUM_ITEMS, served.ranker().allowed)
    assert own_lists(ease, EASE_LISTS, 3, exclude_seen=False) == EASE_LISTS
    scored = score.run(spark, cfg)
    assert (scored["model_version"], scored["ranker"], scored["users"]) == ("2", "EASE (tuned)", 5)
    lists, sources, versions = served_lists(scored["recommendations_path"])
    assert {u: lists[u] for u in EASE_LISTS} == EASE_LISTS and versions == {"2"}
    assert sources == {"u1": {"model"}, "u2": {"fallback"}, "u3": {"model"}, "u4": {"model"}, "u5": {"model"}}
    # ... and its pyfunc answers as a model's does: top K of the vocabulary, seen items left out.
    frame = pd.DataFrame([row[1:5] for row in eval_rows() if row[0] in EASE_LISTS],
                         columns=schema.USER_HISTORY_SCHEMA.fieldNames()[1:])
    predicted = mlflow.pyfunc.load_model(f"models:/{name}/2").predict(frame, params={"k": 3})
    assert predicted["item_ids"].tolist() == list(own_lists(ease, EASE_LISTS, 3, exclude_seen=True).values())

    # score.ranker=model refuses to score with a baseline.
    with pytest.raises(InputError, match=r"is EASE \(tuned\).*score\.ranker=model"):
        score.run(spark, from_dict({**cfg.to_dict(), "score": {**cfg.to_dict()["score"], "ranker": "model"}}))


@pytest.mark.e2e
def test_score_ranker_model_gates_and_serves_the_model_although_a_baseline_beats_it(spark, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from recsys_spark.models import registry
    from recsys_spark.scoring import score

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, bundle, model_version = serving_workspace(spark, tmp_path / "work", "model")
    summary = evaluate.run(spark, cfg)
    report = json.loads(open(summary["report"]).read())

    choice = report["ranker_choice"]
    assert (choice["ranker"], choice["baseline"], choice["ahead"], choice["version"]) == ("model", "ease", True, "1")
    assert choice["reason"].endswith("; score.ranker=model keeps the model")
    reasons = report["gate"]["reasons"]
    assert reasons[0].startswith("no champion yet: challenger version 1") and reasons[-1] == choice["reason"]
    assert (summary["gate"], summary["champion_version"]) == ("promoted", model_version)
    assert summary["serving"] == f"the model, version 1: {choice['reason']}"
    versions = MlflowClient().search_model_versions(f"name='{cfg.mlflow.registered_model}'")
    assert [str(v.version) for v in versions] == [model_version]  # no baseline registered
    assert registry.alias_version(cfg, "champion") == model_version

    scored = score.run(spark, cfg)
    assert (scored["model_version"], scored["ranker"]) == (model_version, "the model")
    lists, sources, served_versions = served_lists(scored["recommendations_path"])
    assert {u: lists[u] for u in EASE_LISTS} == own_lists(bundle.ranker(), EASE_LISTS, 3, exclude_seen=False)
    assert served_versions == {model_version} and sources["u2"] == {"fallback"}
