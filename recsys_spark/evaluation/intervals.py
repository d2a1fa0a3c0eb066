"""Bootstrap confidence intervals over users, as pure numpy functions.

Every per-user metric of the evaluation (recall@K, ndcg@K, ..., novelty@K) is a mean over the
test users, and its uncertainty comes from which users happened to fall in the test window. The
percentile bootstrap resamples those users with replacement ``samples`` times, takes the mean of
each resample, and reads the interval off the quantiles of these means: (1 - confidence) / 2 and
1 - (1 - confidence) / 2.

The resamples are a function of the set of users only (its size and the seed): every column
measured on the same users (every metric of every ranker, and every paired difference) is
averaged over the very same resamples, drawn once. A paired difference a - b is the mean of the
per-user differences over the users measured by both, so what the two rankers share (easy and
hard users) cancels out: its interval is much narrower than the two separate intervals suggest,
and it is the one to read when comparing.

Catalogue-level figures (coverage@K) are not means over users and get no interval here.
"""

from __future__ import annotations

from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

# Entries of one block of resample indices (int64): bounds the memory of a draw, whatever the
# number of users. A block's height depends on the number of users alone, so the draws do too.
_BLOCK_ENTRIES = 1 << 22


class Interval(NamedTuple):
    """A mean over users, its bootstrap interval and the number of users it is taken over
    (NaNs and 0 users when there is none)."""

    mean: float
    low: float
    high: float
    users: int

    def describe(self, signed: bool = False) -> str:
        """e.g. ``0.1858 [0.1710, 0.2010] (1,168 users)``; ``signed`` for differences (+0.0123)."""
        sign = "+" if signed else ""
        return f"{self.mean:{sign}.4f} [{self.low:{sign}.4f}, {self.high:{sign}.4f}] ({self.users:,} users)"


def resample_counts(num_users: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap resamples of ``num_users`` users, as counts, a block of rows at a time.

    Args:
        num_users: U >= 1.
        samples: B >= 1, resamples in all.
        seed: seeds numpy's default generator; the same (U, B, seed) gives the same resamples.

    Yields:
        int64 [b, U] blocks (b rows summing to B over the blocks): how many times resample r
        draws user u (each row sums to U).
    """
    rng = np.random.default_rng(seed)
    height = max(1, _BLOCK_ENTRIES // num_users)
    for start in range(0, samples, height):
        rows = min(height, samples - start)
        drawn = rng.integers(0, num_users, size=(rows, num_users))
        drawn += (np.arange(rows) * num_users)[:, None]
        yield np.bincount(drawn.ravel(), minlength=rows * num_users).reshape(rows, num_users)


def bootstrap_means(values: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The column means of every resample of the rows (users).

    Args:
        values: float [U, C], finite: one row per user, one column per quantity.
        samples, seed: see :func:`resample_counts`.

    Returns:
        float64 [samples, C]: the mean of each column over each resample's users.
    """
    values = np.asarray(values, dtype=np.float64)
    num_users = values.shape[0]
    # Centred on the observed means: a constant column's resamples are exactly its mean.
    centre = values.mean(axis=0)
    deviations = values - centre
    out = np.empty((samples, values.shape[1]))
    row = 0
    for counts in resample_counts(num_users, samples, seed):
        out[row:row + len(counts)] = centre + (counts.astype(np.float64) @ deviations) / num_users
        row += len(counts)
    return out


def column_intervals(values: np.ndarray, samples: int, seed: int, confidence: float) -> list[Interval]:
    """The mean of every column over its users, with its percentile bootstrap interval.

    Columns measured on the same users share the same resamples (drawn once per set of users).

    Args:
        values: float [U, C]; NaN where user u has no value in column c (left out of it).
        samples, seed: see :func:`resample_counts`.
        confidence: in (0, 1), e.g. 0.95.

    Returns:
        C Intervals, in column order.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"column_intervals: expected a [users, columns] array, got shape {values.shape}")
    if values.shape[0] == 0:
        return [Interval(float("nan"), float("nan"), float("nan"), 0)] * values.shape[1]
    present = ~np.isnan(values)
    out: list[Interval | None] = [None] * values.shape[1]
    tail = (1.0 - confidence) / 2
    # One group of columns per set of users (in evaluate, usually one for everything).
    patterns, group_of = np.unique(present.T, axis=0, return_inverse=True)
    for group, rows in enumerate(patterns):
        columns = np.flatnonzero(group_of.ravel() == group)
        if not rows.any():
            for c in columns:
                out[c] = Interval(float("nan"), float("nan"), float("nan"), 0)
            continue
        block = values[np.ix_(rows, columns)]
        means = bootstrap_means(block, samples, seed)
        low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
        observed = block.mean(axis=0)
        for i, c in enumerate(columns):
            out[c] = Interval(float(observed[i]), float(low[i]), float(high[i]), int(rows.sum()))
    return out  # type: ignore[return-value]


def mean_interval(values: np.ndarray, samples: int, seed: int, confidence: float) -> Interval:
    """Args: values float [U], one per user (NaN: none). Returns: Interval(mean, low, high, users)."""
    return column_intervals(np.asarray(values, dtype=np.float64)[:, None], samples, seed, confidence)[0]


def align(
    users_a: np.ndarray, values_a: np.ndarray, users_b: np.ndarray, values_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values of a and b of the users present in both, matched by user id.

    Args:
        users_a: [Ua] distinct user ids; values_a: [Ua, ...] in the same order.
        users_b: [Ub] distinct user ids; values_b: [Ub, ...] in the same order.

    Returns:
        (user ids [n] sorted, values of a [n, ...], values of b [n, ...]), n = users in both.
    """
    users_a, users_b = np.asarray(users_a), np.asarray(users_b)
    for name, users in (("a", users_a), ("b", users_b)):
        if len(np.unique(users)) != len(users):
            raise ValueError(f"align: the user ids of {name} repeat")
    common, index_a, index_b = np.intersect1d(users_a, users_b, assume_unique=True, return_indices=True)
    return common, np.asarray(values_a)[index_a], np.asarray(values_b)[index_b]


def paired_difference(
    users_a: np.ndarray,
    values_a: np.ndarray,
    users_b: np.ndarray,
    values_b: np.ndarray,
    samples: int,
    seed: int,
    confidence: float,
) -> Interval:
    """The mean per-user difference a - b over the users both were measured on, with its
    paired bootstrap interval.

    Args:
        users_a, users_b: [Ua], [Ub] distinct user ids.
        values_a, values_b: float [Ua], [Ub], one metric's per-user values in the same orders.
        samples, seed, confidence: see :func:`column_intervals`.

    Returns:
        Interval(mean difference, low, high, users in both).
    """
    _, a, b = align(users_a, values_a, users_b, values_b)
    return mean_interval(np.asarray(a, np.float64) - np.asarray(b, np.float64), samples, seed, confidence)


def by_user(
    users: np.ndarray, rankers: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Long per-(ranker, user) rows as one [users, rankers, metrics] array.

    Args:
        users: [N] user ids; rankers: [N] ranker names; values: float [N, M], one row each.

    Returns:
        (user ids [U] sorted, ranker names [R] sorted, float64 [U, R, M] with NaN where a
        ranker has no row for a user).

    Raises:
        ValueError: a (ranker, user) pair appears twice.
    """
    user_ids, user_pos = np.unique(np.asarray(users), return_inverse=True)
    names, ranker_pos = np.unique(np.asarray(rankers), return_inverse=True)
    values = np.asarray(values, dtype=np.float64)
    user_pos, ranker_pos = user_pos.ravel(), ranker_pos.ravel()
    if len(np.unique(user_pos * len(names) + ranker_pos)) != len(user_pos):
        raise ValueError("by_user: a (ranker, user) pair has more than one row")
    out = np.full((len(user_ids), len(names), values.shape[1]), np.nan)
    out[user_pos, ranker_pos] = values
    return user_ids, [str(n) for n in names], out


def compare(
    values: np.ndarray,
    rankers: Sequence[str],
    metrics: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    paired_metrics: Sequence[str],
    samples: int,
    seed: int,
    confidence: float,
) -> tuple[dict[str, dict[str, Interval]], dict[tuple[str, str], dict[str, Interval]]]:
    """Every metric of every ranker, and the paired differences, from one set of resamples.

    Args:
        values: float [U, R, M], rows aligned by user (see :func:`by_user`); NaN where a ranker
            has no value for a user.
        rankers: R names of axis 1; metrics: M names of axis 2.
        pairs: (a, b) ranker names: a - b is measured, per user, on the users both have.
        paired_metrics: the metrics (of ``metrics``) the pairs are compared on.
        samples, seed, confidence: see :func:`column_intervals`.

    Returns:
        ({ranker: {metric: Interval}}, {(a, b): {metric: Interval of a - b}}).
    """
    values = np.asarray(values, dtype=np.float64)
    ranker_at = {name: i for i, name in enumerate(rankers)}
    metric_at = {name: i for i, name in enumerate(metrics)}
    columns = [values[:, r, m] for r in range(len(rankers)) for m in range(len(metrics))]
    for a, b in pairs:
        for metric in paired_metrics:
            m = metric_at[metric]
            columns.append(values[:, ranker_at[a], m] - values[:, ranker_at[b], m])  # NaN unless both
    found = column_intervals(np.stack(columns, axis=1), samples, seed, confidence)
    singles: dict[str, dict[str, Interval]] = {}
    for i, (ranker, metric) in enumerate((r, m) for r in rankers for m in metrics):
        singles.setdefault(ranker, {})[metric] = found[i]
    paired: dict[tuple[str, str], dict[str, Interval]] = {}
    rest = iter(found[len(rankers) * len(metrics):])
    for pair in pairs:
        paired[pair] = {metric: next(rest) for metric in paired_metrics}
    return singles, paired


def as_bounds(intervals: Mapping[str, Mapping[str, Interval]]) -> dict[str, dict[str, list[float]]]:
    """{ranker: {metric: Interval}} -> {ranker: {metric: [low, high]}} (the JSON report's form)."""
    return {r: {m: [i.low, i.high] for m, i in metrics.items()} for r, metrics in intervals.items()}


def as_differences(paired: Mapping[str, Mapping[str, Interval]]) -> dict[str, dict[str, dict[str, float]]]:
    """{pair: {metric: Interval}} -> {pair: {metric: {diff, low, high, users}}} (the JSON form)."""
    return {
        pair: {m: {"diff": i.mean, "low": i.low, "high": i.high, "users": i.users} for m, i in metrics.items()}
        for pair, metrics in paired.items()
    }
