"""The evaluate stage on a tiny feature set and a registered (randomly initialised) model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recsys_spark import io
from recsys_spark import schema as S
from recsys_spark.config import from_dict
from recsys_spark.errors import ConfigError, InputError
from recsys_spark.evaluation import evaluate
from recsys_spark.evaluation.metrics import metric_names

from tests.evaluation.test_metrics import pandas_reference
from tests.evaluation.test_ranking import MAX_SEQ_LEN, NUM_ITEMS, brute_force, tiny_bundle

KS = [1, 2]
G2 = 1 / math.log2(3)

# user, hist_items (L = 4), seen_items, target_items. Popularity order: 2, 3, 4, 5, 6, 7.
TEST_USERS = [
    ("u1", [0, 0, 0, 2], [2], [3]),  # popularity top-2: 3, 4 -> hit at rank 1
    ("u2", [0, 0, 0, 1], [], [4, 7]),  # 2, 3 -> no hit
    ("u3", [0, 0, 0, 3], [3], [4, 2]),  # 2, 4 -> hits at ranks 1 and 2
    ("u4", [0, 2, 3, 4], [2, 3, 4], [6]),  # 5, 6 -> hit at rank 2
    ("u5", [0, 0, 5, 6], [5, 6], []),  # no target: left out of every average
]
# The popularity baseline by hand, averaged over u1..u4.
POPULARITY = {
    "recall@1": (1 + 0 + 1 / 2 + 0) / 4,
    "ndcg@1": (1 + 0 + 1 + 0) / 4,  # u3: IDCG@1 covers min(1, 2) = 1 position
    "hitrate@1": (1 + 0 + 1 + 0) / 4,
    "recall@2": (1 + 0 + 1 + 1) / 4,
    "ndcg@2": (1 + 0 + (1 + G2) / (1 + G2) + G2) / 4,
    "hitrate@2": (1 + 0 + 1 + 1) / 4,
    "mrr": (1 + 0 + 1 + 1 / 2) / 4,
    "coverage@1": 3 / 6,  # {3, 2, 2, 5}
    "coverage@2": 5 / 6,  # {3, 4, 2, 3, 2, 4, 5, 6}
}


def eval_rows(users=TEST_USERS) -> list[tuple]:
    rows = []
    for user, hist, seen, targets in users:
        events = [1 if i else 0 for i in hist]
        rows.append((user, hist, events, [0] * len(hist), seen, targets, [1] * len(targets)))
    return rows


def write_features(spark, root: str, bundle) -> None:
    io.write_json(spark, io.feature_path(root, S.FEATURE_METADATA),
                  {"num_items": NUM_ITEMS, "max_seq_len": MAX_SEQ_LEN, "counts": {}})
    vocab = [tuple(int(v) for v in row) for row in bundle.item_vocab[S.ITEM_VOCAB_SCHEMA.fieldNames()].to_numpy()]
    io.write_table(spark.createDataFrame(vocab, S.ITEM_VOCAB_SCHEMA), io.feature_path(root, "item_vocab"))
    io.write_table(spark.createDataFrame(eval_rows(), S.EVAL_SCHEMA), io.feature_path(root, "test"))
    history = [row[:5] for row in eval_rows()]
    io.write_table(spark.createDataFrame(history, S.USER_HISTORY_SCHEMA), io.feature_path(root, "user_history"))


def register(cfg, bundle) -> str:
    """Log ``bundle`` as the pyfunc model and point ``cfg.mlflow.alias`` at it. Returns: the version."""
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


@pytest.fixture(scope="module")
def workspace(spark, tmp_path_factory):
    """A features folder and a registry holding tiny_bundle() as version 1 @challenger."""
    root = tmp_path_factory.mktemp("evaluate") / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the module
        cfg = from_dict(
            {"paths": {"root": str(root)}, "evaluate": {"ks": KS, "primary_metric": "ndcg@2", "block_size": 2}}
        )
        bundle = tiny_bundle()
        write_features(spark, cfg.paths.resolve("features"), bundle)
        version = register(cfg, bundle)
        yield cfg, bundle, version


def model_expectation(bundle) -> dict[str, float]:
    """The model's metrics by brute force over its own towers and the pandas reference."""
    users = [u for u in TEST_USERS if u[3]]
    module = bundle.build_module()
    hist = torch.tensor([u[1] for u in users])
    events = torch.tensor([[1 if i else 0 for i in u[1]] for u in users])
    with torch.no_grad():
        user_vecs = module.user_vectors(hist, events, torch.zeros_like(hist)).double().numpy()
        item_vecs = module.item_vectors().double().numpy()
    ranked = brute_force(user_vecs, item_vecs, max(KS), [u[2] for u in users])
    per_user = pandas_reference(ranked, [np.array(u[3]) for u in users], KS)
    out = per_user.mean().to_dict()
    for k in KS:
        out[f"coverage@{k}"] = len(np.unique(ranked[:, :k])) / (NUM_ITEMS - 2)
    return out


@pytest.mark.e2e
def test_evaluate_stage_averages_the_per_user_metrics_of_both_rankers(spark, workspace):
    import mlflow
    from mlflow import MlflowClient

    cfg, bundle, version = workspace
    summary = evaluate.run(spark, cfg)

    model = model_expectation(bundle)
    assert summary["model_version"] == version == "1"
    assert summary["popularity.ndcg@2"] == pytest.approx(POPULARITY["ndcg@2"], abs=1e-9)
    assert summary["model.ndcg@2"] == pytest.approx(model["ndcg@2"], abs=1e-6)
    assert summary["users"] == 4

    report = json.loads(open(summary["report"]).read())
    assert summary["report"] == f"{cfg.paths.resolve('reports')}/evaluation.json"
    assert (report["users"], report["users_with_targets"], report["catalogue_size"]) == (5, 4, 6)
    assert set(report["rankers"]) == {"model", "popularity"}
    for name in metric_names(KS) + ["coverage@1", "coverage@2"]:
        assert report["rankers"]["popularity"][name] == pytest.approx(POPULARITY[name], abs=1e-9), name
        assert report["rankers"]["model"][name] == pytest.approx(model[name], abs=1e-6), name

    client = MlflowClient()
    run = client.get_run(report["mlflow_run_id"])
    assert run.data.tags["stage"] == "evaluate"
    assert run.data.metrics["popularity.ndcg_at_2"] == pytest.approx(POPULARITY["ndcg@2"])
    assert run.data.metrics["model.mrr"] == pytest.approx(model["mrr"], abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation.json", "evaluation.png"} <= artifacts
    tags = client.get_model_version(cfg.mlflow.registered_model, version).tags
    assert float(tags["eval.ndcg_at_2"]) == pytest.approx(model["ndcg@2"], abs=1e-5)
    assert float(tags["eval.popularity.ndcg_at_2"]) == pytest.approx(POPULARITY["ndcg@2"], abs=1e-5)
    assert tags["eval.run_id"] == run.info.run_id
    assert mlflow.get_tracking_uri() == cfg.tracking_uri


@pytest.mark.unit
def test_config_is_checked_before_any_work():
    evaluate.check_config([10, 20], "ndcg@10", 8)
    evaluate.check_config([10, 20], "coverage@20", 8)
    with pytest.raises(ConfigError, match="evaluate.primary_metric"):
        evaluate.check_config([10, 20], "ndcg@5", 8)
    with pytest.raises(ConfigError, match="evaluate.ks"):
        evaluate.check_config([0, 10], "ndcg@10", 8)


@pytest.mark.unit
def test_a_model_trained_on_another_vocabulary_is_refused():
    bundle = tiny_bundle()
    evaluate.check_same_vocabulary(bundle, bundle.item_vocab, NUM_ITEMS, "1")
    shifted = bundle.item_vocab.assign(**{S.PRODUCT_ID: bundle.item_vocab[S.PRODUCT_ID] + 1})
    with pytest.raises(InputError, match="another item vocabulary"):
        evaluate.check_same_vocabulary(bundle, shifted, NUM_ITEMS, "1")


@pytest.mark.unit
def test_table_and_plot_show_every_ranker():
    results = {"model": {**POPULARITY}, "popularity": {**POPULARITY}}
    text = evaluate.table(results, KS)
    assert text.splitlines()[0].split() == ["ranker", *metric_names(KS), "coverage@1", "coverage@2"]
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["model", "popularity"]
    fig = evaluate.plot(results, KS)
    assert [ax.get_ylabel() for ax in fig.axes] == ["Recall@K", "NDCG@K"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
