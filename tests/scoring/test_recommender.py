"""What a scoring task computes for a batch of users: model lists, fallback, exclusions, the
category cap and exploration, on the tiny catalogue of tests/scoring/tiny.py (no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from recsys_spark import schema
from recsys_spark.config import ScoreConfig
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY, USER_KEY
from recsys_spark.scoring import inputs
from recsys_spark.scoring.recommender import ItemSpace, Recommender, UserBatch, category_codes
from recsys_spark.scoring.score import RANKED_SCHEMA, build_plan, vocab_remap

from tests.scoring.tiny import (
    CATEGORY, NUM_ITEMS, PRODUCT, STATS, USERS, best, fallback_score, history_frame, model_scores, tiny_bundle,
)

pytestmark = pytest.mark.unit

K = 3
BOUGHT = {"known": [1004], "cold_cat": [], "cold_none": [], "cold_buyer": [2000]}
LATEST_CATEGORY = {"known": 77, "cold_cat": 99, "cold_none": None, "cold_buyer": 88}


def stats_frame(offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        schema.PRODUCT_ID: list(STATS),
        schema.CATEGORY_ID: pd.array([None if CATEGORY[p] is None else CATEGORY[p] + offset for p in STATS], dtype="Int64"),
        inputs.RECENT_USERS: [r for r, _ in STATS.values()],
        inputs.ALL_USERS: [a for _, a in STATS.values()],
    })


def batch(users=USERS, offset: int = 0) -> pd.DataFrame:
    frame = history_frame(users)
    frame[EXCLUDE_PRODUCTS] = [BOUGHT[u] for u in frame[schema.USER_ID]]
    latest = [LATEST_CATEGORY[u] for u in frame[schema.USER_ID]]
    frame[USER_CATEGORY] = pd.array([None if c is None else c + offset for c in latest], dtype="Int64")
    frame[USER_KEY] = np.arange(len(frame), dtype=np.int64) * 7919 + 1
    return frame


def recommender(bundle=None, excluded=(), feature_vocab=None, offset: int = 0, feedback=None, active_users: int = 0,
                **rules) -> Recommender:
    bundle = bundle or tiny_bundle()
    module = bundle.build_module()
    with torch.no_grad():
        vectors = module.item_vectors().numpy()
    vocab = bundle.item_vocab if feature_vocab is None else feature_vocab
    sc = ScoreConfig(**{"top_k": K, "block_size": 2, "explore_share": 0.0, "run_date": "2019-11-01", **rules})
    return Recommender(build_plan(bundle, vectors, vocab, stats_frame(offset), np.array(sorted(excluded), np.int64), sc,
                                  feedback, active_users))


def many_known(users: int = 400) -> pd.DataFrame:
    """``users`` copies of the "known" user, each with its own id and random key."""
    many = pd.concat([batch(USERS[:1])] * users, ignore_index=True)
    many[schema.USER_ID] = [f"u{i}" for i in range(len(many))]
    many[USER_KEY] = np.arange(len(many), dtype=np.int64) * 104729
    return many


def test_category_ids_above_2_to_the_53_keep_cold_users_in_their_category():
    # REES46's and the generator's category ids lie near 2^61: as float64, 99 + 2^61 and
    # 88 + 2^61 are the same number. The lists are those of small ids.
    big = 2053013552000000000
    small, large = recommender().recommend(batch()), recommender(offset=big).recommend(batch(offset=big))
    assert lists(large) == lists(small) and lists(large)["cold_cat"] == [1007, 1008, 3000]


def lists(out: pd.DataFrame) -> dict[str, list[int]]:
    return {u: g.sort_values(schema.RANK)[schema.ITEM_ID].tolist() for u, g in out.groupby(schema.USER_ID)}


def test_model_users_get_the_towers_best_unbought_items_and_cold_users_popular_ones_by_category():
    bundle = tiny_bundle()
    out = recommender(bundle).recommend(batch())
    assert list(out.columns) == RANKED_SCHEMA.fieldNames()
    known = model_scores(bundle, USERS[0][1])
    assert lists(out) == {
        "known": best(known, exclude=[1004], k=K),  # bought 1004
        "cold_cat": [1007, 1008, 3000],  # category 99 first, by recent popularity
        "cold_none": [2000, 1004, 1005],  # no category: the most popular
        "cold_buyer": [1005, 1006, 1004],  # category 88 without the bought 2000, then the most popular
    }
    sources = out.groupby(schema.USER_ID)[schema.SOURCE].agg(set).to_dict()
    assert sources == {"known": {"model"}, "cold_cat": {"fallback"}, "cold_none": {"fallback"},
                       "cold_buyer": {"fallback"}}
    rows = out.set_index([schema.USER_ID, schema.ITEM_ID])[schema.SCORE]
    for product in best(known, exclude=[1004], k=K):
        assert rows["known", product] == pytest.approx(known[product], rel=1e-5)
    # A fallback item's score is its popularity: recent users + all-time users / 9.
    assert rows["cold_cat", 1007] == pytest.approx(fallback_score(1007))
    assert rows["cold_none", 2000] == pytest.approx(8 + 8 / 9)
    assert out.groupby(schema.USER_ID)[schema.RANK].agg(list).to_dict() == {u: [1, 2, 3] for u, _, _ in USERS}


def test_a_mixture_model_scores_by_its_mean_softmax_over_the_items_each_user_may_get():
    bundle = tiny_bundle(user_vector="mixture")
    out = recommender(bundle).recommend(batch(USERS[:1]))
    # By hand: "known"'s real history steps, each a softmax over the catalogue 2..9 without
    # the bought 1004 (item 4), averaged; the log of that is the score.
    module = bundle.build_module()
    items = torch.tensor([USERS[0][1]])
    with torch.no_grad():
        steps = module.sequence_vectors(items, (items > 0).long(), torch.zeros_like(items))[0]
        vecs = module.item_vectors()
    logits = steps[items[0] > 0] @ vecs[schema.FIRST_ITEM_INDEX:].T
    allowed = torch.tensor([PRODUCT + i != 1004 for i in range(schema.FIRST_ITEM_INDEX, NUM_ITEMS)])
    probs = torch.exp(logits - torch.logsumexp(logits[:, allowed], dim=1, keepdim=True)).mean(dim=0)
    expected = {PRODUCT + schema.FIRST_ITEM_INDEX + j: float(torch.log(p)) for j, p in enumerate(probs)}
    assert lists(out) == {"known": best(expected, exclude=[1004], k=K)}
    scores = out.set_index(schema.ITEM_ID)[schema.SCORE]
    for product in best(expected, exclude=[1004], k=K):
        assert scores[product] == pytest.approx(expected[product], rel=1e-5)


def test_the_exclusion_list_is_never_recommended_to_anyone():
    bundle = tiny_bundle()
    out = recommender(bundle, excluded=[1005, 2000, 1006]).recommend(batch())
    assert not set(out[schema.ITEM_ID]) & {1005, 2000, 1006}
    assert lists(out)["cold_buyer"] == [1004, 1007, 1003]  # category 88 is all excluded or bought
    assert lists(out)["known"] == best(model_scores(bundle, USERS[0][1]), exclude=[1004, 1005, 1006], k=K)


def test_lists_are_always_k_long_when_the_catalogue_allows_and_never_repeat():
    out = recommender().recommend(batch())
    assert out.groupby(schema.USER_ID).size().to_dict() == {u: K for u, _, _ in USERS}
    assert not out.duplicated([schema.USER_ID, schema.ITEM_ID]).any()
    # Six of the eight model items excluded and one bought: the known user gets the one left.
    out = recommender(excluded=[1002, 1003, 1005, 1006, 1007, 1008]).recommend(batch(USERS[:1]))
    assert sorted(out[schema.ITEM_ID]) == [1009] and out[schema.RANK].tolist() == [1]  # 1004 is bought


def test_the_category_cap_holds_for_model_and_fallback_lists():
    bundle = tiny_bundle()
    out = recommender(bundle, category_cap=1).recommend(batch())
    category = {**CATEGORY, 1009: None}
    for user, items in lists(out).items():
        cats = [category[p] for p in items if category[p] is not None]
        assert len(cats) == len(set(cats)), (user, items)
        assert len(items) == K
    assert lists(out)["cold_cat"] == [1007, 2000, 1004]  # one of 99, then the best of 88 and 77
    assert lists(out)["cold_buyer"] == [1005, 1004, 1007]
    # The model's list is the greedy walk down its scores, one item per category (1009 has none).
    scores = model_scores(bundle, USERS[0][1])
    taken, used = [], set()
    for product in best(scores, exclude=[1004]):
        if category[product] is None or category[product] not in used:
            taken.append(product)
            used.add(category[product])
    assert lists(out)["known"] == taken[:K]


def test_exploration_marks_picks_from_the_least_exposed_items_and_is_reproducible():
    rec = recommender(explore_share=1.0, explore_pool_share=0.5)
    # The model's catalogue by recent users: 1006 0, 1009 0 (no events), 1002 1, 1008 2 | 1003 ...
    assert sorted(rec.plan.model_items.product_ids[rec.plan.explore_pool]) == [1002, 1006, 1008, 1009]
    out = rec.recommend(batch())
    explored = out[out[schema.SOURCE] == "explore"]
    assert set(explored[schema.USER_ID]) == {"known"}  # cold-start users are not explored
    assert set(explored[schema.ITEM_ID]) <= {1002, 1006, 1008, 1009} and len(explored) >= 1
    known = out[out[schema.USER_ID] == "known"]
    assert len(known) == K and not known[schema.ITEM_ID].duplicated().any() and 1004 not in set(known[schema.ITEM_ID])
    pd.testing.assert_frame_equal(out, rec.recommend(batch()))
    # Cold-start lists are deterministic; the explored user's are not (each of its 3 slots is
    # a pick from a pool of 4, or the model's when every draw is taken).
    assert (out[out[schema.SOURCE] == "fallback"][schema.PROPENSITY] == 1.0).all()
    assert ((known[schema.PROPENSITY] > 0) & (known[schema.PROPENSITY] < 1)).all()
    none = recommender(explore_share=0.0).recommend(batch())
    assert "explore" not in set(none[schema.SOURCE])
    assert (none[schema.PROPENSITY] == 1.0).all()


def test_the_explore_share_is_the_share_of_model_positions_explored():
    rec = recommender(explore_share=0.25, explore_pool_share=1.0)
    out = rec.recommend(many_known())
    share = (out[schema.SOURCE] == "explore").mean()
    # 1200 positions, each explored with probability 1/4 (standard error 0.0125); a pick that
    # repeats the model's own choice for the position still counts as explored.
    assert 0.2 < share < 0.3


def test_histories_are_read_with_the_models_vocabulary():
    bundle = tiny_bundle()
    # A later featurize run numbered the items differently: its index 2 is product 1003, its
    # index 3 product 1002, and its index 4 a product the model never saw.
    feature_vocab = pd.DataFrame({schema.ITEM_IDX: [2, 3, 4], schema.PRODUCT_ID: [1003, 1002, 5555]})
    remap = vocab_remap(feature_vocab, bundle.item_vocab)
    assert remap.tolist() == [0, 1, 3, 2, 1]
    frame = pd.concat([batch(USERS[:1])] * 2, ignore_index=True)  # "known"'s purchases and category
    frame[schema.USER_ID] = ["swapped", "unknown_only"]
    frame[schema.HIST_ITEMS] = [[0, 0, 3, 2], [0, 0, 4, 4]]
    out = recommender(bundle, feature_vocab=feature_vocab).recommend(frame)
    # "swapped" has the history [1002, 1003]: the same list as "known" under the model's vocabulary.
    assert lists(out)["swapped"] == best(model_scores(bundle, [0, 0, 2, 3]), exclude=[1004], k=K)
    assert set(out[out[schema.USER_ID] == "unknown_only"][schema.SOURCE]) == {"fallback"}


def test_item_space_lookup_and_category_codes():
    space = ItemSpace(np.array([30, 10, 20]), np.zeros(3, np.int64))
    assert space.index_of(np.array([10, 20, 30, 40, 5])).tolist() == [1, 2, 0, -1, -1]
    present = np.array([True, False, True, True])
    assert category_codes(np.array([88, 0, 77, 66]), present, np.array([77, 88])).tolist() == [1, -1, 0, -1]
    # Real category ids lie above 2^53, where neighbours share a float64: kept exact.
    big = 2053013552000000007
    assert category_codes(np.array([big, big + 1]), np.array([True, True]), np.array([big + 1])).tolist() == [-1, 0]
    users = UserBatch(pa.record_batch([pa.array([big, None], pa.int64())], names=["c"]))
    values, valid = users.nullable_ints("c")
    assert values.tolist() == [big, 0] and valid.tolist() == [True, False]


POOL = [1002, 1006, 1008, 1009]  # the exploration pool at explore_pool_share 0.5 (see above)
# Logged feedback: 1009 clicked on 30% of 1000 exposures, 1002 on 0.5%; 1006 and 1008 never shown.
FEEDBACK = pd.DataFrame({schema.PRODUCT_ID: [1009, 1002, 5555], "exposures": [1000, 1000, 50], "clicks": [300, 5, 50]})


@pytest.mark.timeout(120)
def test_thompson_sampling_explores_the_items_clicked_most_per_exposure():
    # 20 active users, prior strength 10: prior means (recent + 1) / 22 -> 1002 2/22, 1006 1/22,
    # 1008 3/22, 1009 1/22. With the feedback 1009's posterior is Beta(300.5, 709.5) (mean
    # 0.30), 1002's Beta(5.9, 1004.1) (0.006): 1009 is the best draw about 90% of the time
    # (the draw beating it comes from 1008's or 1006's wide priors), 1002 almost never.
    settings = dict(explore_policy="thompson", explore_share=1.0, active_users=20, block_size=200)
    informed = recommender(feedback=FEEDBACK, **settings).recommend(many_known())
    first = informed[informed[schema.RANK] == 1]
    assert set(informed[schema.ITEM_ID]) <= set(POOL) and (informed[schema.SOURCE] == "explore").all()
    assert (first[schema.ITEM_ID] == 1009).mean() > 0.8 and (first[schema.ITEM_ID] == 1002).mean() < 0.03
    # Priors only: 1009 (no recent users) is rarely the best draw; 1008 (most recent users) leads.
    prior = recommender(**settings).recommend(many_known())
    prior_first = prior[prior[schema.RANK] == 1][schema.ITEM_ID].value_counts(normalize=True)
    assert prior_first.get(1009, 0) < 0.25 and prior_first.idxmax() == 1008
    # Propensities estimate what was served: the mean estimate of "1009 first" is its share.
    top = first[first[schema.ITEM_ID] == 1009][schema.PROPENSITY]
    assert top.mean() == pytest.approx((first[schema.ITEM_ID] == 1009).mean(), abs=0.05)
    assert ((informed[schema.PROPENSITY] > 0) & (informed[schema.PROPENSITY] <= 1)).all()
    again = recommender(feedback=FEEDBACK, **settings).recommend(many_known(20))
    pd.testing.assert_frame_equal(again, informed[informed[schema.USER_ID].isin(again[schema.USER_ID])].reset_index(drop=True))


@pytest.mark.timeout(120)
def test_boost_lifts_the_pool_into_the_list_deterministically():
    bundle = tiny_bundle()
    scores = model_scores(bundle, USERS[0][1])
    out = recommender(bundle, explore_policy="boost", boost_bonus=100.0).recommend(batch(USERS[:1]))
    # A bonus larger than any score gap: the pool's best items by the model's own scores.
    assert lists(out) == {"known": best({p: scores[p] for p in POOL}, k=K)}
    assert set(out[schema.SOURCE]) == {"model"} and (out[schema.PROPENSITY] == 1.0).all()
    assert out[schema.SCORE].tolist() == pytest.approx([scores[p] for p in lists(out)["known"]], rel=1e-5)
    # With exploration slots as well, the lists are random: propensities below 1 appear.
    mixed = recommender(bundle, explore_policy="boost", boost_bonus=100.0, explore_share=0.5,
                        block_size=50).recommend(many_known(50))
    assert set(mixed[schema.ITEM_ID]) <= set(POOL) | set(scores)
    assert (mixed[schema.PROPENSITY] < 1).any() and (mixed[schema.PROPENSITY] > 0).all()


def test_a_served_baseline_scores_with_its_own_ranker_through_the_same_plan():
    import pickle

    from recsys_spark.models.bundle import BaselineBundle
    from recsys_spark.scoring.recommender import RankerEncoder
    from recsys_spark.scoring.score import item_vectors_of

    # EASE weights over items 2..5 (row: a history item, column: a scored item): 2 -> 3 weighs 3,
    # 3 -> 2 weighs 2, 3 -> 4 weighs 1, 4 -> 5 weighs 4. "known" had 1002 and 1003 (its history)
    # and 1004 before them (in its seen items only): 1005 scores 4, 1003 3, 1002 2, and 1004 1
    # but "known" bought it; items 6..9 are no EASE items and score 0.
    weights = np.zeros((4, 4), dtype=np.float32)
    weights[0, 1], weights[1, 0], weights[1, 2], weights[2, 3] = 3.0, 2.0, 1.0, 4.0
    vocab = tiny_bundle().item_vocab
    baseline = BaselineBundle("ease", {"lambda": 1.0, "decay": 1.0}, {"items": np.arange(2, 6), "weights": weights},
                              vocab, {"num_items": NUM_ITEMS, "max_seq_len": 4}, {})
    # The histories are written with another numbering: feature index 2 is product 1003, 3 is 1002,
    # 4 is 1005 and 5 is 1004 (read as 1005, "known" would get 1003, 1002, then items scoring 0).
    feature_vocab = pd.DataFrame({schema.ITEM_IDX: [3, 2, 5, 4, 6, 7, 8, 9], schema.PRODUCT_ID: vocab[schema.PRODUCT_ID]})
    frame = batch(USERS[:2])  # "known" (bought 1004) and "cold_cat" (no item the baseline knows)
    frame.at[0, schema.HIST_ITEMS] = [0, 0, 3, 2]  # 1002 then 1003
    frame.at[0, schema.SEEN_ITEMS] = [2, 3, 5]  # 1003, 1002, 1004
    sc = ScoreConfig(top_k=K, block_size=2, explore_share=0.0, run_date="2019-11-01")
    plan = build_plan(baseline, item_vectors_of(baseline), feature_vocab, stats_frame(), np.zeros(0, np.int64), sc)
    assert isinstance(plan.encoder, RankerEncoder) and plan.model_items.vectors.shape == (8, 0)

    out = Recommender(pickle.loads(pickle.dumps(plan))).recommend(frame)  # as a task gets it: broadcast
    assert lists(out) == {"known": [1005, 1003, 1002], "cold_cat": [1007, 1008, 3000]}
    known = out[out[schema.USER_ID] == "known"]
    assert known[schema.SCORE].tolist() == [4.0, 3.0, 2.0] and set(known[schema.SOURCE]) == {"model"}
    assert set(out[out[schema.USER_ID] == "cold_cat"][schema.SOURCE]) == {"fallback"}
