"""Bootstrap intervals over users: hand-checkable cases, determinism, alignment and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_spark.evaluation import intervals

pytestmark = pytest.mark.unit

B, SEED, LEVEL = 1000, 5, 0.95


def test_resamples_draw_every_user_count_times_and_depend_on_the_seed_only():
    blocks = list(intervals.resample_counts(7, 25, seed=3))
    counts = np.concatenate(blocks)
    assert counts.shape == (25, 7) and (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    assert np.array_equal(counts, np.concatenate(list(intervals.resample_counts(7, 25, seed=3))))
    assert not np.array_equal(counts, np.concatenate(list(intervals.resample_counts(7, 25, seed=4))))


def test_resample_means_match_a_loop_over_the_drawn_users():
    values = np.array([[0.0, 1.0], [1.0, 3.0], [0.5, 2.0], [0.25, 0.0]])
    counts = np.concatenate(list(intervals.resample_counts(4, 6, seed=1)))
    expected = np.array([[np.repeat(values[:, c], row).mean() for c in range(2)] for row in counts])
    assert intervals.bootstrap_means(values, 6, seed=1) == pytest.approx(expected, abs=1e-12)


def test_constant_values_give_a_zero_width_interval():
    found = intervals.mean_interval(np.full(9, 0.3), B, SEED, LEVEL)
    assert found == (0.3, 0.3, 0.3, 9)
    assert found.describe() == "0.3000 [0.3000, 0.3000] (9 users)"


def test_a_known_seed_gives_the_same_interval_twice_and_another_seed_another():
    values = np.random.default_rng(0).random(50)
    first = intervals.mean_interval(values, B, SEED, LEVEL)
    assert first == intervals.mean_interval(values, B, SEED, LEVEL)
    assert first.mean == pytest.approx(values.mean(), abs=1e-15) and first.users == 50
    assert first.low < first.mean < first.high
    other = intervals.mean_interval(values, B, SEED + 1, LEVEL)
    assert other.mean == first.mean and (other.low, other.high) != (first.low, first.high)
    # A wider level gives a wider interval on the same resamples.
    wide = intervals.mean_interval(values, B, SEED, 0.99)
    assert wide.low <= first.low and wide.high >= first.high


def test_the_interval_is_the_percentiles_of_the_resample_means():
    values = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    means = intervals.bootstrap_means(values[:, None], B, SEED)[:, 0]
    low, high = np.quantile(means, [0.025, 0.975])
    assert intervals.mean_interval(values, B, SEED, LEVEL) == (0.6, low, high, 5)
    # Each resample mean is a number of ones out of 5.
    assert set(np.round(means * 5, 9)) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}


def test_missing_values_are_left_out_of_their_column():
    values = np.array([[1.0, 1.0], [0.0, np.nan], [1.0, np.nan], [np.nan, np.nan]])
    both, partial = intervals.column_intervals(values, B, SEED, LEVEL)
    assert (both.mean, both.users) == (pytest.approx(2 / 3), 3)
    assert partial == (1.0, 1.0, 1.0, 1)
    (empty,) = intervals.column_intervals(np.full((3, 1), np.nan), B, SEED, LEVEL)
    assert empty.users == 0 and np.isnan(empty.mean)


def test_a_paired_difference_of_identical_rankers_is_exactly_zero():
    users = np.array(["u3", "u1", "u2", "u4"])
    values = np.array([0.1, 0.7, 0.2, 0.9])
    assert intervals.paired_difference(users, values, users[::-1], values[::-1], B, SEED, LEVEL) == (0.0, 0.0, 0.0, 4)


def test_paired_differences_align_users_by_id_and_keep_those_in_both():
    # a knows u1..u4, b knows u2..u5 in another order: the difference is taken on u2, u3, u4.
    users_a, a = np.array(["u1", "u2", "u3", "u4"]), np.array([9.0, 0.5, 0.25, 1.0])
    users_b, b = np.array(["u5", "u4", "u3", "u2"]), np.array([9.0, 0.75, 0.25, 0.5])
    common, got_a, got_b = intervals.align(users_a, a, users_b, b)
    assert common.tolist() == ["u2", "u3", "u4"]
    assert got_a.tolist() == [0.5, 0.25, 1.0] and got_b.tolist() == [0.5, 0.25, 0.75]
    found = intervals.paired_difference(users_a, a, users_b, b, B, SEED, LEVEL)
    assert (found.mean, found.users) == (pytest.approx(0.25 / 3), 3)
    # The same as the difference of hand-aligned values.
    assert found == intervals.mean_interval(np.array([0.0, 0.0, 0.25]), B, SEED, LEVEL)
    with pytest.raises(ValueError, match="repeat"):
        intervals.align(np.array(["u1", "u1"]), np.zeros(2), users_b, b)


def test_pairing_is_much_narrower_than_the_separate_intervals_when_users_vary():
    rng = np.random.default_rng(1)
    users = np.arange(400)
    difficulty = rng.random(400)  # shared by both rankers
    a, b = difficulty + 0.02 + rng.normal(0, 0.01, 400), difficulty + rng.normal(0, 0.01, 400)
    paired = intervals.paired_difference(users, a, users, b, B, SEED, LEVEL)
    separate_a, separate_b = intervals.mean_interval(a, B, SEED, LEVEL), intervals.mean_interval(b, B, SEED, LEVEL)
    assert paired.low > 0.015  # clearly above 0 ...
    assert separate_a.low < separate_b.high  # ... while the separate intervals overlap


def test_by_user_and_compare_share_the_resamples_of_the_standalone_functions():
    users = np.array(["u2", "u1", "u2", "u1", "u3"])
    rankers = np.array(["model", "model", "als", "als", "model"])
    values = np.array([[0.5, 1.0], [0.25, 0.0], [0.5, 0.5], [0.0, 0.0], [1.0, 1.0]])
    ids, names, table = intervals.by_user(users, rankers, values)
    assert ids.tolist() == ["u1", "u2", "u3"] and names == ["als", "model"]
    assert table[:, 1, 0].tolist() == [0.25, 0.5, 1.0]
    assert table[0, 0].tolist() == [0.0, 0.0] and np.isnan(table[2, 0]).all()  # als has no u3

    singles, paired = intervals.compare(table, names, ["recall", "ndcg"], [("model", "als")], ["ndcg"], B, SEED, LEVEL)
    assert singles["model"]["ndcg"] == intervals.mean_interval(np.array([0.0, 1.0, 1.0]), B, SEED, LEVEL)
    assert singles["als"]["recall"] == intervals.mean_interval(np.array([0.0, 0.5]), B, SEED, LEVEL)
    assert set(paired) == {("model", "als")} and set(paired["model", "als"]) == {"ndcg"}
    expected = intervals.paired_difference(np.array(["u1", "u2", "u3"]), np.array([0.0, 1.0, 1.0]),
                                   np.array(["u1", "u2"]), np.array([0.0, 0.5]), B, SEED, LEVEL)
    assert paired["model", "als"]["ndcg"] == expected == (0.25, expected.low, expected.high, 2)
    with pytest.raises(ValueError, match="more than one row"):
        intervals.by_user(np.array(["u1", "u1"]), np.array(["model", "model"]), np.zeros((2, 1)))


def test_about_95_percent_of_intervals_contain_the_true_mean():
    # 400 draws of 60 users from N(0.3, 0.1): the share of intervals holding 0.3 is ~0.95
    # (the percentile bootstrap runs a little short with 60 users; +/- 3.3 sd of a binomial).
    rng = np.random.default_rng(11)
    draws = 400
    samples = rng.normal(0.3, 0.1, size=(60, draws))
    found = intervals.column_intervals(samples, 500, SEED, LEVEL)
    share = np.mean([i.low <= 0.3 <= i.high for i in found])
    assert 0.90 <= share <= 0.985, share
    half = np.mean([i.low <= 0.3 <= i.high for i in intervals.column_intervals(samples, 500, SEED, 0.5)])
    assert 0.42 <= half <= 0.58, half  # and not by being merely wide


def test_the_json_forms_of_the_report():
    found = intervals.Interval(0.5, 0.25, 0.75, 8)
    assert intervals.as_bounds({"model": {"ndcg@20": found}}) == {"model": {"ndcg@20": [0.25, 0.75]}}
    assert intervals.as_differences({"model_vs_als": {"ndcg@20": found}}) == {
        "model_vs_als": {"ndcg@20": {"diff": 0.5, "low": 0.25, "high": 0.75, "users": 8}}
    }
    assert intervals.Interval(0.0123, -0.002, 0.03, 1168).describe(signed=True) == "+0.0123 [-0.0020, +0.0300] (1,168 users)"
