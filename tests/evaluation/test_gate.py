"""The gate's inputs: the challenger's vocabulary, the coverage metric it guards (evaluation/gate.py)."""

from __future__ import annotations

import pytest

from recsys_spark import schema
from recsys_spark.errors import InputError
# The tests read gate's names through evaluate, which imports them for the stage.
from recsys_spark.evaluation import evaluate, gate

from tests.evaluation.kit import KS
from tests.evaluation.test_rankers import NUM_ITEMS, tiny_bundle


@pytest.mark.unit
def test_a_model_trained_on_another_vocabulary_is_refused():
    bundle = tiny_bundle()
    evaluate.check_same_vocabulary(bundle, bundle.item_vocab, NUM_ITEMS, "1")
    shifted = bundle.item_vocab.assign(**{schema.PRODUCT_ID: bundle.item_vocab[schema.PRODUCT_ID] + 1})
    with pytest.raises(InputError, match="another item vocabulary"):
        evaluate.check_same_vocabulary(bundle, shifted, NUM_ITEMS, "1")


@pytest.mark.unit
def test_gate_coverage_and_headline_metrics():
    assert gate.gate_coverage_metric("ndcg@20", [5, 20, 50]) == "coverage@20"
    assert gate.gate_coverage_metric("mrr", [5, 20, 50]) == "coverage@50"
    assert evaluate.headline_metrics("ndcg@2", KS) == [
        "ndcg@2", "recall@2", "map@2", "hitrate@2", "precision@2", "f1@2", "coverage@2", "mrr", "auc", "novelty@2",
        "diversity@2", "head_share@2",
    ]
    assert evaluate.headline_metrics("mrr", KS)[:2] == ["mrr", "recall@2"]
