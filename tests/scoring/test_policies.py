"""Exploration policies and their propensities, on catalogues small enough to work out the
exact probability of every list by hand (no Spark, no model: user vectors are given)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_spark import schema
from recsys_spark.config import ScoreConfig
from recsys_spark.errors import ConfigError
from recsys_spark.schema import EXCLUDE_PRODUCTS, USER_CATEGORY, USER_KEY, USER_VECTOR
from recsys_spark.scoring import policies, topk
from recsys_spark.scoring.recommender import ItemSpace, ListRules, Recommender, ScoringPlan, VectorEncoder

pytestmark = pytest.mark.unit

# Items 0..3 are products 100..103. Every user's vector is [1], so an item's score is its value:
# the greedy list is g1 (5), g2 (4); the pool holds A (1) and B (0), which the greedy list of 2
# never reaches.
SCORES = [5.0, 4.0, 1.0, 0.0]
G1, G2, A, B = 100, 101, 102, 103
POOL = [2, 3]


def vector_recommender(k: int, share: float, samples: int = 200, block_size: int = 64, cap: int = 0,
                       categories=None, policy: policies.Policy | None = None, scores=SCORES, pool=POOL) -> Recommender:
    n = len(scores)
    items = ItemSpace(np.arange(n, dtype=np.int64) + 100,
                      np.asarray(categories if categories is not None else [-1] * n, dtype=np.int64),
                      vectors=np.asarray(scores, dtype=np.float32)[:, None])
    fallback = ItemSpace(np.zeros(0, np.int64), np.zeros(0, np.int64), popularity=np.zeros(0, np.float32))
    rules = ListRules(k, block_size, cap, share, samples)
    return Recommender(ScoringPlan(VectorEncoder(), items, fallback, np.asarray(pool, dtype=np.int64),
                                   np.zeros(0, np.int64), rules, policy or policies.Policy()))


def users(n: int, seed: int = 0, excluded=()) -> pd.DataFrame:
    keys = np.random.default_rng(seed).integers(-(2**62), 2**62, n)
    return pd.DataFrame({
        schema.USER_ID: [f"u{i}" for i in range(n)],
        USER_VECTOR: [[1.0]] * n,
        EXCLUDE_PRODUCTS: [np.asarray(excluded, dtype=np.int64)] * n,
        USER_CATEGORY: pd.array([None] * n, dtype="Int64"),
        USER_KEY: keys,
    })


def mean_bound(p: float, samples: int, users: int) -> float:
    """5 standard errors of the mean of ``users`` estimates, plus the bias (at most 1 / samples)."""
    return 5 * np.sqrt(p * (1 - p) / (samples - 1) / users) + 1 / samples


def mean_propensity(out: pd.DataFrame) -> dict[tuple[int, int], float]:
    """{(slot, item): the mean estimate over the users served that item in that slot}."""
    return out.groupby([schema.SLOT, schema.ITEM_ID])[schema.PROPENSITY].mean().to_dict()


def monte_carlo_bound(p: float, samples: int) -> float:
    """4 standard errors of an estimate from ``samples`` draws, one of them the served one
    (bias at most 1 / samples)."""
    return 4 * np.sqrt(p * (1 - p) / (samples - 1)) + 1 / samples


@pytest.mark.timeout(60)
def test_without_exploration_slots_every_propensity_is_exactly_one():
    out = vector_recommender(k=3, share=0.0).recommend(users(5))
    assert out[schema.PROPENSITY].tolist() == [1.0] * 15
    assert out[schema.ITEM_ID].tolist() == [G1, G2, A] * 5
    assert out[schema.SLOT].tolist() == [0, 1, 2] * 5 and (out[schema.RANK] == out[schema.SLOT] + 1).all()
    # A boost without exploration slots is deterministic too: the pool's A and B go first.
    boost = policies.Policy(policies.BOOST, bonus=policies.boost_bonus(4, np.array(POOL), 10.0))
    out = vector_recommender(k=3, share=0.0, policy=boost).recommend(users(5))
    assert out[schema.ITEM_ID].tolist() == [A, B, G1] * 5
    assert out[schema.SCORE].tolist() == [1.0, 0.0, 5.0] * 5  # the model's scores, not the boosted ones
    assert out[schema.PROPENSITY].tolist() == [1.0] * 15


@pytest.mark.timeout(60)
def test_one_slot_and_a_pool_of_two_at_share_one_half():
    # By hand: the slot explores with probability 1/2 and then picks A or B with 1/2 each;
    # otherwise it is g1. P(g1) = 1/2, P(A) = P(B) = 1/4.
    exact = {G1: 0.5, A: 0.25, B: 0.25}
    out = vector_recommender(k=1, share=0.5).recommend(users(200))
    assert set(out[schema.ITEM_ID]) == {G1, A, B}
    for item, p in exact.items():
        served = out[out[schema.ITEM_ID] == item]
        # Each user's estimate (200 draws, the served one included) within 4 standard errors.
        assert (abs(served[schema.PROPENSITY] - p) <= monte_carlo_bound(p, 200)).all(), item
        # The users' estimates (about 200 x 200 draws): their mean within 5 standard errors.
        assert served[schema.PROPENSITY].mean() == pytest.approx(p, abs=mean_bound(p, 200, len(served)))
        # What the users were served: the same distribution (standard error 0.035).
        assert len(served) / 200 == pytest.approx(p, abs=0.11)
    assert set(out[out[schema.SOURCE] == "explore"][schema.ITEM_ID]) == {A, B}


@pytest.mark.timeout(60)
def test_two_slots_follow_the_hand_computed_distribution_and_each_slot_sums_to_one():
    # K = 2, share 1/2, pool {A, B}; picks go to the first exploration slots:
    #   no exploration slot (1/4): [g1, g2]
    #   slot 0 only (1/4): [pick, g1]; slot 1 only (1/4): [g1, pick]   (pick: A or B, 1/2 each)
    #   both (1/4): the first pick, then the first different one among the next 3 draws
    #     (7/8): [A, B] or [B, A]; all 4 draws alike (1/8): [pick, g1]
    # Slot 0: g1 1/4 + 1/4 = 1/2; A = B = (1/4 + 1/4) / 2 = 1/4.
    # Slot 1: g2 1/4; g1 1/4 + 1/4 * 1/8 = 9/32; A = B = 1/4 * 1/2 + 1/4 * 7/8 * 1/2 = 15/64.
    exact = {(0, G1): 1 / 2, (0, A): 1 / 4, (0, B): 1 / 4,
             (1, G2): 1 / 4, (1, G1): 9 / 32, (1, A): 15 / 64, (1, B): 15 / 64}
    samples = 400
    out = vector_recommender(k=2, share=0.5, samples=samples, block_size=16).recommend(users(150, seed=1))
    estimates = mean_propensity(out)
    assert set(estimates) == set(exact)  # nothing else is ever served
    for placement, p in exact.items():
        rows = out[(out[schema.SLOT] == placement[0]) & (out[schema.ITEM_ID] == placement[1])]
        assert estimates[placement] == pytest.approx(p, abs=mean_bound(p, samples, len(rows))), placement
        assert (abs(rows[schema.PROPENSITY] - p) <= monte_carlo_bound(p, samples)).all(), placement
    # The estimates are those of one distribution per slot: over the items a slot can hold,
    # they sum to at most 1 (here exactly 1: a list of 2 is always full).
    for slot in (0, 1):
        total = sum(v for (s, _), v in estimates.items() if s == slot)
        assert total <= 1.0 + 0.03 and total == pytest.approx(1.0, abs=0.03)


@pytest.mark.timeout(60)
def test_an_excluded_pool_item_is_never_picked_and_its_slot_goes_back_to_the_model():
    # The users excluded B. An exploration slot (1/2) tries 2 draws and takes the first A (3/4);
    # when both land on B it has no pick and the model's g1 fills it. P(A) = 1/2 * 3/4 = 3/8,
    # P(g1) = 5/8.
    out = vector_recommender(k=1, share=0.5).recommend(users(200, excluded=[B]))
    assert set(out[schema.ITEM_ID]) == {G1, A}
    for item, p in ((G1, 5 / 8), (A, 3 / 8)):
        served = out[out[schema.ITEM_ID] == item]
        assert served[schema.PROPENSITY].mean() == pytest.approx(p, abs=mean_bound(p, 200, len(served)))


@pytest.mark.timeout(60)
def test_lists_and_propensities_are_a_function_of_the_user_key_only():
    rec = vector_recommender(k=2, share=0.5, block_size=7)
    first = rec.recommend(users(20, seed=3))
    pd.testing.assert_frame_equal(first, rec.recommend(users(20, seed=3)))
    # Other blocks (and so other tasks) give the same lists: the draws follow the key.
    pd.testing.assert_frame_equal(first, vector_recommender(k=2, share=0.5, block_size=3).recommend(users(20, seed=3)))
    alone = vector_recommender(k=2, share=0.5).recommend(users(20, seed=3).iloc[[5]])
    pd.testing.assert_frame_equal(alone, first[first[schema.USER_ID] == "u5"].reset_index(drop=True))
    # Other keys (another run date or seed hashes into another key): other draws.
    other = rec.recommend(users(20, seed=4))
    assert not np.array_equal(first[schema.PROPENSITY].to_numpy(), other[schema.PROPENSITY].to_numpy())


@pytest.mark.timeout(60)
def test_the_served_list_is_the_one_rank_builds_from_the_days_draws():
    # policies.serve builds its lists from each user's top items; topk.rank from the whole
    # catalogue: with a cap, exclusions and exploration they must agree on the served list.
    rng = np.random.default_rng(7)
    for cap, share in ((0, 0.3), (1, 0.6), (2, 0.9)):
        num_users, num_items, k = 40, 30, 5
        scores = torch.from_numpy(rng.normal(size=(num_users, num_items)).astype(np.float32))
        scores[torch.from_numpy(rng.random((num_users, num_items)) < 0.3)] = float("-inf")
        categories = rng.integers(-1, 3, num_items)
        pool = rng.choice(num_items, 12, replace=False).astype(np.int64)
        keys = rng.integers(-(2**62), 2**62, num_users)
        draws = topk.uniforms(keys, 3 * k)
        slots = draws[:, :k] < share
        expected = topk.rank(scores.clone(), k, categories, cap, topk.draw_explore(scores, pool, slots, draws[:, k:]),
                             slots)
        rules = ListRules(k, 8, cap, share, 20)
        served, propensity = policies.serve(scores.clone(), keys, pool, categories, rules, policies.Policy())
        assert np.array_equal(served.items, expected.items) and np.array_equal(served.explore, expected.explore)
        assert np.allclose(served.scores, expected.scores)
        filled = served.items >= 0
        assert ((propensity[filled] > 0) & (propensity[filled] <= 1)).all()
        # The served list is one of the counted samples, so a counted propensity is >= 1/M; an
        # exploration pick of an exact list is its exact part only, and may well be below 1/M, as
        # may any item of a user whose model part is exact too (one user at cap 0).
        _, exact = policies.explore_probability(scores, pool, rules, policies.Policy())
        greedy = policies.greedy_users(scores, topk.best_items(scores, k, cap), pool, exact, k)
        assert greedy.sum() == (cap == 0)
        counted = filled & ~(served.explore & exact[:, None]) & ~greedy[:, None]
        assert (propensity[counted] >= 1 / 20).all()
        if cap == 0:  # 0.3 / 12 valid pool items, or fewer, at slot 0: below 1/M
            assert exact.all() and (propensity[filled & ~counted] < 1 / 20).any()
        else:  # a cap below K: counted throughout
            assert not exact.any()


@pytest.mark.timeout(60)
def test_exact_exploration_probabilities_by_hand():
    # K = 3 (T = 6 tries), e = 1/2, pool {3, 4, 5} of 6 items; C(s, j) e^j (1 - e)^(s - j) = C(s, j) / 2^s.
    # User 0 may get the whole pool (a = 3): P(D >= 1) = 1, P(D >= 2) = 1 - 3 (1/3)^6 = 242/243,
    #   P(D >= 3) = (3^6 - 3 * 2^6 + 3) / 3^6 = 20/27 (all three tried);
    #   q(0) = 1/3 * 1/2 = 1/6; q(1) = 1/3 (1/4 + 1/4 * 242/243) = 485/2916;
    #   q(2) = 1/3 (1/8 + 2/8 * 242/243 + 1/8 * 20/27) = 907/5832.
    # User 1 excluded item 5 (a = 2; a try is valid with 2/3): P(D >= 1) = 1 - (1/3)^6 = 728/729,
    #   P(D >= 2) = 1 - 2 (2/3)^6 + (1/3)^6 = 602/729, P(D >= 3) = 0;
    #   q(0) = 1/2 * 1/2 * 728/729 = 182/729; q(1) = 1/2 (1/4 * 728/729 + 1/4 * 602/729) = 665/2916;
    #   q(2) = 1/2 (1/8 * 728/729 + 2/8 * 602/729) = 161/972.
    # User 2 may get 2 items in all (its list cannot fill): not exact. User 3 excluded the
    # whole pool (a = 0): exact, and no item is ever explored.
    inf = float("-inf")
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0, inf],
                           [5.0, inf, inf, 2.0, inf, inf], [5.0, 4.0, 3.0, inf, inf, inf]])
    pool = np.array([3, 4, 5])
    rules = ListRules(3, 8, 0, 0.5, 20)
    tails = policies.tails_of(policies.pick_counts(np.array([3, 2]), 3, 3, 6))
    np.testing.assert_allclose(tails, [[1, 242 / 243, 20 / 27], [728 / 729, 602 / 729, 0]], rtol=1e-12)
    q, exact = policies.explore_probability(scores, pool, rules, policies.Policy())
    np.testing.assert_allclose(q[:2], [[1 / 6, 485 / 2916, 907 / 5832], [182 / 729, 665 / 2916, 161 / 972]],
                               rtol=1e-12)
    assert exact.tolist() == [True, True, False, True] and q[3].tolist() == [0.0, 0.0, 0.0]
    # Each slot's exploration chances sum to e P(exploring slot s finds a pick): a q(s) <= e.
    assert (q[0] * 3 <= 0.5).all() and q[0, 0] * 3 == pytest.approx(0.5)
    items = np.array([[3, 5, 0], [3, 5, 0], [3, 0, -1], [3, 4, 1]])
    assert policies.pool_members(scores, pool, items).tolist() == [
        [True, True, False], [True, False, False], [True, False, False], [False, False, False]]
    # A cap that may drop picks, or Thompson's picks: no closed form. A cap of K never binds.
    for cap, policy in ((1, policies.Policy()), (2, policies.Policy()),
                        (0, policies.Policy(policies.THOMPSON, draws=np.array([[3, 4, 5]])))):
        assert not policies.explore_probability(scores, pool, ListRules(3, 8, cap, 0.5, 20), policy)[1].any()
    capped_q, capped_exact = policies.explore_probability(scores, pool, ListRules(3, 8, 3, 0.5, 20), policies.Policy())
    assert np.array_equal(capped_q, q) and np.array_equal(capped_exact, exact)


@pytest.mark.timeout(120)
def test_exact_exploration_probabilities_match_sampled_lists_and_serve_matches_a_large_count():
    rng = np.random.default_rng(11)
    # A pool of 6 (5 for user 1) and e = 0.6: a list often explores 4 or 5 slots, and its 10
    # tries often find fewer distinct items, so the picks' de-duplication weighs in.
    num_users, num_items, k, share, samples = 3, 30, 5, 0.6, 20000
    scores = torch.from_numpy(rng.normal(size=(num_users, num_items)).astype(np.float32))
    scores[:, :2] += 3.0  # pool items 0 and 1 lead the greedy lists: they land as model items too
    scores[1, 4] = float("-inf")  # user 1 may not get pool item 4
    pool = np.arange(6, dtype=np.int64)
    categories = np.full(num_items, -1, dtype=np.int64)
    keys = rng.integers(-(2**62), 2**62, num_users)
    rules = ListRules(k, 64, 0, share, samples)
    q, exact = policies.explore_probability(scores, pool, rules, policies.Policy())
    assert exact.all()
    member = policies.pool_members(scores, pool, np.tile(np.arange(num_items), (num_users, 1)))
    assert member.sum(axis=1).tolist() == [6, 5, 6]
    lists = policies.sample_lists(scores, topk.best_items(scores, k), keys, pool, categories, rules,
                                  policies.Policy(), 0, samples)
    items = lists.items.reshape(num_users, samples, k)
    explored = lists.explore.reshape(num_users, samples, k)
    for item in range(num_items):
        found = ((items == item) & explored).mean(axis=1)  # [B, K]
        expected = np.where(member[:, item, None], q, 0.0)
        # 5 standard errors of a share of 20000 lists; never explored where not a member.
        assert (np.abs(found - expected) <= 5 * np.sqrt(expected * (1 - expected) / samples)).all(), item
    assert ((items == 4) & explored)[1].sum() == 0 and ((items == 0) & ~explored).any()

    # serve: the exact exploration part plus 1000 counted lists for the model part, against
    # the share of all 20000 lists (the served list is sample 0 of both).
    small = ListRules(k, 64, 0, share, 1000)
    served, propensity = policies.serve(scores.clone(), keys, pool, categories, small, policies.Policy())
    assert np.array_equal(served.items, items[:, 0]) and served.explore.any()
    full = (items == served.items[:, None, :]).mean(axis=1)
    spread = np.sqrt(full * (1 - full))
    bound = 4 * spread / np.sqrt(999) + 1 / 1000 + 4 * spread / np.sqrt(samples) + 1e-3
    assert (np.abs(propensity - full) <= bound).all()


@pytest.mark.timeout(60)
def test_thompson_a_cap_below_k_and_a_list_that_cannot_fill_keep_the_counted_propensities():
    rng = np.random.default_rng(5)
    num_users, num_items, k, samples = 6, 20, 4, 30
    scores = torch.from_numpy(rng.normal(size=(num_users, num_items)).astype(np.float32))
    scores[5, 3:] = float("-inf")  # user 5 may get 3 items: its list of 4 cannot fill
    pool = np.arange(8, dtype=np.int64)
    categories = rng.integers(0, 3, num_items)
    keys = rng.integers(-(2**62), 2**62, num_users)
    thompson = policies.Policy(policies.THOMPSON, draws=rng.permuted(np.tile(pool, (50, 1)), axis=1)[:, : 2 * k])
    for cap, policy in ((1, policies.Policy()), (3, policies.Policy()), (0, thompson), (0, policies.Policy()),
                        (k, policies.Policy())):
        rules = ListRules(k, 8, cap, 0.5, samples)
        served, propensity = policies.serve(scores.clone(), keys, pool, categories, rules, policy)
        hits = sum(policies.placement_hits(lists, served.items)[0] for lists in policies.sample_chunks(
            scores, topk.best_items(scores, k, cap), keys, pool, categories, rules, policy))
        counted = np.where(served.items >= 0, hits / samples, 0.0)
        _, exact = policies.explore_probability(scores, pool, rules, policy)
        closed_form = policy.draws is None and cap in (0, k)
        assert exact.tolist() == [closed_form] * 5 + [False], (cap, policy.name)
        filled = served.items >= 0
        assert np.array_equal(propensity[~exact], counted[~exact]) and (propensity[~exact] >= 1 / samples)[
            filled[~exact]].all(), (cap, policy.name)
        assert filled[5].sum() == 3 and served.explore[~exact].any()


@pytest.mark.timeout(60)
def test_exact_model_placements_by_hand():
    # K = 3 (6 tries), e = 1/2, items 0..2 lead (5, 4, 3); the pool {3, 4} (2, 1) never reaches the
    # top 3. D (distinct pool items among 6 tries of 2): P(D = 1) = 2 (1/2)^6 = 1/32, P(D = 2) = 31/32.
    # E_s ~ Binomial(s, 1/2); greedy rank j at slot s needs s not a pick slot and m = s - j pick
    # slots before it: P = sum_d P(D = d) [1/2 P(min(E_s, d) = m) + 1/2 P(E_s >= d) 1[d = m]]:
    #   (0, 0): 1/2;  (1, 1): d = 1: 1/2 * 1/2, d = 2: 1/2 * 1/2 -> 1/4;
    #   (0, 1): d = 1: 1/2 * 1/2 + 1/2 * 1/2 = 1/2, d = 2: 1/2 * 1/2 -> 1/32 * 1/2 + 31/32 * 1/4 = 33/128;
    #   (2, 2): 1/2 P(E_2 = 0) = 1/8 for both d;
    #   (1, 2): d = 1: 1/2 * 3/4 + 1/2 * 3/4 = 3/4, d = 2: 1/2 P(E_2 = 1) = 1/4 -> 3/128 + 31/128 = 17/64;
    #   (0, 2): d = 1: 0 (m > d), d = 2: 1/2 * 1/4 + 1/2 * 1/4 = 1/4 -> 31/128.
    # A pick at slot 2: 1/2 (1/32 * 1/4 + 31/32 * 3/4) = 47/128 = 1 - (1/8 + 17/64 + 31/128).
    counts = policies.pick_counts(np.array([2]), 2, 3, 6)
    np.testing.assert_allclose(counts, [[0, 1 / 32, 31 / 32, 0]], rtol=1e-12)
    placed = policies.model_placement(counts, 0.5, 3)[0]
    np.testing.assert_allclose(placed, [[1 / 2, 33 / 128, 31 / 128], [0, 1 / 4, 17 / 64], [0, 0, 1 / 8]],
                               rtol=1e-12, atol=1e-15)
    # Through placement_probability: the counted hits play no part for such a user. q(0) of a
    # pool item = 1/2 * 1/2 (P(D >= 1) = 1, a = 2).
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5]])
    pool = np.array([3, 4])
    rules = ListRules(3, 8, 0, 0.5, 20)
    top = topk.best_items(scores, 3)
    for wanted, expected in (([0, 0, 0], [1 / 2, 33 / 128, 31 / 128]), ([3, 1, 2], [1 / 4, 1 / 4, 1 / 8]),
                             ([5, 2, -1], [0, 0, 0])):
        found = policies.placement_probability(scores, top, pool, rules, policies.Policy(), np.array([wanted]),
                                               np.full((1, 3), 7.0), np.full((1, 3), 3.0))
        np.testing.assert_allclose(found, [expected], rtol=1e-12, atol=1e-15)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("share", [0.3, 0.6])
def test_exact_model_placements_match_sampled_lists_and_serve_writes_them(share):
    rng = np.random.default_rng(13)
    num_users, num_items, k, samples = 3, 30, 5, 20000
    scores = torch.from_numpy(rng.normal(size=(num_users, num_items)).astype(np.float32))
    pool = np.arange(6, dtype=np.int64)
    scores[:, :6] -= 10.0  # the pool scores below every other item: never among the 5 best
    scores[1, 4] = float("-inf")  # user 1 may get 5 pool items
    scores[2, 20:] = float("-inf")  # user 2's 14 items still fill its list
    categories = np.full(num_items, -1, dtype=np.int64)
    keys = rng.integers(-(2**62), 2**62, num_users)
    rules = ListRules(k, 64, 0, share, samples)
    top = topk.best_items(scores, k)
    q, exact = policies.explore_probability(scores, pool, rules, policies.Policy())
    assert policies.greedy_users(scores, top, pool, exact, k).all()
    valid = np.array([6, 5, 6])
    placed = policies.model_placement(policies.pick_counts(valid, 6, k, 2 * k), share, k)  # [B, rank, slot]
    # Each slot holds one item: a greedy rank or one of the a valid pool items.
    np.testing.assert_allclose(placed.sum(axis=1) + valid[:, None] * q, 1.0, rtol=1e-12)
    lists = policies.sample_lists(scores, top, keys, pool, categories, rules, policies.Policy(), 0, samples)
    items = lists.items.reshape(num_users, samples, k)
    model = ~lists.explore.reshape(num_users, samples, k)
    for rank in range(k):
        found = ((items == top.items[:, rank, None, None]) & model).mean(axis=1)  # [B, slot]
        expected = placed[:, rank]
        # 5 standard errors of a share of 20000 lists; 0 exactly where impossible (slot < rank).
        assert (np.abs(found - expected) <= 5 * np.sqrt(expected * (1 - expected) / samples)).all(), rank
    # Rank 4 at slot 4 needs no pick slot among 0..4; users 0 and 2 always find a pick: (1 - e)^5.
    np.testing.assert_allclose(placed[[0, 2], 4, 4], (1 - share) ** 5, rtol=1e-12)
    # serve: the exact total, no counted term (M = 200); sample 0 is the served list.
    small = ListRules(k, 64, 0, share, 200)
    served, propensity = policies.serve(scores.clone(), keys, pool, categories, small, policies.Policy())
    assert np.array_equal(served.items, items[:, 0]) and served.explore.any()
    rank_of = served.items[:, None, :] == top.items[:, :k, None]  # [B, rank, slot]
    member = policies.pool_members(scores, pool, served.items)
    np.testing.assert_allclose(propensity, (rank_of * placed).sum(axis=1) + member * q, rtol=1e-12)
    assert (propensity > 0).all()


@pytest.mark.timeout(60)
def test_a_pool_item_among_the_best_thompson_and_a_binding_cap_keep_the_counted_model_part():
    rng = np.random.default_rng(17)
    num_users, num_items, k, samples = 6, 20, 4, 30
    scores = torch.from_numpy(rng.normal(size=(num_users, num_items)).astype(np.float32))
    pool = np.arange(8, dtype=np.int64)
    scores[:, :8] -= 10.0
    scores[:3, 2] += 20.0  # users 0..2 have pool item 2 first: a pick may take a model item's place
    scores[1, 5] += 20.0
    categories = rng.integers(0, 3, num_items)
    keys = rng.integers(-(2**62), 2**62, num_users)
    thompson = policies.Policy(policies.THOMPSON, draws=rng.permuted(np.tile(pool, (50, 1)), axis=1)[:, : 2 * k])
    for cap, policy in ((0, policies.Policy()), (k, policies.Policy()), (1, policies.Policy()),
                        (3, policies.Policy()), (0, thompson)):
        rules = ListRules(k, 8, cap, 0.5, samples)
        served, propensity = policies.serve(scores.clone(), keys, pool, categories, rules, policy)
        top = topk.best_items(scores, k, cap)
        hits, model_hits = np.zeros((num_users, k)), np.zeros((num_users, k))
        for lists in policies.sample_chunks(scores, top, keys, pool, categories, rules, policy):
            chunk_hits, chunk_model_hits = policies.placement_hits(lists, served.items)
            hits += chunk_hits
            model_hits += chunk_model_hits
        q, exact = policies.explore_probability(scores, pool, rules, policy)
        greedy = policies.greedy_users(scores, top, pool, exact, k)
        closed_form = policy.draws is None and cap in (0, k)
        assert exact.tolist() == [closed_form] * 6 and greedy.tolist() == [False] * 3 + [closed_form] * 3
        member = policies.pool_members(scores, pool, served.items)
        counted = np.where(exact[:, None], model_hits / samples + q * member, hits / samples)
        counted = np.where(served.items >= 0, counted, 0.0)  # a cap of 1 may leave slots empty
        assert np.array_equal(propensity[~greedy], counted[~greedy]), (cap, policy.name)
        assert (propensity[~greedy & ~exact] >= 1 / samples)[served.items[~greedy & ~exact] >= 0].all() and served.explore[~greedy].any()
        if closed_form:  # the others: exact, whatever the counts
            placed = policies.model_placement(policies.pick_counts(np.full(3, 8), 8, k, 2 * k), 0.5, k)
            rank_of = served.items[greedy][:, None, :] == top.items[greedy][:, :k, None]
            exact_total = (rank_of * placed).sum(axis=1) + member[greedy] * q[greedy]
            np.testing.assert_allclose(propensity[greedy], exact_total, rtol=1e-12)


@pytest.mark.timeout(60)
def test_thompson_posteriors_and_draws_by_hand():
    # Recent users 0 and 2 of 8 active: prior means 1/10 and 3/10; strength 10 -> Beta(1, 9),
    # Beta(3, 7); the first item was shown 10 times and clicked 4: Beta(5, 15).
    alpha, beta = policies.thompson_posterior(np.array([0, 2]), 8, 10.0, np.array([10, 0]), np.array([4, 0]))
    assert alpha.tolist() == pytest.approx([5.0, 3.0]) and beta.tolist() == pytest.approx([15.0, 7.0])
    # Fewer active users than an item's recent users cannot be: the largest count is the floor.
    alpha, beta = policies.thompson_posterior(np.array([0, 2]), 0, 4.0, np.zeros(2), np.zeros(2))
    assert alpha.tolist() == pytest.approx([1.0, 3.0]) and beta.tolist() == pytest.approx([3.0, 1.0])
    pool = np.array([7, 9, 11])
    # An item clicked on almost every exposure beats one never clicked, in (nearly) every draw.
    a, b = policies.thompson_posterior(np.zeros(3), 10, 2.0, np.array([500, 500, 0]), np.array([490, 2, 0]))
    draws = policies.thompson_draws(pool, a, b, 500, 2, 13, "2019-11-01")
    assert draws.shape == (500, 2) and set(np.unique(draws)) <= set(pool.tolist())
    assert (draws[:, 0] == 7).mean() > 0.99 and (draws[:, 0] != draws[:, 1]).all()
    assert np.array_equal(draws, policies.thompson_draws(pool, a, b, 500, 2, 13, "2019-11-01"))
    assert not np.array_equal(draws, policies.thompson_draws(pool, a, b, 500, 2, 13, "2019-11-02"))
    assert policies.thompson_draws(pool, a, b, 3, 10, 13, "2019-11-01").shape == (3, 3)  # at most the pool


@pytest.mark.timeout(60)
def test_policy_version_is_the_model_version_and_a_digest_of_the_list_settings():
    base = policies.policy_version(ScoreConfig(), "3")
    assert base.startswith("3:") and len(base) == len("3:") + 8
    assert policies.policy_version(ScoreConfig(seed=99, block_size=7), "3") == base  # same policy, other draws
    assert policies.policy_version(ScoreConfig(explore_share=0.1), "3") != base
    assert policies.policy_version(ScoreConfig(explore_policy="boost"), "3") != base
    assert policies.policy_version(ScoreConfig(), "4").startswith("4:")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("changes", "key"), [
    ({"explore_policy": "ucb"}, "score.explore_policy"),
    ({"explore_policy": "thompson", "explore_share": 0.0}, "score.explore_policy=thompson"),
    ({"propensity_samples": 5}, "score.propensity_samples"),
    ({"thompson_draws": 0}, "score.thompson_draws"),
    ({"thompson_prior_strength": 0.0}, "score.thompson_prior_strength"),
    ({"feedback_counts_path": "counts.parquet"}, "score.feedback_counts_path"),
    ({"boost_bonus": -1.0}, "score.boost_bonus"),
    ({"explore_policy": "boost", "boost_bonus": 0.0}, "score.boost_bonus"),
])
def test_bad_policy_settings_fail_by_key(changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        ScoreConfig(**changes)
    assert "\n" not in str(error.value)
    # The same settings are fine where they make sense.
    ScoreConfig(explore_policy="thompson", feedback_counts_path="counts.parquet", propensity_samples=10)
