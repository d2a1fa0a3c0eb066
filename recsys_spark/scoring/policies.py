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
exploration slots is deterministic: 1.0. Otherwise de-duplication, exclusions, the cap and the
left-alignment leave no simple closed form, so it is estimated by Monte-Carlo: the user's
lists are rebuilt under M = ``score.propensity_samples`` draws, sample m using the draw streams
[3Km, 3K(m + 1)) of :func:`topk.uniforms`; the served list is sample 0 (today's stream), so an
estimate is never below 1/M (off-policy weights need no zero) and its bias, (1 - p) / M, stays
below its standard error sqrt(p (1 - p) / (M - 1)) (at most 0.035 at M = 200).

Everything is a pure function of (score.seed, run date, user): re-runs are identical.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import Tensor

from recsys_spark.config import ScoreConfig
from recsys_spark.models.ranking import NEG_INF
from recsys_spark.scoring import topk

if TYPE_CHECKING:
    from recsys_spark.scoring.recommender import ListRules

EPSILON, THOMPSON, BOOST = ScoreConfig.EXPLORE_POLICIES
# Users x samples whose lists are built at once: bounds a task's memory for the Monte-Carlo
# (about 1 KB per row and list position), whatever score.propensity_samples is.
SAMPLE_ROWS = 1 << 13
# Beta draws made at once by thompson_draws (memory: 8 bytes each).
BETA_CHUNK = 1 << 22
# The score settings that shape a list's distribution, hashed into policy_version.
POLICY_KEYS = ("top_k", "category_cap", "explore_share", "explore_pool_share", "explore_policy", "popular_days",
               "exclude_event_types", "exclude_items_path", "thompson_prior_strength", "thompson_draws",
               "feedback_counts_path", "boost_bonus")


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
        propensity float64 [B, k]: 1.0 without exploration slots, else the Monte-Carlo
        estimate, in [1 / samples, 1], of each filled slot.)
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
        ranked, hits = None, np.zeros((num_users, k))
        for lists in sample_chunks(scores, top, keys, pool, categories, rules, policy):
            items = lists.items.reshape(num_users, -1, k)
            if ranked is None:
                first = np.arange(num_users) * items.shape[1]
                ranked = topk.Ranked(lists.items[first], lists.scores[first], lists.explore[first])
            hits += (items == ranked.items[:, None, :]).sum(axis=1)
        propensity = np.where(ranked.items >= 0, hits / rules.propensity_samples, 0.0)
    if raw is not None:
        rows = torch.arange(num_users)[:, None]
        model = raw[rows, torch.from_numpy(np.maximum(ranked.items, 0))].numpy()
        ranked.scores = np.where(ranked.items >= 0, model, NEG_INF).astype(np.float32)
    return ranked, propensity


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
    width = 3 * k
    draws = topk.uniforms(keys, width * count, offset=width * start).reshape(num_users * count, width)
    owner = np.repeat(np.arange(num_users, dtype=np.int64), count)
    slots = draws[:, :k] < rules.explore_share
    if policy.draws is not None:
        which = np.minimum((draws[:, k] * len(policy.draws)).astype(np.int64), len(policy.draws) - 1)
        picks = topk.take_picks(scores, policy.draws[which], slots, owner)
    else:
        picks = topk.draw_explore(scores, pool, slots, draws[:, k:], owner)
    return topk.rank_rows(scores, top, owner, k, categories, rules.category_cap, picks, slots, rules.block_size)
