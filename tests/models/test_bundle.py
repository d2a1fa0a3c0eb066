"""Bundles: a tuned baseline's file holds exactly the ranker evaluate measured, and the pyfunc
serves it with the model's input and output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_spark import schema
from recsys_spark.evaluation import baselines
from recsys_spark.models import bundle as bundles
from recsys_spark.models.bundle import BaselineBundle, ModelBundle
from recsys_spark.models.pyfunc import RecommenderPyfunc
from recsys_spark.schema import ITEM_IDS, SCORES

from tests.evaluation.test_rankers import history_rows, tiny_bundle

pytestmark = pytest.mark.unit

NUM_ITEMS = 6  # pad, OOV and items 2..5, products 1002..1005
VOCAB = pd.DataFrame({
    schema.ITEM_IDX: np.arange(2, NUM_ITEMS, dtype=np.int32),
    schema.PRODUCT_ID: 1000 + np.arange(2, NUM_ITEMS),
    schema.CATEGORY_IDX: np.zeros(4, dtype=np.int32),
    schema.BRAND_IDX: np.zeros(4, dtype=np.int32),
    schema.PRICE_BUCKET: np.ones(4, dtype=np.int32),
    schema.TRAIN_COUNT: np.full(4, 3, dtype=np.int64),
    schema.PRETEST_COUNT: np.full(4, 4, dtype=np.int64),
})
ARGS = {"num_items": NUM_ITEMS, "max_seq_len": 4}
# Co-occurrence counts of the pairs (2, 3), (3, 4), (4, 5), symmetric.
SIMILARITY = baselines.SparseRows.from_pairs(np.array([2, 3, 3, 4, 4, 5]), np.array([3, 2, 4, 3, 5, 4]),
                                             np.array([3.0, 3.0, 1.0, 1.0, 2.0, 2.0]), NUM_ITEMS)


def cooccurrence_bundle() -> BaselineBundle:
    arrays = {"indptr": SIMILARITY.indptr, "indices": SIMILARITY.indices, "data": SIMILARITY.data}
    return BaselineBundle("cooccurrence", {"window": 1, "decay": 0.5, "similarity": "count"}, arrays, VOCAB, ARGS, {})


def fitted_bundles() -> list[BaselineBundle]:
    rng = np.random.default_rng(0)
    als = {"item_factors": rng.random((NUM_ITEMS, 2)).astype(np.float32)}
    ease = {"items": np.arange(2, NUM_ITEMS, dtype=np.int64), "weights": rng.random((4, 4)).astype(np.float32)}
    return [
        cooccurrence_bundle(),
        BaselineBundle("als", {"rank": 2, "reg_param": 0.1, "alpha": 1.0}, als, VOCAB, ARGS, {}),
        BaselineBundle("ease", {"lambda": 10.0, "decay": 0.8}, ease, VOCAB, ARGS, {}, {"validation.x": 0.5}),
    ]


def test_the_pyfunc_serves_a_baseline_as_it_serves_the_model():
    # History ... 2, 4 (4 the latest), decay 0.5: item 3 scores sim(4, 3) + 0.5 sim(2, 3) = 1 + 1.5,
    # item 5 sim(4, 5) = 2; items 2 and 4 are seen, so the list ends after two. History 3: item 2
    # scores 3, item 4 1, item 5 0.
    rows = history_rows([[2, 4], [3]], seen=[[2, 4], [3]])
    out = RecommenderPyfunc.from_bundle(cooccurrence_bundle()).predict(None, rows, {"k": 3})
    assert list(out.columns) == [ITEM_IDS, SCORES]
    assert out[ITEM_IDS].tolist() == [[1003, 1005], [1002, 1004, 1005]]
    assert out[SCORES].tolist() == [[2.5, 2.0], [3.0, 1.0, 0.0]]


@pytest.mark.parametrize("baseline", fitted_bundles(), ids=lambda b: b.family)
def test_a_baseline_bundle_reads_back_as_the_ranker_evaluate_measured(baseline, tmp_path):
    path = str(tmp_path / "bundle.pt")
    baseline.save(path)
    back = bundles.load(path)
    assert isinstance(back, BaselineBundle) and back.ranker_name == baseline.family
    assert (back.params, back.model_args, back.metrics) == (baseline.params, ARGS, baseline.metrics)
    assert back.item_vocab.equals(VOCAB)
    assert back.product_ids().tolist() == [-1, -1, 1002, 1003, 1004, 1005]

    allowed = torch.ones(NUM_ITEMS, dtype=torch.bool)
    allowed[:2] = False
    arrays, params = baseline.arrays, baseline.params
    if baseline.family == "cooccurrence":
        direct = baselines.CooccurrenceRanker(SIMILARITY, params["decay"], allowed)
    elif baseline.family == "als":
        direct = baselines.AlsRanker(arrays["item_factors"], params["reg_param"], params["alpha"], allowed)
    else:
        direct = baselines.EaseRanker(arrays["items"], arrays["weights"], params["decay"], NUM_ITEMS, allowed)
    rows = history_rows([[2, 3], [5], [4, 2, 3]], seen=[[2, 3], [5], [2, 3, 4]])
    ranker = back.ranker()
    assert type(ranker) is type(direct) and torch.equal(ranker.allowed, allowed)
    assert torch.equal(ranker.score_block(rows), direct.score_block(rows))
    assert np.array_equal(ranker.recommend(rows, 3)[0], direct.recommend(rows, 3)[0])


def test_either_kind_reads_back_as_itself_and_a_model_is_never_a_baseline():
    model = tiny_bundle()
    assert isinstance(bundles.read(model.to_bytes()), ModelBundle)
    assert ModelBundle.from_bytes(model.to_bytes()).model_args == model.model_args
    with pytest.raises(ValueError, match="cooccurrence baseline, not a trained model"):
        ModelBundle.from_bytes(cooccurrence_bundle().to_bytes())
    with pytest.raises(ValueError, match="baseline 'svd' is not one of cooccurrence, als, ease"):
        BaselineBundle("svd", {}, {}, VOCAB, ARGS, {})
    assert bundles.ranker_label("model") == "the model" and bundles.ranker_label("ease") == "EASE (tuned)"
