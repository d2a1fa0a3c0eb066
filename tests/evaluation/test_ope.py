"""Off-policy estimators on hand-computed logs, and on a simulated log whose truth is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys_spark.evaluation import intervals, ope

# Two lists (users 0 and 1) of two slots each. w = target / propensity = [2, 2, 0, 0.5].
USER = np.array([0, 0, 1, 1])
SLOT = np.array([0, 1, 0, 1])
ITEM = np.array([1, 2, 3, 1])
PROPENSITY = np.array([0.5, 0.25, 0.5, 0.8])
REWARD = np.array([1, 0, 1, 1])
TARGET = np.array([1.0, 0.5, 0.0, 0.4])
Q_LOGGED = np.array([0.5, 0.2, 0.6, 0.4])
Q_TARGET = np.array([0.5, 0.3, 0.1, 0.45])


def hand_log(**changes) -> ope.LoggedFeedback:
    columns = dict(user=USER, slot=SLOT, item=ITEM, propensity=PROPENSITY, reward=REWARD,
                   target_propensity=TARGET)
    columns.update(changes)
    return ope.LoggedFeedback(**columns)


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_ips_snips_dm_dr_per_exposure_by_hand():
    found = ope.estimate_all(hand_log(), Q_LOGGED, Q_TARGET, per="exposure", min_effective_sample_size=0)
    # IPS: w*r = [2, 0, 0, 0.5], sum 2.5 over 4 exposures = 0.625
    assert found["ips"].value == pytest.approx(0.625)
    # SNIPS: sum(w*r) / sum(w) = 2.5 / 4.5
    assert found["snips"].value == pytest.approx(2.5 / 4.5)
    # DM: sum(q_target) = 0.5 + 0.3 + 0.1 + 0.45 = 1.35, over 4 = 0.3375
    assert found["dm"].value == pytest.approx(0.3375)
    # DR: q_t + w*(r - q_l) = 0.5+2*0.5, 0.3+2*(-0.2), 0.1+0, 0.45+0.5*0.6 = 1.5, -0.1, 0.1, 0.75;
    # sum 2.25 over 4 = 0.5625
    assert found["dr"].value == pytest.approx(0.5625)
    for estimate in found.values():
        # ESS: (2+2+0+0.5)^2 / (4+4+0+0.25) = 20.25 / 8.25
        assert estimate.ess == pytest.approx(20.25 / 8.25)
        assert (estimate.units, estimate.exposures, estimate.per, estimate.reason) == (2, 4, "exposure", None)


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_per_list_values_sum_over_slots_by_hand():
    found = ope.estimate_all(hand_log(), Q_LOGGED, Q_TARGET, per="list", min_effective_sample_size=0)
    # Per list: the row sums over 2 lists instead of 4 exposures (2 slots each: twice per exposure).
    assert found["ips"].value == pytest.approx(2.5 / 2)
    assert found["dm"].value == pytest.approx(1.35 / 2)
    assert found["dr"].value == pytest.approx(2.25 / 2)
    # SNIPS: its click rate per exposure times the 4 / 2 exposures per list
    assert found["snips"].value == pytest.approx(2.5 / 4.5 * 2)


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_bootstrap_interval_resamples_whole_lists():
    # Per-list IPS sums: list 0 = 2 + 0 = 2, list 1 = 0 + 0.5 = 0.5. A resample of 2 lists has
    # mean 2 (both list 0, p = 1/4), 1.25 or 0.5 (both list 1, p = 1/4): the 2.5% and 97.5%
    # quantiles are 0.5 and 2.
    ips = ope.estimate_ips(hand_log(), min_effective_sample_size=0, samples=2000, seed=3)
    assert (ips.low, ips.high) == (pytest.approx(0.5), pytest.approx(2.0))
    # The same resamples as intervals.py's over the per-list sums.
    expected = intervals.mean_interval(np.array([2.0, 0.5]), samples=2000, seed=3, confidence=0.95)
    assert (ips.low, ips.high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    # SNIPS per exposure: list 0 has sum(w*r) = 2 over sum(w) = 4 (0.5), list 1 0.5 over 0.5 (1):
    # the resamples are 0.5, 2.5 / 4.5 or 1.
    snips = ope.estimate_snips(hand_log(), per="exposure", min_effective_sample_size=0, samples=2000, seed=3)
    assert (snips.low, snips.high) == (pytest.approx(0.5), pytest.approx(1.0))


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_on_policy_ips_and_snips_equal_the_mean_reward():
    # pi_e == pi_0: every w = 1, so IPS = SNIPS = mean reward = 3 / 4 and ESS = N = 4.
    log = hand_log(target_propensity=PROPENSITY)
    for estimate in (ope.estimate_ips(log, per="exposure", min_effective_sample_size=0),
                     ope.estimate_snips(log, per="exposure", min_effective_sample_size=0)):
        assert estimate.value == pytest.approx(0.75)
        assert estimate.ess == pytest.approx(4.0)
    # Per list: 3 clicks over 2 lists.
    assert ope.estimate_ips(log, min_effective_sample_size=0).value == pytest.approx(1.5)


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_clipping_caps_the_weights_of_ips_and_dr_only():
    log = hand_log()
    # clip 1: w = [1, 1, 0, 0.5]
    assert list(ope.importance_weights(log, clip=1.0)) == [1.0, 1.0, 0.0, 0.5]
    found = ope.estimate_all(log, Q_LOGGED, Q_TARGET, per="exposure", clip=1.0, min_effective_sample_size=0)
    # IPS: (1*1 + 0 + 0 + 0.5*1) / 4 = 0.375
    assert found["ips"].value == pytest.approx(0.375)
    # DR: 0.5+1*0.5, 0.3+1*(-0.2), 0.1+0, 0.45+0.5*0.6 = 1.0, 0.1, 0.1, 0.75: 1.95 / 4 = 0.4875
    assert found["dr"].value == pytest.approx(0.4875)
    # ESS of the clipped weights: 2.5^2 / 2.25
    assert found["ips"].ess == pytest.approx(6.25 / 2.25)
    # SNIPS is not clipped (as in obp): still 2.5 / 4.5.
    assert found["snips"].value == pytest.approx(2.5 / 4.5)
    with pytest.raises(ValueError, match="clip must be > 0"):
        ope.estimate_ips(log, clip=0.0)


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_too_small_an_effective_sample_size_gives_a_reason_not_a_number():
    # ESS = 20.25 / 8.25 = 2.45 < 3
    found = ope.estimate_all(hand_log(), Q_LOGGED, Q_TARGET, min_effective_sample_size=3)
    for name, estimate in found.items():
        assert (estimate.value, estimate.low, estimate.high) == (None, None, None), name
        assert estimate.reason == "effective sample size 2.5 below 3"
        assert estimate.describe() == f"{name}: no estimate (effective sample size 2.5 below 3)"
    # The default threshold (100) refuses this 4-row log too.
    assert ope.estimate_dr(hand_log(), Q_LOGGED, Q_TARGET).value is None


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_a_candidate_with_no_weight_on_the_log_has_no_estimate():
    log = hand_log(target_propensity=np.zeros(4))
    # All w = 0: ESS 0, and SNIPS's 0 / 0 is no number even without a threshold.
    assert ope.effective_sample_size(np.zeros(4)) == 0.0
    snips = ope.estimate_snips(log, min_effective_sample_size=0)
    assert snips.value is None
    assert snips.reason == "the candidate gives no weight to any logged exposure"


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_as_dict_is_json_ready():
    done = ope.estimate_ips(hand_log(), min_effective_sample_size=0, samples=200)
    refused = ope.estimate_ips(hand_log(), min_effective_sample_size=3, samples=200)
    assert json.loads(json.dumps(done.as_dict()))["value"] == pytest.approx(1.25)
    assert json.loads(json.dumps(refused.as_dict())) == {
        "estimator": "ips", "per": "list", "value": None, "low": None, "high": None, "confidence": 0.95,
        "units": 2, "exposures": 4, "ess": pytest.approx(20.25 / 8.25),
        "reason": "effective sample size 2.5 below 3",
    }
    assert done.describe().startswith("ips 1.2500 [")


@pytest.mark.unit
@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(propensity=None), "column 'propensity' is missing"),
        (dict(propensity=[0.5, None, 0.5, 0.8]), r"column 'propensity' is missing \(NaN\) on 1 rows, e.g. row 1"),
        (dict(propensity=[0.5, np.nan, 0.5, 0.8]), r"column 'propensity' is missing \(NaN\) on 1 rows"),
        (dict(propensity=[0.5, 0.0, 0.5, 0.8]), r"column 'propensity' is not in \(0, 1\] on 1 rows, e.g. row 1 = 0.0"),
        (dict(propensity=[0.5, -0.2, 1.5, 0.8]), r"column 'propensity' is not in \(0, 1\] on 2 rows"),
        (dict(reward=[1, 0, 2, 1]), "column 'reward' is not 0 or 1 on 1 rows, e.g. row 2 = 2.0"),
        (dict(reward=[1, 0, 0.5, 1]), "column 'reward' is not 0 or 1"),
        (dict(reward=[1, 0, 1]), "column 'reward' has 3 rows, 'user' has 4"),
        (dict(item=ITEM[:2]), "column 'item' has 2 rows, 'user' has 4"),
        (dict(target_propensity=[1.0, 0.5, 0.0]), "column 'target_propensity' has 3 rows, 'user' has 4"),
        (dict(target_propensity=[1.0, 0.5, 1.2, 0.4]), r"column 'target_propensity' is not in \[0, 1\]"),
        (dict(slot=[0, -1, 0, 1]), "column 'slot' is negative"),
        (dict(slot=[0.0, 1.0, 0.0, 1.0]), "column 'slot' must be a 1-d array of integers"),
        (dict(slot=[0, 0, 0, 1]), r"\(user, slot\) repeats on 1 rows, e.g. user 0 slot 0"),
    ],
)
def test_bad_feedback_raises_naming_the_column(changes, message):
    with pytest.raises(ValueError, match=message):
        hand_log(**changes)


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_estimating_needs_the_target_and_model_columns():
    with pytest.raises(ValueError, match="column 'target_propensity' is missing"):
        ope.estimate_ips(hand_log(target_propensity=None))
    with pytest.raises(ValueError, match=r"column 'q_hat_logged' must have shape \(4,\)"):
        ope.estimate_dr(hand_log(), Q_LOGGED[:3], Q_TARGET)
    with pytest.raises(ValueError, match="column 'q_hat_target' is not finite on 1 rows"):
        ope.estimate_dm(hand_log(), np.array([0.1, np.nan, 0.1, 0.1]))
    with pytest.raises(ValueError, match="per must be one of"):
        ope.estimate_ips(hand_log(), per="user")
    with pytest.raises(ValueError, match="give both q_hat_logged and q_hat_target, or neither"):
        ope.estimate_all(hand_log(), q_hat_target=Q_TARGET)
    assert set(ope.estimate_all(hand_log(), min_effective_sample_size=0)) == {"ips", "snips"}


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_ranking_propensities_by_hand():
    log = ope.LoggedFeedback(
        user=np.array([10, 10, 20, 20, 20]),
        slot=np.array([0, 1, 0, 1, 2]),
        item=np.array([1, 3, 3, 4, 5]),
        propensity=np.full(5, 0.5),
        reward=np.zeros(5, dtype=int),
    )
    # Greedy lists: user 10 -> [1, 2], user 20 -> [3, empty]. Share 0.2, pool {2, 3, 4, 5} (P = 4):
    # pi = 0.8 [item == greedy] + 0.2 / 4 [item in pool]
    found = ope.ranking_propensities(log, np.array([20, 10]), np.array([[3, -1], [1, 2]]),
                                     explore_share=0.2, explore_pool=np.array([2, 3, 4, 5]))
    expected = [
        0.8,         # user 10 slot 0: item 1 is greedy, not in the pool
        0.05,        # user 10 slot 1: greedy is 2; item 3 only by exploration
        0.8 + 0.05,  # user 20 slot 0: item 3 is greedy and in the pool
        0.0,         # user 20 slot 1: the greedy list is empty there
        0.0,         # user 20 slot 2: past K = 2
    ]
    assert found == pytest.approx(expected)
    # No exploration: the indicator of the greedy item.
    assert list(ope.ranking_propensities(log, np.array([10, 20]), np.array([[1, 2], [3, -1]]))) == [1, 0, 1, 0, 0]


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_ranking_propensities_rejects_bad_rankings():
    log = hand_log(target_propensity=None)
    with pytest.raises(ValueError, match="no list for 1 logged users, e.g. user 1"):
        ope.ranking_propensities(log, np.array([0]), np.array([[1, 2]]))
    with pytest.raises(ValueError, match="needs a non-empty explore_pool"):
        ope.ranking_propensities(log, np.array([0, 1]), np.array([[1, 2], [3, 1]]), explore_share=0.1)
    with pytest.raises(ValueError, match="ranked_users repeat"):
        ope.ranking_propensities(log, np.array([0, 0]), np.array([[1, 2], [3, 1]]))


# The simulation: position-based clicks, P(click) = THETA[slot] * ATTRACTION[item].
ATTRACTION = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
THETA = np.array([1.0, 0.6, 0.3])


def simulate_uniform_log(rounds: int, seed: int) -> ope.LoggedFeedback:
    """Each list shows the first 3 of a uniform random order of the 5 items: every item lands in
    every slot with probability 1/5."""
    rng = np.random.default_rng(seed)
    shown = np.argsort(rng.random((rounds, 5)), axis=1)[:, :3]
    clicks = rng.random((rounds, 3)) < THETA * ATTRACTION[shown]
    return ope.LoggedFeedback(
        user=np.repeat(np.arange(rounds), 3), slot=np.tile(np.arange(3), rounds), item=shown.ravel(),
        propensity=np.full(rounds * 3, 0.2), reward=clicks.ravel().astype(np.int64),
    )


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_estimates_cover_the_true_value_of_another_policy_on_a_simulated_log():
    rounds, share, greedy = 20_000, 0.1, np.array([4, 3, 2])
    log = simulate_uniform_log(rounds, seed=0)
    # The candidate: items 4, 3, 2 in slots 0-2, each slot explored with probability 0.1 over all 5.
    log = log.with_target(ope.ranking_propensities(
        log, np.arange(rounds), np.tile(greedy, (rounds, 1)), explore_share=share, explore_pool=np.arange(5)))
    # Truth per list: sum_k THETA[k] (0.9 ATTRACTION[greedy k] + 0.1 mean(ATTRACTION) = 0.03)
    #   = 1.0 (0.45 + 0.03) + 0.6 (0.36 + 0.03) + 0.3 (0.27 + 0.03) = 0.48 + 0.234 + 0.09 = 0.804
    truth = 0.804
    # A biased reward model: 0.7 of the truth plus 0.05, per (slot, item).
    q_hat = 0.7 * THETA[:, None] * ATTRACTION[None, :] + 0.05
    q_logged = q_hat[log.slot, log.item]
    q_target = ((1 - share) * q_hat[np.arange(3), greedy] + share * q_hat.mean(axis=1))[log.slot]
    found = ope.estimate_all(log, q_logged, q_target, seed=0)
    for name in ("ips", "snips", "dr"):
        assert found[name].low <= truth <= found[name].high, found[name]
        assert found[name].high - found[name].low < 0.06, found[name]  # informative, not just wide
    # The model alone is off (0.7 * 0.804 + 3 * 0.05 = 0.7128): DR's correction is what covers.
    assert found["dm"].value == pytest.approx(0.7 * truth + 0.15)
    assert not found["dm"].low <= truth <= found["dm"].high
    # About a fifth of the rows match the greedy item (w = 0.92 / 0.2), the rest w = 0.1: ESS
    # (sum w)^2 / sum w^2 ~ 60,000 (0.2 * 4.6 + 0.8 * 0.1)^2 / (0.2 * 4.6^2 + 0.8 * 0.1^2) = 14,151.
    assert found["ips"].ess == pytest.approx(14_151, rel=0.02)
    # Per exposure: the same estimate over the 3 slots of every list.
    per_exposure = ope.estimate_ips(log, per="exposure", seed=0)
    assert per_exposure.value == pytest.approx(found["ips"].value / 3)
