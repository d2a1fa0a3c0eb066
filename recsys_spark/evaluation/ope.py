"""Off-policy evaluation (OPE): a candidate policy's click rate estimated from another policy's
logged lists, as pure numpy functions.

The log holds one row per exposure: the list (``user``) it was shown in, its ``slot`` (0-based
position), its ``item``, the logging policy's ``propensity`` pi_0(item | user, slot) of placing
that item in that slot, and the ``reward`` (1 if clicked). The candidate (target) policy's
probability of the same placement, ``target_propensity`` pi_e(item | user, slot), comes from the
caller (e.g. :func:`ranking_propensities`).

The formulation is the per-position ("independent", item-position) one of the Open Bandit
Pipeline (obp): every (list, slot) is a bandit round whose context is (user, slot) and whose
action is the item, so the importance weight of a row is w = pi_e / pi_0. It is unbiased when a
click at a slot depends only on the user, the slot and the item there (a position-based click
model), not on the rest of the list.

Estimators (obp's ``InverseProbabilityWeighting``, ``SelfNormalizedInverseProbabilityWeighting``,
``DirectMethod`` and ``DoublyRobust``, summed over rows instead of averaged):

- IPS: sum_i w_i r_i
- SNIPS: sum_i w_i r_i / sum_i w_i (times the number of rows, to put it on IPS's scale)
- DM: sum_i q_target_i, with q_target_i = sum_a pi_e(a | x_i) q_hat(x_i, a)
- DR: sum_i [q_target_i + w_i (r_i - q_hat(x_i, a_i))]

each divided by the number of lists (``per="list"``: expected clicks per list, the sum over its
slots) or by the number of exposures (``per="exposure"``: obp's per-round mean, a click rate).
IPS and DR may clip the weights at ``clip`` (obp's ``lambda_``); SNIPS does not, as in obp.

Every estimate comes with a percentile bootstrap interval over lists (a whole list moves
together; the resamples are those of :mod:`recsys_spark.evaluation.intervals`) and the effective
sample size of its weights, ESS = (sum w)^2 / sum w^2. Below ``min_effective_sample_size`` the
estimate is refused: no value, and a reason saying so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_spark.evaluation import intervals

ESTIMATORS = ("ips", "snips", "dm", "dr")
PER = ("list", "exposure")

# Named in the one-line errors: the columns of the logged feedback.
_ID_COLUMNS = ("user", "slot", "item")


@dataclass(frozen=True, eq=False)
class LoggedFeedback:
    """Logged exposures, one row each: what the logging policy showed, how likely it was, and
    whether it was clicked. Arrays are checked and converted on construction; a bad column
    raises ValueError naming it.

    Attributes:
        user: int64 [N], the list (round) the exposure belongs to; the bootstrap resamples these.
        slot: int64 [N], the 0-based position in the list; (user, slot) does not repeat.
        item: int64 [N], the item shown.
        propensity: float64 [N] in (0, 1], pi_0(item | user, slot).
        reward: float64 [N], 0 or 1 (clicked).
        target_propensity: float64 [N] in [0, 1], pi_e(item | user, slot), or None (not set yet:
            see :meth:`with_target`).
    """

    user: np.ndarray
    slot: np.ndarray
    item: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    target_propensity: np.ndarray | None = None

    def __post_init__(self) -> None:
        columns = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("user", "slot", "item", "propensity", "reward"):
            if columns[name] is None:
                raise ValueError(f"logged feedback: column '{name}' is missing")
        converted = {name: _integers(name, columns[name]) for name in _ID_COLUMNS}
        converted["propensity"] = _floats("propensity", columns["propensity"])
        converted["reward"] = _floats("reward", columns["reward"])
        if columns["target_propensity"] is not None:
            converted["target_propensity"] = _floats("target_propensity", columns["target_propensity"])
        rows = len(converted["user"])
        for name, values in converted.items():
            if len(values) != rows:
                raise ValueError(f"logged feedback: column '{name}' has {len(values)} rows, 'user' has {rows}")
        if rows == 0:
            raise ValueError("logged feedback: no rows")
        _check_range("slot", converted["slot"] < 0, converted["slot"], "is negative")
        propensity = converted["propensity"]
        _check_range("propensity", np.isnan(propensity), propensity, "is missing (NaN)")
        _check_range("propensity", ~((propensity > 0) & (propensity <= 1)), propensity, "is not in (0, 1]")
        reward = converted["reward"]
        _check_range("reward", ~((reward == 0) | (reward == 1)), reward, "is not 0 or 1")
        if "target_propensity" in converted:
            target = converted["target_propensity"]
            _check_range("target_propensity", np.isnan(target), target, "is missing (NaN)")
            _check_range("target_propensity", ~((target >= 0) & (target <= 1)), target, "is not in [0, 1]")
        # One item per slot of a list: a repeat means a join duplicated exposures.
        order = np.lexsort((converted["slot"], converted["user"]))
        user, slot = converted["user"][order], converted["slot"][order]
        repeats = np.flatnonzero((user[1:] == user[:-1]) & (slot[1:] == slot[:-1]))
        if len(repeats):
            raise ValueError(
                f"logged feedback: (user, slot) repeats on {len(repeats)} rows, e.g. user "
                f"{user[repeats[0]]} slot {slot[repeats[0]]}"
            )
        for name, values in converted.items():
            object.__setattr__(self, name, values)

    @property
    def num_exposures(self) -> int:
        """N, the number of rows."""
        return len(self.user)

    def with_target(self, target_propensity: np.ndarray) -> LoggedFeedback:
        """The same log with the candidate policy's propensities set (float [N] in [0, 1])."""
        return dataclasses.replace(self, target_propensity=target_propensity)


@dataclass(frozen=True)
class Estimate:
    """One estimator's estimate of the candidate policy's value, or why there is none.

    Attributes:
        estimator: one of ``ESTIMATORS``.
        per: "list" (expected clicks per list) or "exposure" (per shown item).
        value, low, high: the estimate and its bootstrap interval; None when refused.
        confidence: of the interval, e.g. 0.95.
        units: lists (users) the bootstrap resamples.
        exposures: logged rows.
        ess: effective sample size of the estimator's importance weights (for DM, the unclipped
            weights: its reward model is only checked where the log covers the candidate).
        reason: None, or why there is no value (e.g. "effective sample size 12.3 below 100").
    """

    estimator: str
    per: str
    value: float | None
    low: float | None
    high: float | None
    confidence: float
    units: int
    exposures: int
    ess: float
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (None stays None: null)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """e.g. ``dr 0.1858 [0.1710, 0.2010] (1,168 users), ESS 4,210.0``, or the reason."""
        if self.value is None:
            return f"{self.estimator}: no estimate ({self.reason})"
        interval = intervals.Interval(self.value, self.low, self.high, self.units)  # type: ignore[arg-type]
        return f"{self.estimator} {interval.describe()}, ESS {self.ess:,.1f}"


def importance_weights(feedback: LoggedFeedback, clip: float | None = None) -> np.ndarray:
    """w = pi_e / pi_0 of every logged row, optionally clipped at ``clip`` (obp's ``lambda_``).

    Args:
        feedback: with ``target_propensity`` set.
        clip: None, or > 0: weights above it are set to it (less variance, some bias).

    Returns:
        float64 [N].
    """
    if feedback.target_propensity is None:
        raise ValueError(
            "logged feedback: column 'target_propensity' is missing: set it (e.g. with "
            "ranking_propensities and with_target) before estimating"
        )
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 (or None), got {clip}")
    weights = feedback.target_propensity / feedback.propensity
    return weights if clip is None else np.minimum(weights, clip)


@dataclass(frozen=True)
class Options:
    """How every estimator reports (the keyword arguments ``**options`` of the estimate_* functions).

    Args:
        per: "list" (expected clicks per list) or "exposure" (per shown item; obp's per round).
        min_effective_sample_size: below it, no value (a reason instead).
        samples, seed, confidence: of the bootstrap over lists (see
            :func:`recsys_spark.evaluation.intervals.resample_counts`).
    """

    per: str = "list"
    min_effective_sample_size: float = 100.0
    samples: int = 1000
    seed: int = 0
    confidence: float = 0.95


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2: how many on-policy rows the weighted log is worth (0 if all w = 0).

    Args:
        weights: float [N] >= 0.

    Returns:
        float in [0, N].
    """
    weights = np.asarray(weights, dtype=np.float64)
    squares = float(np.sum(weights**2))
    return float(np.sum(weights)) ** 2 / squares if squares > 0 else 0.0


def estimate_ips(
    feedback: LoggedFeedback,
    *,
    clip: float | None = None,
    **options: Any,
) -> Estimate:
    """Inverse propensity scoring: sum_i w_i r_i over lists or exposures.

    Args:
        feedback: N rows with ``target_propensity`` set.
        clip: None, or the weight cap (obp's ``lambda_``).
        options: :class:`Options`' fields (per, min_effective_sample_size, samples, seed, confidence).

    Returns:
        Estimate.
    """
    weights = importance_weights(feedback, clip)
    terms = weights * feedback.reward
    return _estimate("ips", feedback, terms, np.ones_like(terms), weights, Options(**options))


def estimate_snips(
    feedback: LoggedFeedback,
    **options: Any,
) -> Estimate:
    """Self-normalised IPS: sum_i w_i r_i / sum_i w_i, a click rate per exposure (times the mean
    list length for ``per="list"``). Unclipped, as in obp: normalising already bounds it by the
    largest reward.

    Args and Returns: see :func:`estimate_ips`.
    """
    weights = importance_weights(feedback)
    terms = weights * feedback.reward
    return _estimate("snips", feedback, terms, weights, weights, Options(**options))


def estimate_dm(
    feedback: LoggedFeedback,
    q_hat_target: np.ndarray,
    **options: Any,
) -> Estimate:
    """Direct method: the reward model's expected reward under the candidate, sum_i q_target_i.

    Args:
        feedback: N rows with ``target_propensity`` set (for the ESS only).
        q_hat_target: float [N], row i's sum_a pi_e(a | user_i, slot_i) q_hat(user_i, slot_i, a).
        Others and Returns: see :func:`estimate_ips`.
    """
    q_target = _model_column("q_hat_target", q_hat_target, feedback.num_exposures)
    weights = importance_weights(feedback)
    return _estimate("dm", feedback, q_target, np.ones_like(q_target), weights, Options(**options))


def estimate_dr(
    feedback: LoggedFeedback,
    q_hat_logged: np.ndarray,
    q_hat_target: np.ndarray,
    *,
    clip: float | None = None,
    **options: Any,
) -> Estimate:
    """Doubly robust: sum_i [q_target_i + w_i (r_i - q_logged_i)]. Unbiased if either the
    propensities or the reward model are right; the model's residuals are what is weighted, so
    a good model means less variance than IPS.

    Args:
        feedback: N rows with ``target_propensity`` set.
        q_hat_logged: float [N], q_hat(user_i, slot_i, item_i), the model's reward of the logged item.
        q_hat_target: float [N], see :func:`estimate_dm`.
        Others and Returns: see :func:`estimate_ips`.
    """
    q_logged = _model_column("q_hat_logged", q_hat_logged, feedback.num_exposures)
    q_target = _model_column("q_hat_target", q_hat_target, feedback.num_exposures)
    weights = importance_weights(feedback, clip)
    terms = q_target + weights * (feedback.reward - q_logged)
    return _estimate("dr", feedback, terms, np.ones_like(terms), weights, Options(**options))


def estimate_all(
    feedback: LoggedFeedback,
    q_hat_logged: np.ndarray | None = None,
    q_hat_target: np.ndarray | None = None,
    *,
    clip: float | None = None,
    **options: Any,
) -> dict[str, Estimate]:
    """IPS and SNIPS, and DM and DR when the reward model's columns are given; same resamples.

    Args and Returns: see :func:`estimate_dr`; ``clip`` applies to IPS and DR.
        Returns {estimator: Estimate} in ``ESTIMATORS`` order.
    """
    if (q_hat_logged is None) != (q_hat_target is None):
        raise ValueError("estimate_all: give both q_hat_logged and q_hat_target, or neither")
    out = {
        "ips": estimate_ips(feedback, clip=clip, **options),
        "snips": estimate_snips(feedback, **options),
    }
    if q_hat_target is not None:
        out["dm"] = estimate_dm(feedback, q_hat_target, **options)
        out["dr"] = estimate_dr(feedback, q_hat_logged, q_hat_target, clip=clip, **options)
    return out


def ranking_propensities(
    feedback: LoggedFeedback,
    ranked_users: np.ndarray,
    ranked_items: np.ndarray,
    explore_share: float = 0.0,
    explore_pool: np.ndarray | None = None,
) -> np.ndarray:
    """The candidate's probability of each logged placement, for a ranking with epsilon slots.

    The candidate shows user u the greedy list ``ranked_items[u]``, except that each slot is,
    independently with probability ``explore_share``, an exploration slot whose item is drawn
    uniformly from ``explore_pool`` (P items). So

        pi_e(item at slot k | u) = (1 - share) [item == greedy_u[k]] + share / P [item in pool].

    Assumptions (where the score stage differs, this is an approximation): a pick replaces the
    greedy item of its slot without shifting the others; picks are not de-duplicated against
    each other or the greedy list, nor checked against the user's exclusions. Slots at or past
    K (or -1 in ``ranked_items``) are empty: probability 0.

    Args:
        feedback: the N logged rows (user, slot, item).
        ranked_users: int [U] distinct user ids, covering every logged user.
        ranked_items: int [U, K] greedy item per slot, -1 where empty; row order of ranked_users.
        explore_share: in [0, 1].
        explore_pool: int [P] distinct item ids; required when explore_share > 0.

    Returns:
        float64 [N] in [0, 1], for :meth:`LoggedFeedback.with_target`.
    """
    ranked_users = np.asarray(ranked_users)
    ranked_items = np.asarray(ranked_items)
    if ranked_items.ndim != 2 or len(ranked_items) != len(ranked_users):
        raise ValueError(
            f"ranking_propensities: ranked_items must be [users, K] with {len(ranked_users)} rows, "
            f"got shape {ranked_items.shape}"
        )
    if len(np.unique(ranked_users)) != len(ranked_users):
        raise ValueError("ranking_propensities: ranked_users repeat")
    if not 0.0 <= explore_share <= 1.0:
        raise ValueError(f"ranking_propensities: explore_share must lie in [0, 1], got {explore_share}")
    pool = np.asarray(explore_pool if explore_pool is not None else [], dtype=np.int64)
    if explore_share > 0 and len(pool) == 0:
        raise ValueError("ranking_propensities: explore_share > 0 needs a non-empty explore_pool")
    if len(np.unique(pool)) != len(pool):
        raise ValueError("ranking_propensities: explore_pool repeats items")
    order = np.argsort(ranked_users)
    at = np.minimum(np.searchsorted(ranked_users, feedback.user, sorter=order), len(order) - 1)
    row = order[at]
    unranked = ranked_users[row] != feedback.user
    if unranked.any():
        raise ValueError(
            f"ranking_propensities: the candidate has no list for {len(np.unique(feedback.user[unranked]))} "
            f"logged users, e.g. user {feedback.user[unranked][0]}"
        )
    within = feedback.slot < ranked_items.shape[1]
    greedy = np.full(feedback.num_exposures, -1, dtype=np.int64)
    greedy[within] = ranked_items[row[within], feedback.slot[within]]
    shown = greedy >= 0
    in_pool = np.isin(feedback.item, pool)
    return np.where(shown, (1.0 - explore_share) * (greedy == feedback.item)
                    + explore_share / max(len(pool), 1) * in_pool, 0.0)


def _estimate(
    estimator: str,
    feedback: LoggedFeedback,
    numerator: np.ndarray,
    denominator: np.ndarray,
    weights: np.ndarray,
    options: "Options",
) -> Estimate:
    """Every estimator is (sum numerator / sum denominator) * (rows or 1 per list): one ratio of
    per-list sums, so the bootstrap resamples lists and recomputes it.

    IPS, DM and DR have denominator 1 per row (their value is a plain sum over rows); SNIPS has
    the weights. Scaled by rows per list for ``per="list"``, by 1 for ``per="exposure"``.
    """
    per, min_ess, confidence = options.per, options.min_effective_sample_size, options.confidence
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    lists, list_of = np.unique(feedback.user, return_inverse=True)
    units = len(lists)
    list_of = list_of.ravel()
    # Per list: [sum numerator, sum denominator, its rows (per="list") or 1 (per="exposure")].
    size = np.bincount(list_of, minlength=units).astype(np.float64) if per == "list" else np.ones(units)
    columns = np.stack([np.bincount(list_of, weights=numerator, minlength=units),
                        np.bincount(list_of, weights=denominator, minlength=units), size], axis=1)
    ess = effective_sample_size(weights)
    refused = dict(estimator=estimator, per=per, value=None, low=None, high=None, confidence=confidence,
                   units=units, exposures=feedback.num_exposures, ess=ess)
    if ess < min_ess:
        return Estimate(**refused, reason=f"effective sample size {ess:.1f} below {min_ess:g}")
    totals = columns.sum(axis=0)
    if totals[1] == 0:
        return Estimate(**refused, reason="the candidate gives no weight to any logged exposure")
    value = totals[0] / totals[1] * totals[2] / units
    means = intervals.bootstrap_means(columns, options.samples, options.seed)
    # A resample can hold no weight at all (SNIPS on a sparse overlap): it has no ratio, and is
    # left out of the quantiles rather than counted as 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled = means[:, 0] / means[:, 1] * means[:, 2]
    tail = (1.0 - confidence) / 2
    low, high = np.nanquantile(resampled, [tail, 1.0 - tail])
    return Estimate(estimator=estimator, per=per, value=float(value), low=float(low), high=float(high),
                    confidence=confidence, units=units, exposures=feedback.num_exposures, ess=ess)


def _integers(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"logged feedback: column '{name}' must be a 1-d array of integers, "
                         f"got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


def _floats(name: str, values: Any) -> np.ndarray:
    try:
        # None (a missing value from pandas or Arrow) becomes NaN, which the range checks catch.
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"logged feedback: column '{name}' must be numeric ({err})") from None
    if array.ndim != 1:
        raise ValueError(f"logged feedback: column '{name}' must be 1-d, got shape {array.shape}")
    return array


def _check_range(name: str, bad: np.ndarray, values: np.ndarray, problem: str) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"logged feedback: column '{name}' {problem} on {int(bad.sum())} rows, "
                         f"e.g. row {first} = {values[first]}")


def _model_column(name: str, values: np.ndarray, rows: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (rows,):
        raise ValueError(f"column '{name}' must have shape ({rows},) like the logged feedback, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"column '{name}' is not finite on {int((~np.isfinite(array)).sum())} rows")
    return array
