"""A feedback simulator: the clicks and purchases the generator's users would give to shown lists.

The score stage writes top-K lists (``schema.RECOMMENDATION_SCHEMA``); this module plays them
to the synthetic users of :func:`recsys_spark.data.world.build_world` and returns one row
per shown item with its outcome (the feedback contract, ``schema.FEEDBACK_SCHEMA``), so that a
policy's logged feedback, its off-policy estimates and its true value can all be had on the
same synthetic world.

The click model is position-based (examination): a user looks at slot ``s`` with probability
``examine(s)`` and, having looked, clicks the item there with probability ``relevance``, which
depends on the user's taste on that day and on the item alone, never on the rest of the list.
That is the assumption of :mod:`recsys_spark.evaluation.ope`'s per-position estimators, so
their estimates can be checked against the exact value :func:`expected_clicks` computes.

Draws are keyed, not streamed: the uniform behind a click is a pure function of (seed, run
date, user, slot) (:func:`recsys_spark.scoring.topk.uniforms`). A user's feedback therefore
does not depend on the order of the rows or on which other users are in the frame, and two
policies shown to the same users on the same day share their random numbers (common random
numbers): their clicks differ only where their click probabilities do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from recsys_spark import io, schema
from recsys_spark.config import GenerateConfig, is_uri
from recsys_spark.data.clickstream import typed_events, uuids
from recsys_spark.data.world import HOUR_WEIGHTS, World
from recsys_spark.errors import InputError
from recsys_spark.etl.pseudonym import PSEUDONYM_HEX_CHARS
from recsys_spark.scoring.topk import uniforms

log = logging.getLogger(__name__)

# What is read from a recommendations frame (and copied, but for item and slot, as it is).
_COPIED = [schema.USER_ID, schema.ITEM_ID, schema.RUN_DATE, schema.SLOT, schema.PROPENSITY, schema.POLICY,
           schema.POLICY_VERSION]
_LIST_KEY = [schema.RUN_DATE, schema.USER_ID, schema.POLICY, schema.POLICY_VERSION]

# Streams of the keyed draws (topk.uniforms offsets): one uniform each per (user, day, slot).
_CLICK_STREAM, _PURCHASE_STREAM, _SHOWN_STREAM = 0, 1, 2
# The draw key packs (date ordinal, user row, slot) into 64 bits, so a slot must fit in 12.
_SLOT_BITS, _USER_BITS = 12, 32
MAX_SLOT = 2**_SLOT_BITS - 1

_EPOCH = dt.date(1970, 1, 1)


# ----------------------------------------------------------------------------- the click model


@dataclass(frozen=True)
class ClickModel:
    """A position-based (examination) click model over the generator's world.

    For user ``u``, item ``i`` shown in slot ``s`` (0-based) on day ``d`` of the world::

        P(click)        = examine(s) * relevance(u, i, d)
        examine(s)      = 1 / (1 + s) ** position_bias
        relevance(u,i,d) = clip(scale * taste_d(u, c(i)) * appeal(i), 0, max_ctr)
        appeal(i)       = (popularity(i) / max popularity in c(i)) ** popularity_weight
        taste_d(u, c)   = (1 - w_d) * taste_early(u, c) + w_d * taste_late(u, c)
        w_d             = taste_drift * (d + 0.5) / days
        P(purchase | click) = purchase_rate

    ``c(i)`` is the item's category. ``w_d`` is the generator's drift weight (a session at
    second ``t`` of the log takes its late taste with probability ``taste_drift * t / (days *
    86400)``) at the middle of day ``d``, so ``taste_d`` is the user's expected taste that day.
    An item that the world launches after day ``d`` (``World.item_launch_day``) has relevance 0.

    With the defaults, on ``build_world(GenerateConfig())``, 20 slots and the log's last day,
    the click rate per shown item is about 1.3% for the 20 most popular items (0.25 clicks per
    list), 0.1% for 20 random items (0.02) and 4.3% for each user's 20 most relevant items in
    order (0.85, the best any list can do).

    Attributes:
        position_bias: the exponent of the examination curve (0: every slot is examined).
        scale: relevance before clipping is scale * taste * appeal (with 1, a user who shops
            one category only clicks its top item, when examined, with probability max_ctr).
        popularity_weight: how much an item's standing in its category matters (0: not at all).
        max_ctr: the highest relevance, in (0, 1].
        purchase_rate: P(purchase | click), in [0, 1].

    Raises:
        ValueError: a value out of its range (named).
    """

    position_bias: float = 1.0
    scale: float = 1.0
    popularity_weight: float = 0.5
    max_ctr: float = 0.5
    purchase_rate: float = 0.1

    # The values that may be any number >= 0 (max_ctr and purchase_rate have ranges of their own).
    _NON_NEGATIVE = ("position_bias", "scale", "popularity_weight")

    def __post_init__(self) -> None:
        for name in self._NON_NEGATIVE:
            if not getattr(self, name) >= 0:
                raise ValueError(f"ClickModel.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.max_ctr <= 1:
            raise ValueError(f"ClickModel.max_ctr must be in (0, 1], got {self.max_ctr}")
        if not 0 <= self.purchase_rate <= 1:
            raise ValueError(f"ClickModel.purchase_rate must be in [0, 1], got {self.purchase_rate}")

    def examine(self, slots: np.ndarray) -> np.ndarray:
        """P(the user looks at slot s): float64, the shape of ``slots`` (int, 0-based)."""
        return 1.0 / (1.0 + np.asarray(slots, dtype=np.float64)) ** self.position_bias

    def relevance(self, world: World, gen_cfg: GenerateConfig, users: np.ndarray, items: np.ndarray,
                  day: np.ndarray | int) -> np.ndarray:
        """P(click | examined) of each (user, item) pair on its day.

        Args:
            world: the world of ``gen_cfg``.
            gen_cfg: its settings (``taste_drift`` and ``days`` are read).
            users: int, world user rows (0 <= u < n_users).
            items: int, world item rows; -1 (``schema.EMPTY_SLOT``) is an empty slot: 0.
            day: int, day(s) of the world, 0 <= d < days.
            (``users``, ``items`` and ``day`` broadcast together, e.g. [n, 1], [n, k] and [n, 1].)

        Returns:
            float64 in [0, max_ctr], the broadcast shape.

        Raises:
            ValueError: a user, item or day outside the world.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        day = np.asarray(day, dtype=np.int64)
        _check_range("user row", users, 0, len(world.user_id) - 1)
        _check_range("item row", items, schema.EMPTY_SLOT, world.n_items - 1)
        _check_range("day", day, 0, gen_cfg.days - 1)
        users, items, day = np.broadcast_arrays(users, items, day)
        empty = items == schema.EMPTY_SLOT
        items = np.where(empty, 0, items)
        categories = world.item_category[items].astype(np.int64)
        late = drift_weight(gen_cfg, day)
        taste = (1.0 - late) * _taste(world.taste_early, users, categories, world.n_categories) + late * _taste(
            world.taste_late, users, categories, world.n_categories
        )
        out = np.clip(self.scale * taste * item_appeal(world, self.popularity_weight)[items], 0.0, self.max_ctr)
        unavailable = empty
        if world.item_launch_day is not None:
            unavailable = unavailable | (day < world.item_launch_day[items])
        return np.where(unavailable, 0.0, out)

    def click_probability(self, world: World, gen_cfg: GenerateConfig, users: np.ndarray, items: np.ndarray,
                          slots: np.ndarray, day: np.ndarray | int) -> np.ndarray:
        """``examine(slots) * relevance(...)``: arguments as :meth:`relevance`'s, ``slots`` too broadcast."""
        return self.examine(slots) * self.relevance(world, gen_cfg, users, items, day)


def drift_weight(gen_cfg: GenerateConfig, day: np.ndarray | int) -> np.ndarray:
    """The weight of the late taste on day ``day``: the generator's at the middle of that day."""
    return gen_cfg.taste_drift * (np.asarray(day, dtype=np.float64) + 0.5) / gen_cfg.days


def item_appeal(world: World, popularity_weight: float) -> np.ndarray:
    """float64 [n_items]: (popularity / the highest popularity in the item's category) ** weight."""
    top = np.zeros(world.n_categories)
    np.maximum.at(top, world.item_category, world.popularity)
    return (world.popularity / top[world.item_category]) ** popularity_weight


def _taste(cdf: np.ndarray, users: np.ndarray, categories: np.ndarray, n_cat: int) -> np.ndarray:
    """P(category) of each user from a row-keyed CDF (``user + cumulative taste``, flattened)."""
    at = users * n_cat + categories
    before = np.where(categories > 0, cdf[np.maximum(at - 1, 0)], users.astype(np.float64))
    return cdf[at] - before


def _check_range(name: str, values: np.ndarray, low: int, high: int) -> None:
    bad = (values < low) | (values > high)
    if np.any(bad):
        raise ValueError(f"{name} {values[bad].flat[0]} outside [{low}, {high}] ({int(bad.sum())} value(s))")


# ----------------------------------------------------------------------------- days and users


def day_of(gen_cfg: GenerateConfig, run_date: dt.date) -> int:
    """The day of the world a run date's lists are shown on: ``(run_date - start_date).days``.

    A run date after the log's last day is clamped to the last day (the world does not go on:
    tastes stay where they ended).

    Raises:
        InputError: a run date before the log's first day.
    """
    day = (run_date - dt.date.fromisoformat(gen_cfg.start_date)).days
    if day < 0:
        raise InputError(f"run_date {run_date} is before generate.start_date {gen_cfg.start_date}")
    return min(day, gen_cfg.days - 1)


def pseudonyms(user_ids: np.ndarray, key: bytes) -> np.ndarray:
    """The pseudonyms clean gives raw user ids: the pure-Python twin of its Spark HMAC.

    Clean hashes the id's decimal text (the long cast to string) with
    :func:`recsys_spark.etl.pseudonym.hmac_sha256_hex`.

    Args:
        user_ids: int [n], raw user ids.
        key: the pseudonymisation key.

    Returns:
        object [n] of str, ``PSEUDONYM_HEX_CHARS`` lowercase hex characters each.
    """
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out = np.empty(len(user_ids), dtype=object)
    for i, user_id in enumerate(np.asarray(user_ids, dtype=np.int64).tolist()):
        mac = keyed.copy()
        mac.update(str(user_id).encode("utf-8"))
        out[i] = mac.hexdigest()[:PSEUDONYM_HEX_CHARS]
    return out


def user_index(world: World, user_pseudonyms: np.ndarray, key: bytes) -> np.ndarray:
    """The world user row of each pseudonym.

    Args:
        world: the generated world.
        user_pseudonyms: str [n], user ids as clean wrote them.
        key: the key clean pseudonymised with.

    Returns:
        int64 [n]: the row in ``world.user_id``, -1 where the pseudonym is no world user's (a
        bot, another key, another world).
    """
    known = pd.Index(pseudonyms(world.user_id, key))
    return known.get_indexer(pd.Index(np.asarray(user_pseudonyms, dtype=object))).astype(np.int64)


def item_index(world: World, item_ids: np.ndarray) -> np.ndarray:
    """int64 [n]: the world item row of each product_id, -1 where it is none of the world's."""
    return pd.Index(world.product_id).get_indexer(pd.Index(np.asarray(item_ids, dtype=np.int64))).astype(np.int64)


# ----------------------------------------------------------------------------- truth


def expected_clicks(world: World, gen_cfg: GenerateConfig, lists: tuple[np.ndarray, np.ndarray], model: ClickModel,
                    day: int) -> np.ndarray:
    """The exact expected clicks of each list: the sum over its slots of examine * relevance.

    For a deterministic list this is its on-policy truth. A stochastic policy's truth is the
    mean over its draws: average this over many lists drawn from it (e.g. the lists of score
    runs with different ``score.seed``, or many draws of its sampler for the same users).

    Args:
        world: the world of ``gen_cfg``.
        gen_cfg: its settings.
        lists: (users int [n] world user rows, items int [n, k] world item rows by slot, -1 for
            an empty slot).
        model: the click model.
        day: the day of the world the lists are shown on (see :func:`day_of`).

    Returns:
        float64 [n].
    """
    users, items = lists
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 2 or len(items) != len(users):
        raise ValueError(f"lists: items must be [n, k] with n = {len(users)} users, got shape {items.shape}")
    slots = np.arange(items.shape[1])[None, :]
    return model.click_probability(world, gen_cfg, np.asarray(users)[:, None], items, slots, day).sum(axis=1)


def policy_value(world: World, gen_cfg: GenerateConfig, recommendations: pd.DataFrame, model: ClickModel,
                 key: bytes) -> float:
    """The mean expected clicks per list of a recommendations frame (users of the world only).

    A list is the rows of one (run_date, user_id, policy, policy_version); it is valued on its
    run date's day of the world (:func:`day_of`). For a stochastic policy one frame is one
    draw: its value is an unbiased estimate of the policy's, whose exact value is the mean
    over draws (see :func:`expected_clicks`).

    Args:
        world, gen_cfg, model, key: as for :func:`simulate_feedback`.
        recommendations: rows with user_id, item_id, slot and run_date.

    Returns:
        Expected clicks per list.

    Raises:
        InputError: a column is missing, an item is not the world's, or no user is.
    """
    rows = _exposures(world, gen_cfg, recommendations, key)
    if len(rows.frame) == 0:
        raise InputError("policy_value: no recommended user is a user of the world (wrong key or config?)")
    p = model.click_probability(world, gen_cfg, rows.users, rows.items, rows.slots, rows.days)
    lists = rows.frame.groupby(_LIST_KEY, sort=False, dropna=False).ngroup().to_numpy()
    return float(np.bincount(lists, weights=p).mean())


# ----------------------------------------------------------------------------- simulation


def simulate_feedback(world: World, gen_cfg: GenerateConfig, recommendations: pd.DataFrame, model: ClickModel,
                      key: bytes, seed: int) -> pd.DataFrame:
    """Show the recommended lists to the world's users and draw their clicks and purchases.

    Every list of a run date is shown once, on that date, at one moment: ``shown_at`` is the
    run date's midnight UTC plus a second of that same day drawn by the generator's hour-of-day
    profile (``HOUR_WEIGHTS``). It is valued on the world's day :func:`day_of` (the last day
    for run dates after the log). Rows of users who are not the world's are skipped, and
    counted in ``attrs`` (and logged).

    Args:
        world: the world of ``gen_cfg``.
        gen_cfg: the generator's settings the log was made with.
        recommendations: rows of ``schema.RECOMMENDATION_SCHEMA`` (at least user_id, item_id,
            run_date, slot, propensity, policy, policy_version), e.g. ``toPandas()`` of a
            recommendations partition; run_date as dates, timestamps or ISO text.
        model: the click model.
        key: the key clean pseudonymised user ids with.
        seed: with the run date, the user and the slot, keys every draw.

    Returns:
        One row per shown item of a world user, columns ``schema.FEEDBACK_COLUMNS`` (user_id str,
        item_id int64, run_date datetime.date, slot int32, propensity float64, policy and
        policy_version str, shown_at datetime64[ns, UTC], clicked and purchased bool), sorted by
        run_date, user_id, policy, policy_version, slot; ``attrs["unknown_users"]`` and
        ``attrs["unknown_rows"]``: the distinct users and the rows skipped.

    Raises:
        InputError: a column is missing, an item is not the world's, a slot is out of
            [0, MAX_SLOT], a (list, slot) repeats, or a run date is before the log.
    """
    rows = _exposures(world, gen_cfg, recommendations, key)
    frame = rows.frame
    p_click = model.click_probability(world, gen_cfg, rows.users, rows.items, rows.slots, rows.days)
    slot_keys = _draw_keys(seed, rows.ordinals, rows.users, rows.slots)
    clicked = uniforms(slot_keys, 1, _CLICK_STREAM)[:, 0] < p_click
    purchased = clicked & (uniforms(slot_keys, 1, _PURCHASE_STREAM)[:, 0] < model.purchase_rate)
    second = shown_second(uniforms(_draw_keys(seed, rows.ordinals, rows.users, 0), 1, _SHOWN_STREAM)[:, 0])
    midnight = frame[schema.RUN_DATE].to_numpy(dtype="datetime64[s]").astype(np.int64)
    out = pd.DataFrame(
        {
            schema.USER_ID: frame[schema.USER_ID].to_numpy(dtype=object),
            schema.ITEM_ID: frame[schema.ITEM_ID].to_numpy(dtype=np.int64),
            schema.RUN_DATE: frame[schema.RUN_DATE].dt.date.to_numpy(dtype=object),
            schema.SLOT: rows.slots.astype(np.int32),
            schema.PROPENSITY: frame[schema.PROPENSITY].to_numpy(dtype=np.float64),
            schema.POLICY: frame[schema.POLICY].to_numpy(dtype=object),
            schema.POLICY_VERSION: frame[schema.POLICY_VERSION].to_numpy(dtype=object),
            schema.SHOWN_AT: pd.to_datetime(midnight + second, unit="s", utc=True),
            schema.CLICKED: clicked,
            schema.PURCHASED: purchased,
        },
        columns=schema.FEEDBACK_COLUMNS,
    )
    out.attrs.update(unknown_users=rows.unknown_users, unknown_rows=rows.unknown_rows)
    log.info("feedback: %d exposures, %d clicks, %d purchases; skipped %d row(s) of %d unknown user(s)",
             len(out), int(clicked.sum()), int(purchased.sum()), rows.unknown_rows, rows.unknown_users)
    return out


def shown_second(u: np.ndarray) -> np.ndarray:
    """int64: the second of the day (0..86399) of each uniform, by the hour-of-day profile.

    The hour is the inverse of ``HOUR_WEIGHTS``' CDF at ``u``; where ``u`` falls inside that
    hour's share sets the second within it.
    """
    cdf = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
    hour = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
    start = np.where(hour > 0, cdf[np.maximum(hour - 1, 0)], 0.0)
    within = np.clip((u - start) / (cdf[hour] - start), 0.0, 1.0)
    return hour * 3600 + np.minimum((within * 3600).astype(np.int64), 3599)


@dataclass(frozen=True)
class _Exposures:
    """The rows of a recommendations frame that belong to world users, as world indices."""

    frame: pd.DataFrame  # the kept rows, run_date as datetime64, sorted
    users: np.ndarray  # int64 [n] world user rows
    items: np.ndarray  # int64 [n] world item rows
    slots: np.ndarray  # int64 [n]
    days: np.ndarray  # int64 [n] days of the world
    ordinals: np.ndarray  # int64 [n] the run dates' proleptic ordinals
    unknown_users: int
    unknown_rows: int


def _exposures(world: World, gen_cfg: GenerateConfig, recommendations: pd.DataFrame, key: bytes) -> _Exposures:
    missing = [c for c in _COPIED if c not in recommendations.columns]
    if missing:
        raise InputError(f"recommendations: column(s) {', '.join(missing)} missing")
    frame = recommendations[_COPIED].copy()
    frame[schema.RUN_DATE] = pd.to_datetime(frame[schema.RUN_DATE]).dt.normalize()
    frame = frame.sort_values([*_LIST_KEY, schema.SLOT], kind="stable", ignore_index=True)

    slots = frame[schema.SLOT].to_numpy(dtype=np.int64)
    if len(slots) and (slots.min() < 0 or slots.max() > MAX_SLOT):
        raise InputError(f"recommendations: slot outside [0, {MAX_SLOT}]: {slots[(slots < 0) | (slots > MAX_SLOT)][0]}")
    repeats = frame.duplicated([*_LIST_KEY, schema.SLOT]).to_numpy()
    if repeats.any():
        first = frame[repeats].iloc[0]
        raise InputError(f"recommendations: {int(repeats.sum())} (list, slot) repeat(s), e.g. user "
                         f"{first[schema.USER_ID]} slot {first[schema.SLOT]} on {first[schema.RUN_DATE].date()}")

    users = user_index(world, frame[schema.USER_ID].to_numpy(dtype=object), key)
    unknown = users < 0
    unknown_users = int(frame.loc[unknown, schema.USER_ID].nunique())
    if unknown.any():
        log.warning("feedback: %d recommendation row(s) of %d user(s) not in the world skipped",
                    int(unknown.sum()), unknown_users)
    frame, users, slots = frame[~unknown].reset_index(drop=True), users[~unknown], slots[~unknown]

    items = item_index(world, frame[schema.ITEM_ID].to_numpy(dtype=np.int64))
    if (items < 0).any():
        raise InputError(f"recommendations: {int((items < 0).sum())} row(s) recommend items that are not the "
                         f"world's, e.g. item_id {frame[schema.ITEM_ID].to_numpy()[items < 0][0]}: is gen_cfg the "
                         "generator config of the log?")
    epoch_days = frame[schema.RUN_DATE].to_numpy(dtype="datetime64[D]").astype(np.int64)
    days = epoch_days - (np.datetime64(gen_cfg.start_date, "D") - np.datetime64(_EPOCH, "D")).astype(np.int64)
    if (days < 0).any():
        day_of(gen_cfg, frame[schema.RUN_DATE][days < 0].iloc[0].date())  # raises, naming the date
    days = np.minimum(days, gen_cfg.days - 1)
    ordinals = epoch_days + _EPOCH.toordinal()
    return _Exposures(frame, users, items, slots, days, ordinals, unknown_users, int(unknown.sum()))


def _draw_keys(seed: int, ordinals: np.ndarray, users: np.ndarray, slots: np.ndarray | int) -> np.ndarray:
    """int64 keys of :func:`uniforms`: (ordinal, user row, slot) packed in 64 bits, XOR a hash of the seed.

    Distinct (day, user, slot) give distinct keys for one seed (users below 2^32, slots below
    2^12, ordinals below 2^20, i.e. dates before the year 2870).
    """
    salt = int.from_bytes(hashlib.sha256(f"feedback_sim:{seed}".encode()).digest()[:8], "little")
    packed = (
        (np.asarray(ordinals, dtype=np.uint64) << np.uint64(_USER_BITS + _SLOT_BITS))
        | (np.asarray(users, dtype=np.uint64) << np.uint64(_SLOT_BITS))
        | np.asarray(slots, dtype=np.uint64)
    )
    return (packed ^ np.uint64(salt)).view(np.int64)


# ----------------------------------------------------------------------------- output


def write_feedback(spark: SparkSession | None, frame: pd.DataFrame, path: str) -> list[str]:
    """Write feedback rows as Parquet partitioned by run_date, replacing only the dates present.

    A local folder is written with pyarrow (no Spark needed): each date's rows go to
    ``<path>/run_date=YYYY-MM-DD/part-00000.parquet``, written beside and then swapped in. A URI
    is written by Spark (``spark`` required) through :func:`recsys_spark.io.write_partitioned`.
    Either way ``spark.read.parquet(path)`` (:func:`recsys_spark.io.read_feedback`) reads back
    ``schema.FEEDBACK_SCHEMA``'s names and types.

    Args:
        spark: a session, or None for a local path.
        frame: :func:`simulate_feedback` output.
        path: the feedback folder (e.g. what ``paths.feedback`` resolves to).

    Returns:
        The ISO dates written.

    Raises:
        InputError: a column is missing, or a URI without a session.
    """
    missing = [c for c in schema.FEEDBACK_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"feedback: column(s) {', '.join(missing)} missing")
    dates = sorted({d.isoformat() for d in pd.to_datetime(frame[schema.RUN_DATE]).dt.date})
    if is_uri(path):
        if spark is None:
            raise InputError(f"feedback: writing to {path} needs a Spark session")
        rows = spark.createDataFrame(frame[schema.FEEDBACK_COLUMNS], schema.FEEDBACK_SCHEMA)
        io.write_partitioned(rows, path, schema.RUN_DATE)
        return dates
    arrow_schema = schema.FEEDBACK_PARTITION_ARROW_SCHEMA
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    day_text = pd.to_datetime(frame[schema.RUN_DATE]).dt.strftime("%Y-%m-%d")
    for date in dates:
        rows = frame[(day_text == date).to_numpy()]
        table = pa.Table.from_pandas(rows[arrow_schema.names], schema=arrow_schema, preserve_index=False)
        final = root / f"{schema.RUN_DATE}={date}"
        staging = root / f".{schema.RUN_DATE}={date}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        pq.write_table(table, staging / "part-00000.parquet")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    log.info("feedback: wrote %d row(s) for %d date(s) to %s", len(frame), len(dates), path)
    return dates


# Seconds after the exposure: the click's view, then (for a purchase) the cart and the purchase.
CLICK_DELAY_S = (5, 600)
CART_AFTER_VIEW_S = 40
PURCHASE_AFTER_CART_S = 60


def click_events(world: World, feedback: pd.DataFrame, key: bytes, seed: int) -> pd.DataFrame:
    """The events the simulated clicks add to the clickstream: what the shop's own log would
    record after a click on a recommended item, so that the next day's clean and featurize see
    the users' reactions (the closed loop of exploration).

    A click is a view a few seconds to minutes after ``shown_at`` (``CLICK_DELAY_S``); a
    purchase adds a cart and a purchase after it. The clicks of one shown list form one session.

    Args:
        world: the world the feedback was simulated in.
        feedback: :func:`simulate_feedback` rows (user_id pseudonyms of world users).
        key: the pseudonymisation key the user ids were made with.
        seed: seeds the delays and session ids.

    Returns:
        events with ``schema.RAW_COLUMNS`` as :func:`recsys_spark.data.clickstream.generate_events`
        yields them (raw user ids, time-ordered), ready for ``raw_text.to_raw_text``.

    Raises:
        InputError: a clicked row whose user or item is not the world's.
    """

    clicked = feedback[feedback[schema.CLICKED].to_numpy(dtype=bool)].reset_index(drop=True)
    users = user_index(world, clicked[schema.USER_ID].to_numpy(dtype=object), key)
    items = item_index(world, clicked[schema.ITEM_ID].to_numpy(dtype=np.int64))
    if (users < 0).any() or (items < 0).any():
        raise InputError(f"{int((users < 0).sum())} clicked row(s) name a user and {int((items < 0).sum())} an item "
                         "that is not the simulated world's: simulate the feedback with the same world and key")
    rng = np.random.default_rng([seed, 5])
    lists = clicked.groupby(_LIST_KEY, sort=False, dropna=False).ngroup().to_numpy()
    sessions = uuids(rng, int(lists.max()) + 1 if len(lists) else 0)[lists]
    since_epoch = pd.to_datetime(clicked[schema.SHOWN_AT], utc=True) - pd.Timestamp(0, tz="UTC")
    shown = (since_epoch // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    view_t = shown + rng.integers(*CLICK_DELAY_S, size=len(clicked), endpoint=True)
    bought = clicked[schema.PURCHASED].fillna(False).to_numpy(dtype=bool)
    parts = [(view_t, np.full(len(clicked), schema.EVENT_TYPES.index("view")), np.arange(len(clicked)))]
    for offset, name in ((CART_AFTER_VIEW_S, "cart"), (CART_AFTER_VIEW_S + PURCHASE_AFTER_CART_S, "purchase")):
        rows = np.flatnonzero(bought)
        parts.append((view_t[rows] + offset, np.full(len(rows), schema.EVENT_TYPES.index(name)), rows))
    t, etype, row = (np.concatenate(column) for column in zip(*parts))
    internal = pd.DataFrame({"t": t, "etype": etype.astype(np.int8), "item": items[row],
                             "user_id": world.user_id[users[row]], "session": sessions[row]})
    internal = internal.sort_values(["t", "session", "etype"], kind="stable")
    return typed_events(internal, world, epoch0=0).reset_index(drop=True)
