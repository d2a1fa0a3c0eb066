"""The score stage's exploration policies, and the propensity of every item they serve.

A model user's list is the greedy ranking (:func:`topk.rank`: best scores first, at most
``category_cap`` per category) with exploration slots: each position is, independently with
probability ``explore_share``, an exploration slot; the policy's picks from the exploration pool
go to the first of them (left-aligned), the greedy list fills the others.

- "epsilon": a slot's pick is uniform over the pool (3K draws per user: K slot coins, then 2K
  picks tried in order, skipping an item the user may not get or already got).
- "thompson": the picks are the pool items of highest click rate in one draw of their Beta
  posteriors (:func:`thompson_posterior`). The draws are made once per run date
  (``score.thompson_draws`` of them, :func:`thompson_draws`); a user's draw picks one.
- "boost": the pool items' scores get ``score.boost_bonus`` before the greedy ranking (the
  written score stays the model's); exploration slots, when ``explore_share`` > 0, as epsilon.

Propensity: the probability that the policy puts the item in that slot for that user, given
the model's scores and the day's inputs (pool, exclusions, Thompson draws). A policy without
exploration slots is deterministic: 1.0. Otherwise it is the sum of two parts, the item's
chance to land there as an exploration pick and as a model item:

- exploration part, exact (:func:`explore_probability`) for epsilon's slots (epsilon and
  boost) when the cap cannot drop a pick (``category_cap`` 0 or >= K) and the user's list
  always fills (at least K items with a finite score): slot s is the r-th exploration slot with
  probability e C(s, r - 1) e^(r - 1) (1 - e)^(s - r + 1) (e = ``explore_share``), independent of
  the picks, and the r-th pick exists with probability P(D >= r), D the distinct valid items
  among the 2K tries (:func:`pick_counts`, :func:`tails_of`); it is uniform over the user's a valid pool items, so
  q(s) = sum_r e C(s, r - 1) e^(r - 1) (1 - e)^(s - r + 1) P(D >= r) / a for each of them;
- model part, exact too (:func:`model_placement`) for such a user when none of its K best items
  (the greedy order, :func:`topk.best_items`) is a valid pool item (:func:`greedy_users`): a pick
  is then never one of the list's model items, which are the K best in order, filling the slots
  that are not pick slots (the first min(n, D) of the n exploration slots). Greedy rank j lands
  at slot s iff s is not a pick slot and exactly m = s - j of slots 0..s-1 are; with E_s ~
  Binomial(s, e) the exploration slots before s,
  P(j at s) = sum_d P(D = d) [(1 - e) P(min(E_s, d) = m) + e P(E_s >= d) 1[d = m]];
- elsewhere the model part, and the whole of it for Thompson, a cap below K or a list that
  cannot fill (no closed form: de-duplication, exclusions, the cap and the left-alignment), by
  Monte-Carlo: the user's lists are rebuilt under M = ``score.propensity_samples`` draws, sample
  m using the draw streams [3Km, 3K(m + 1)) of :func:`topk.uniforms`; the served list is sample
  0 (today's stream). An estimated part counts the served list, so a served model item (or any
  served item of an estimated list) is never below 1/M (off-policy weights need no zero) and its
  bias, (1 - p) / M, stays below its standard error sqrt(p (1 - p) / (M - 1)) (at most 0.035 at
  M = 200). An exact part needs no such floor (it is > 0 for a served item) and gets none: an
  exploration chance, about e / a, or a model item's chance at a deep slot, about (1 - e)^s,
  is often far below 1/M. :func:`placement_probability` joins the parts, for the score stage
  and the off-policy evaluation alike.

Everything is a pure function of (score.seed, run date, user): re-runs are identical.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from recsys_spark.config import ScoreConfig
from recsys_spark.models.ranking import NEG_INF
from recsys_spark.scoring import topk

EPSILON, THOMPSON, BOOST = ScoreConfig.EXPLORE_POLICIES
# Users x samples whose lists are built at once: bounds a task's memory for the Monte-Carlo
# (about 1 KB per row and list position), whatever score.propensity_samples is.
SAMPLE_ROWS = 1 << 13
# Epsilon's tries per list position: the picks' uniform draws (2K), tried in order.
TRIES_PER_SLOT = 2
# Beta draws made at once by thompson_draws (memory: 8 bytes each).
BETA_CHUNK = 1 << 22
# The score settings that shape a list's distribution, hashed into policy_version.
POLICY_KEYS = ("top_k", "category_cap", "explore_share", "explore_pool_share", "explore_policy", "popular_days",
               "exclude_event_types", "exclude_items_path", "thompson_prior_strength", "thompson_draws",
               "feedback_counts_path", "boost_bonus")


@dataclass
class ListRules:
    """Args:
        k: items per user.
        block_size: users per matrix multiply.
        category_cap: most items of one category per list, 0 = no cap.
        explore_share: probability that a model list's position goes to an exploration pick.
        propensity_samples: Monte-Carlo draws per user of a random list's propensities.
    """

    k: int
    block_size: int
    category_cap: int = 0
    explore_share: float = 0.0
    propensity_samples: int = 200


@dataclass
class Policy:
    """What a task needs of the exploration policy, built on the driver.

    Args:
        name: one of ScoreConfig.EXPLORE_POLICIES.
        bonus: float32 [N] added to the model's scores before ranking ("boost"), or None.
        draws: int64 [S, W] ("thompson"): row s is the pool's items (model item indices) in
            descending order of their click rates in posterior draw s, the first W; or None.
    """

    name: str = EPSILON
    bonus: np.ndarray | None = None
    draws: np.ndarray | None = None


def policy_version(sc: ScoreConfig, model_version: str) -> str:
    """``<model version>:<8 hex digits>``: the model and a digest of the POLICY_KEYS settings,
    so two runs share a version exactly when the same model ranks under the same rules."""
    settings = json.dumps({key: getattr(sc, key) for key in POLICY_KEYS}, sort_keys=True)
    return f"{model_version}:{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def boost_bonus(num_items: int, pool: np.ndarray, bonus: float) -> np.ndarray:
    """Returns: float32 [num_items], ``bonus`` at the pool's items, 0 elsewhere."""
    out = np.zeros(num_items, dtype=np.float32)
    out[pool] = bonus
    return out


def thompson_posterior(recent_users: np.ndarray, active_users: int, strength: float,
                       exposures: np.ndarray, clicks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beta posteriors of items' click rates: a popularity prior updated by logged feedback.

    Prior mean m = (recent users + 1) / (active users + 2): the share of the users active in
    the recent window who met the item (smoothed: never 0 or 1); prior Beta(s m, s (1 - m)),
    s = ``strength`` pseudo-exposures. Posterior: + clicks, + (exposures - clicks).

    Args:
        recent_users: float [P] distinct recent users of each item.
        active_users: distinct users in the recent window (at least the largest recent_users).
        strength: s > 0.
        exposures, clicks: float [P] logged counts (0 where none), clicks <= exposures.

    Returns:
        (alpha, beta): float64 [P] each.
    """
    recent = np.asarray(recent_users, dtype=np.float64)
    active = max(float(active_users), float(recent.max()) if len(recent) else 0.0)
    mean = (recent + 1.0) / (active + 2.0)
    clicks = np.asarray(clicks, dtype=np.float64)
    return strength * mean + clicks, strength * (1.0 - mean) + np.asarray(exposures, dtype=np.float64) - clicks


def thompson_draws(pool: np.ndarray, alpha: np.ndarray, beta: np.ndarray, count: int, width: int, seed: int,
                   run_date: str) -> np.ndarray:
    """``count`` draws of the pool's click rates, each as the pool's ``width`` best items.

    Seeded by (seed, run date): the same day draws the same rates in every task and re-run.

    Args:
        pool: int64 [P] item indices; alpha, beta: float [P] their posteriors.
        count: S draws; width: W items kept per draw (2K: exploration tries as many as epsilon).

    Returns:
        int64 [S, min(W, P)], best first.
    """
    rng = np.random.default_rng([seed & (2**64 - 1), dt.date.fromisoformat(run_date).toordinal()])
    width = min(width, len(pool))
    out = np.zeros((count, width), dtype=np.int64)
    if width == 0:
        return out
    step = max(1, BETA_CHUNK // len(pool))
    for start in range(0, count, step):
        rates = rng.beta(alpha, beta, size=(min(step, count - start), len(pool)))
        best = np.argpartition(-rates, width - 1, axis=1)[:, :width]
        order = np.argsort(-np.take_along_axis(rates, best, 1), axis=1, kind="stable")
        out[start : start + len(rates)] = pool[np.take_along_axis(best, order, 1)]
    return out


def explores(rules: ListRules, pool: np.ndarray) -> bool:
    """Whether lists get exploration slots (and so are random)."""
    return rules.explore_share > 0 and len(pool) > 0


def serve(scores: Tensor, keys: np.ndarray, pool: np.ndarray, categories: np.ndarray, rules: ListRules,
          policy: Policy) -> tuple[topk.Ranked, np.ndarray]:
    """A block of users' lists under the policy, and the propensity of each served item.

    Args:
        scores: Tensor[B, N] of the model, -inf where excluded. Changed in place.
        keys: int64 [B] the users' random keys (user, seed, run date).
        pool: int64 [P] item indices of the exploration pool.
        categories: int64 [N] dense category codes (for the cap).
        rules: k, category_cap, explore_share, propensity_samples.
        policy: the policy's name and arrays.

    Returns:
        (:class:`topk.Ranked` [B, k] with the model's scores (without a boost's bonus),
        propensity float64 [B, k] of each filled slot, 0 for an empty one: 1.0 without
        exploration slots; else :func:`placement_probability`: exact where
        :func:`greedy_users` holds; the exact exploration part plus the Monte-Carlo estimate
        of the model part where only :func:`explore_probability` is exact (a served model item
        >= 1 / samples, an exploration pick > 0); elsewhere the Monte-Carlo estimate of the
        whole, in [1 / samples, 1].)
    """
    num_users, k = scores.shape[0], rules.k
    raw = None
    if policy.bonus is not None:
        raw = scores.clone()
        scores.add_(torch.from_numpy(policy.bonus)[None, :])  # -inf stays -inf
    if not explores(rules, pool):
        ranked = topk.rank(scores, k, categories, rules.category_cap)
        propensity = np.ones((num_users, k))
    else:
        top = topk.best_items(scores, k, rules.category_cap)
        ranked = sample_lists(scores, top, keys, pool, categories, rules, policy, 0, 1)  # the served list
        # Only users whose propensity is not exact need the Monte-Carlo (placement_probability
        # reads no hits of a greedy user); each user's lists depend on its own row alone.
        sampled = np.flatnonzero(~greedy_users(scores, top, pool, exact_users(top.finite, rules, policy), k))
        hits, model_hits = np.zeros((num_users, k)), np.zeros((num_users, k))
        if len(sampled):
            every = len(sampled) == num_users
            part = scores if every else scores[torch.from_numpy(sampled)]
            part_top = top if every else topk.Candidates(top.items[sampled], top.scores[sampled], top.finite[sampled])
            for lists in sample_chunks(part, part_top, keys[sampled], pool, categories, rules, policy):
                chunk_hits, chunk_model_hits = placement_hits(lists, ranked.items[sampled])
                hits[sampled] += chunk_hits
                model_hits[sampled] += chunk_model_hits
        found = placement_probability(scores, top, pool, rules, policy, ranked.items, hits, model_hits)
        propensity = np.where(ranked.items >= 0, found, 0.0)
    if raw is not None:
        rows = torch.arange(num_users)[:, None]
        model = raw[rows, torch.from_numpy(np.maximum(ranked.items, 0))].numpy()
        ranked.scores = np.where(ranked.items >= 0, model, NEG_INF).astype(np.float32)
    return ranked, propensity


def placement_hits(lists: topk.Ranked, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many of a chunk of sample lists hold each wanted item in its slot.

    Args:
        lists: a :func:`sample_lists` result, B x count rows (row b * count + j: user b).
        wanted: int64 [B, K] an item index per user and slot; negative never matches.

    Returns:
        (all hits, model hits): int64 [B, K] each, the second counting only the lists where
        the item is a model item (not an exploration pick) there.
    """
    num_users, k = wanted.shape
    same = lists.items.reshape(num_users, -1, k) == wanted[:, None, :]
    model = same & ~lists.explore.reshape(num_users, -1, k)
    return same.sum(axis=1), model.sum(axis=1)


def propensities(hits: np.ndarray, model_hits: np.ndarray, samples: int, exact: np.ndarray,
                 explored: np.ndarray) -> np.ndarray:
    """The probability of each (user, slot, item) placement from its two parts.

    Args:
        hits, model_hits: [B, K] of :func:`placement_hits`, summed over the ``samples`` lists.
        samples: M, the lists counted.
        exact: bool [B] of :func:`explore_probability`.
        explored: float64 [B, K] the item's exact exploration probability there (q where the
            item is one of :func:`pool_members`, else 0).

    Returns:
        float64 [B, K]: model_hits / M + explored where exact, hits / M elsewhere.
    """
    return np.where(exact[:, None], model_hits / samples + explored, hits / samples)


def placement_probability(scores: Tensor, top: topk.Candidates, pool: np.ndarray, rules: ListRules,
                          policy: Policy, wanted: np.ndarray, hits: np.ndarray, model_hits: np.ndarray) -> np.ndarray:
    """The policy's probability of each wanted (user, slot, item) placement, as the score stage
    writes it (:func:`serve`) and the off-policy evaluation reads it.

    Args:
        scores: Tensor[B, N] as ranked (after a boost's bonus), -inf where excluded.
        top: :func:`topk.best_items` of ``scores``.
        pool: int64 [P] distinct item indices; rules: k, category_cap, explore_share,
            propensity_samples; policy: the policy.
        wanted: int64 [B, K] an item index per user and slot; negative is never placed.
        hits, model_hits: [B, K] of :func:`placement_hits` for ``wanted``, summed over the
            rules.propensity_samples lists.

    Returns:
        float64 [B, K]: where :func:`greedy_users`, the exact P(greedy rank of the item at the
        slot) (:func:`model_placement`; 0 for an item not among the K best) plus q for a pool
        member; elsewhere :func:`propensities`.
    """
    k = rules.k
    # The parts of explore_probability, each made once: top already counted the finite scores.
    exact = exact_users(top.finite, rules, policy)
    valid = _valid_pool_items(scores, pool)
    counts = pick_counts(valid, len(pool), k, TRIES_PER_SLOT * k)
    explored = explore_q(counts, valid, rules.explore_share, k) * pool_members(scores, pool, wanted)
    estimate = propensities(hits, model_hits, rules.propensity_samples, exact, explored)
    greedy = greedy_users(scores, top, pool, exact, k)
    if not greedy.any():
        return estimate
    placed = model_placement(counts, rules.explore_share, k)  # [B, rank, slot]
    is_rank = (top.items[:, :k, None] == wanted[:, None, :]) & (wanted[:, None, :] >= 0)
    model = (is_rank * placed).sum(axis=1)
    return np.where(greedy[:, None], model + explored, estimate)


def greedy_users(scores: Tensor, top: topk.Candidates, pool: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Whether a user's model part is exact too: its exploration part is (``exact`` of
    :func:`explore_probability`) and none of its K best items (``top``'s first K, the greedy
    order) is a valid pool item, so that its model items are always its K best in order.

    Returns:
        bool [B].
    """
    if len(pool) == 0 or top.items.shape[1] < k:
        return np.zeros(len(exact), dtype=bool)
    return exact & ~pool_members(scores, pool, top.items[:, :k]).any(axis=1)


def model_placement(counts: np.ndarray, share: float, k: int) -> np.ndarray:
    """The probability that greedy rank j is the model item at slot s, for a user of
    :func:`greedy_users` (see the module docstring).

    Args:
        counts: float64 [B, K + 1] P(D = d) of :func:`pick_counts`.
        share: e, the exploration share.
        k: K.

    Returns:
        float64 [B, K, K]: [b, j, s] (0 for j > s).
    """
    return np.einsum("bd,djs->bjs", counts, placement_terms(share, k))


@functools.lru_cache(maxsize=16)
def placement_terms(share: float, k: int) -> np.ndarray:
    """float64 [K + 1, K, K], read-only: [d, j, s] the probability that greedy rank j is the model
    item at slot s when D = d (:func:`model_placement`); made once per (share, K), not per block
    (the real-time path ranks blocks of one user)."""
    before = explored_before(share, k)  # [s, m] P(E_s = m)
    # [s, d] P(E_s >= d), d = 0..K (0 at d = K: E_s <= s < K).
    at_least = np.pad(np.cumsum(before[:, ::-1], axis=1)[:, ::-1], ((0, 0), (0, 1)))
    slot = np.arange(k)[None, :]
    taken = slot - np.arange(k)[:, None]  # [j, s] m = s - j pick slots before s
    m = np.maximum(taken, 0)
    terms = np.zeros((k + 1, k, k))
    for d in range(k + 1):
        tail = at_least[slot, d]  # [1, s]
        picked = np.where(m < d, before[slot, m], np.where(m == d, tail, 0.0))  # P(min(E_s, d) = m)
        terms[d] = np.where(taken >= 0, (1.0 - share) * picked + share * tail * (m == d), 0.0)
    terms.setflags(write=False)
    return terms


def pool_members(scores: Tensor, pool: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether exploration may pick each item for its user: a pool item with a finite score.

    Args:
        scores: Tensor[B, N], -inf where excluded.
        pool: int64 [P] item indices.
        items: int64 [B, C] item indices; negative (empty, unknown) is never a member.

    Returns:
        bool [B, C].
    """
    rows = torch.arange(scores.shape[0])[:, None]
    finite = torch.isfinite(scores[rows, torch.from_numpy(np.maximum(items, 0))]).numpy()
    return (items >= 0) & finite & np.isin(items, pool)


def explore_probability(scores: Tensor, pool: np.ndarray, rules: ListRules,
                        policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """The exact probability that an exploration pick puts a given valid pool item at each slot.

    Exact for epsilon's slots (``policy.draws`` None) when the cap cannot drop a pick
    (``category_cap`` 0 or >= K) and the user has at least K items with a finite score (the
    list fills, so no slot shifts): see the module docstring for the formula.

    Args:
        scores: Tensor[B, N] as ranked (after a boost's bonus), -inf where excluded.
        pool: int64 [P] distinct item indices.
        rules: k, category_cap, explore_share.
        policy: the policy (Thompson has no closed form).

    Returns:
        (q float64 [B, K]: the probability for each one of the user's :func:`pool_members`,
        0 where it has none or the pool is empty; exact bool [B]: whether q is exact, i.e.
        the user's exploration part is q for its pool members and 0 for any other item.)
    """
    k = rules.k
    valid = _valid_pool_items(scores, pool)
    counts = pick_counts(valid, len(pool), k, TRIES_PER_SLOT * k)
    finite = torch.isfinite(scores).sum(dim=1).numpy()
    return explore_q(counts, valid, rules.explore_share, k), exact_users(finite, rules, policy)


def exact_users(finite: np.ndarray, rules: ListRules, policy: Policy) -> np.ndarray:
    """bool [B]: whether :func:`explore_probability` is exact for each user: epsilon's slots
    (``policy.draws`` None), a cap that cannot drop a pick (0 or >= K), and at least K items
    with a finite score (``finite``, int [B]: the list fills, so no slot shifts)."""
    epsilon_slots = policy.draws is None and not 0 < rules.category_cap < rules.k
    return epsilon_slots & (np.asarray(finite) >= rules.k)


def explore_q(counts: np.ndarray, valid: np.ndarray, share: float, k: int) -> np.ndarray:
    """float64 [B, K]: q(s), the probability that an exploration pick puts one given valid pool
    item at slot s, from P(D = d) (``counts`` of :func:`pick_counts`) and the user's ``valid``
    pool items (0 where it has none)."""
    found = tails_of(counts)
    before = explored_before(share, k)
    q = np.zeros((len(valid), k))
    for r in range(k):  # elementwise: a user's q never depends on the rest of its block
        q += found[:, r : r + 1] * before[None, :, r]
    return share * q / np.maximum(valid, 1)[:, None]


def _valid_pool_items(scores: Tensor, pool: np.ndarray) -> np.ndarray:
    """int64 [B]: how many of the pool's items each user may get (finite score)."""
    if len(pool) == 0:
        return np.zeros(scores.shape[0], dtype=np.int64)
    return torch.isfinite(scores[:, torch.from_numpy(pool)]).sum(dim=1).numpy().astype(np.int64)


def pick_counts(valid: np.ndarray, pool_size: int, k: int, tries: int) -> np.ndarray:
    """P(D = d), d = 0..K: D the distinct valid items among ``tries`` uniform tries over a pool,
    counted up to K (the most picks a list takes; d = K means at least K).

    A chain over the tries of j = distinct valid items so far (absorbing at K): a try finds a
    new one with probability (valid - j) / pool_size.

    Args:
        valid: int64 [B] the pool's items each user may get.
        pool_size: P entries tried uniformly (an empty pool: D = 0).
        k: the most picks counted.
        tries: T.

    Returns:
        float64 [B, K + 1], column d.
    """
    found = np.arange(k + 1)
    new = np.where(found < k, np.clip(valid[:, None] - found, 0, None) / max(pool_size, 1), 0.0)
    state = np.zeros((len(valid), k + 1))
    state[:, 0] = 1.0
    for _ in range(tries):
        moved = state * new
        state = state - moved
        state[:, 1:] += moved[:, :-1]
    return state


def tails_of(counts: np.ndarray) -> np.ndarray:
    """float64 [B, K]: P(D >= r), r = 1..K (column r - 1), from P(D = d) of :func:`pick_counts`."""
    return np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]


def explored_before(share: float, k: int) -> np.ndarray:
    """float64 [K, K]: [s, j] the probability that exactly j of slots 0..s-1 are exploration slots
    (binomial(s, share); 0 for j > s)."""
    out = np.zeros((k, k))
    out[0, 0] = 1.0
    for s in range(1, k):
        out[s] = out[s - 1] * (1.0 - share)
        out[s, 1:] += out[s - 1, :-1] * share
    return out


def sample_chunks(scores: Tensor, top: topk.Candidates, keys: np.ndarray, pool: np.ndarray, categories: np.ndarray,
                  rules: ListRules, policy: Policy) -> Iterator[topk.Ranked]:
    """The users' ``rules.propensity_samples`` lists, sample 0 (the served one) first, in chunks
    of samples whose rows (users x samples) stay within SAMPLE_ROWS: each a :func:`sample_lists`
    result, row b * count + j for user b's j-th sample of the chunk."""
    samples = rules.propensity_samples
    per_chunk = max(1, min(samples, SAMPLE_ROWS // max(len(keys), 1)))
    for start in range(0, samples, per_chunk):
        yield sample_lists(scores, top, keys, pool, categories, rules, policy, start, min(per_chunk, samples - start))


def sample_lists(scores: Tensor, top: topk.Candidates, keys: np.ndarray, pool: np.ndarray, categories: np.ndarray,
                 rules: ListRules, policy: Policy, start: int, count: int) -> topk.Ranked:
    """The users' lists under the draws of samples [start, start + count).

    Sample m of user b uses the 3K draws ``topk.uniforms(key_b, 3K, offset=3K m)``: K slot
    coins (an exploration slot where < explore_share), then the picks' draws (epsilon: 2K
    uniform picks; thompson: which of the policy's posterior draws).

    Returns:
        :class:`topk.Ranked` of B x count rows, row b * count + j for sample start + j.
    """
    num_users, k = len(keys), rules.k
    width = (1 + TRIES_PER_SLOT) * k
    draws = topk.uniforms(keys, width * count, offset=width * start).reshape(num_users * count, width)
    owner = np.repeat(np.arange(num_users, dtype=np.int64), count)
    slots = draws[:, :k] < rules.explore_share
    if policy.draws is not None:
        which = np.minimum((draws[:, k] * len(policy.draws)).astype(np.int64), len(policy.draws) - 1)
        picks = topk.take_picks(scores, policy.draws[which], slots, owner)
    else:
        picks = topk.draw_explore(scores, pool, slots, draws[:, k:], owner)
    return topk.rank_rows(scores, top, owner, k, categories, rules.category_cap, picks, slots, rules.block_size)
