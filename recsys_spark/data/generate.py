"""``recsys generate``: a synthetic e-commerce clickstream in the raw (REES46) contract.

The data has the structure that makes sequential recommendation worth doing, so that a
SASRec-style model has something to learn beyond popularity and co-occurrence:

* items have Zipf popularity, a category (dotted code, some null), a brand (some null) and a
  log-normal price around their category's level;
* every user has a taste over categories that drifts over the period (a mix of two Dirichlet
  draws whose weight moves with time), so recent history predicts better than old history;
* inside a session the next item is often one of a fixed, small list of *complements* of the
  previous item (an order-dependent signal), else from the same category, else a fresh one;
* views lead to carts and carts to purchases or removals; activity per user is heavy-tailed.

On top come the faults of real logs, each at its configured rate and counted: exact duplicate
lines, malformed lines, empty ids, unknown event types, missing sessions and a few bots
(``defects=false`` turns all of them off, whatever the rates say).

Other shapes of real logs, each off by default (the default output does not change):
``user_active_days`` (users active in a short window each: a thin tail of recent users),
``burst_share`` (ratings-like bursts of 100-300 distinct items a user-minute's pace),
``empty_columns``, ``event_types`` (e.g. purchases only), ``item_id_offset`` (ids near 2^62),
``naive_timestamps``, ``string_ids`` (UUID visitors, SKU and zero-padded product ids) and
``format=parquet``. :func:`regime_overrides` names a few mixes.

Everything is vectorised with numpy across the sessions of a day and generated day by day, so
memory stays bounded by one day of events; a seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from recsys_spark import schema
from recsys_spark.config import PRODUCT_ID_BASE, PRODUCT_ID_SPAN, Config, GenerateConfig, is_uri
from recsys_spark.errors import ConfigError
from recsys_spark.io import HadoopFs

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
VIEW, CART, REMOVE, PURCHASE = (schema.EVENT_TYPES.index(t) for t in ("view", "cart", "remove_from_cart", "purchase"))
DIRT_KINDS = ("duplicates", "malformed", "null_ids", "unknown_event_types", "bot_events", "missing_sessions")
COMPLEMENTS_PER_ITEM = 3
MAX_SESSION_LENGTH = 200
# Longer pauses would split one generated session in two under clean's 30-minute rule.
MAX_VIEW_GAP_S = 20 * 60
BOT_VIEWS = (150, 450)
# A ratings-like burst: this many events (inclusive), this many seconds apart (inclusive).
BURST_EVENTS = (100, 300)
BURST_GAP_S = (1, 2)
# Burst items are drawn for this many session-items at a time (bounds the memory of a day).
BURST_DRAW_CELLS = 2_000_000
UNKNOWN_EVENT_TYPES = np.array(["wishlist", "VIEW ", "Purchase", "click", "add_to_cart "], dtype=object)
NULL_CATEGORY_CODE_SHARE = 0.25
NULL_BRAND_SHARE = 0.15
# Share of sessions by hour of day (UTC): quiet nights, busy evenings.
HOUR_WEIGHTS = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 4, 4.5, 5, 5, 5, 5, 5, 5.5, 6, 7, 7.5, 7, 5.5, 3.5, 2], dtype=float
)
CATEGORY_TREE = {
    "electronics": ["smartphone", "audio.headphone", "video.tv", "clocks", "tablet", "camera.photo", "audio.acoustic"],
    "appliances": ["kitchen.washer", "kitchen.refrigerators", "environment.vacuum", "iron", "kitchen.microwave"],
    "computers": ["notebook", "desktop", "peripherals.mouse", "components.videocards", "peripherals.printer"],
    "apparel": ["shoes", "shoes.keds", "skirt", "jeans", "umbrella", "costume"],
    "furniture": ["bedroom.bed", "living_room.sofa", "kitchen.table", "bathroom.toilet"],
    "kids": ["toys", "carriage", "skates"],
    "sport": ["bicycle", "tennis", "ski", "trainer"],
    "construction": ["tools.drill", "tools.light", "components.faucet"],
    "auto": ["accessories.player", "accessories.alarm", "accessories.compressor"],
    "accessories": ["bag", "wallet", "umbrella"],
    "country_yard": ["cultivator", "lawn_mower", "furniture.hammok"],
    "medicine": ["tools.tonometer"],
    "stationery": ["cartrige", "paper"],
}
SYLLABLES = ["sa", "mo", "ri", "ko", "lu", "ne", "ta", "vi", "zo", "ba", "el", "un", "dor", "fi", "ka", "xi"]


@dataclass(frozen=True)
class DirtRates:
    """Per-row probabilities of each kind of fault (malformed lines are added, not replaced)."""

    duplicate: float
    malformed: float
    null_id: float
    unknown_event: float
    missing_session: float

    @classmethod
    def from_config(cls, cfg: GenerateConfig) -> DirtRates:
        return cls(
            duplicate=cfg.duplicate_rate,
            malformed=cfg.malformed_rate,
            null_id=cfg.null_id_rate,
            unknown_event=cfg.unknown_event_rate,
            missing_session=cfg.missing_session_rate,
        )


def effective_config(cfg: GenerateConfig) -> GenerateConfig:
    """The settings the generator works with: with ``defects`` off, every fault rate and ``n_bots`` are 0.

    A log made with ``defects=false`` is the same as one made with those keys set to 0.
    """
    if cfg.defects:
        return cfg
    return dataclasses.replace(
        cfg,
        n_bots=0,
        duplicate_rate=0.0,
        malformed_rate=0.0,
        null_id_rate=0.0,
        unknown_event_rate=0.0,
        missing_session_rate=0.0,
    )


REGIMES: dict[str, tuple[str, ...]] = {
    "demo": (),
    # MovieLens-like: many ratings at once, users active for two months of four, no brand or price.
    "ratings": (
        "generate.days=120",
        "generate.user_active_days=60",
        "generate.burst_share=0.5",
        "generate.empty_columns=[brand,price,category_code]",
    ),
    "long_tail": ("generate.n_items=20000", "generate.zipf_exponent=0.8"),
    # A shop's session log: anonymous visitors with one session each, over two months, and a
    # catalogue so large and flat that most products are seen once (issue 31's real log: 11,000
    # views of 7,000 products by 3,000 visitors).
    "session_log": ("generate.sessions_per_user=1", "generate.days=60", "generate.n_items=20000",
                    "generate.zipf_exponent=0.6"),
}


def regime_overrides(name: str) -> list[str]:
    """The dotted overrides of a named data shape (``demo``: none; ``ratings``; ``long_tail``;
    ``session_log``).

    Put them before the caller's own overrides, which then win:
    ``load_config(path, [*regime_overrides("ratings"), "generate.n_users=200"])``.

    Raises:
        ConfigError: an unknown name.
    """
    if name not in REGIMES:
        raise ConfigError(f"unknown generator regime {name!r} (one of {', '.join(sorted(REGIMES))})")
    return list(REGIMES[name])


@dataclass(frozen=True)
class World:
    """The fixed catalogue, users and session schedule behind a generated clickstream.

    Item arrays have length ``n_items``, user arrays ``n_users``; sessions are sorted by day.
    """

    product_id: np.ndarray  # int64 [n_items]
    item_category: np.ndarray  # int32 [n_items], index into the category arrays
    brand: np.ndarray  # object [n_items], None where unknown
    price: np.ndarray  # float64 [n_items], 2 decimals
    popularity: np.ndarray  # float64 [n_items], Zipf weight (not normalised)
    complements: np.ndarray  # int32 [n_items, COMPLEMENTS_PER_ITEM]
    category_id: np.ndarray  # int64 [n_categories]
    category_code: np.ndarray  # object [n_categories], None where unknown
    cat_item_keys: np.ndarray  # float64 [n_items]: category + cumulative popularity inside it
    cat_item_order: np.ndarray  # int32 [n_items]: item index for each key
    user_id: np.ndarray  # int64 [n_users]
    taste_early: np.ndarray  # float64 [n_users * n_categories]: user + cumulative taste
    taste_late: np.ndarray  # float64 [n_users * n_categories]
    bot_user_ids: np.ndarray  # int64 [n_bots]
    session_user: np.ndarray  # int32 [n_sessions]
    session_day: np.ndarray  # int32 [n_sessions]
    session_start: np.ndarray  # int64 [n_sessions], seconds into the day
    bot_day_sessions: np.ndarray  # int32 [n_bot_sessions, 2]: (bot, day)
    # int32 [n_items], the day each item launches (0: from the start); None: all from the start.
    item_launch_day: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return len(self.product_id)

    def on_day(self, day: int) -> World:
        """The world as day ``day`` sees it: items launched later have no popularity (nobody
        draws them), and a complement not yet launched is replaced by its category's first item.

        Returns:
            ``self`` when every item is launched by ``day``.
        """
        if self.item_launch_day is None or int(self.item_launch_day.max()) <= day:
            return self
        launched = self.item_launch_day <= day
        popularity = np.where(launched, self.popularity, 0.0)
        order, keys = _category_sampler(self.item_category, popularity, self.n_categories)
        complements = np.where(launched[self.complements], self.complements,
                               category_heads(self.item_category, self.popularity)[self.item_category[self.complements]])
        return dataclasses.replace(self, popularity=popularity, cat_item_order=order, cat_item_keys=keys,
                                   complements=complements.astype(np.int32))

    def available(self, items: np.ndarray) -> np.ndarray:
        """``items`` with those this world's day has not launched (no popularity) replaced by
        their category's first item."""
        missing = self.popularity[items] == 0
        if not missing.any():
            return items
        heads = category_heads(self.item_category, self.popularity)
        return np.where(missing, heads[self.item_category[items]], items).astype(items.dtype)

    @property
    def n_categories(self) -> int:
        return len(self.category_id)

    def sample_in_category(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items drawn by popularity inside the given categories (one uniform ``u`` each)."""
        pos = np.searchsorted(self.cat_item_keys, categories + u, side="right")
        return self.cat_item_order[np.minimum(pos, self.n_items - 1)]

    def sample_taste(self, users: np.ndarray, late: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Categories drawn from each user's early or late taste (one uniform ``u`` each)."""
        n_cat = self.n_categories
        keys = users.astype(np.float64) + u
        pos = np.where(
            late,
            np.searchsorted(self.taste_late, keys, side="right"),
            np.searchsorted(self.taste_early, keys, side="right"),
        )
        return np.clip(pos - users.astype(np.int64) * n_cat, 0, n_cat - 1).astype(np.int32)


# ----------------------------------------------------------------------------- world


def build_world(cfg: GenerateConfig) -> World:
    """Draw the catalogue, the users with their tastes and activity, and the session schedule.

    Args:
        cfg: the generator's settings; only ``seed`` and the size/shape keys are used here.

    Returns:
        A :class:`World`, the same for the same config.
    """
    cfg = effective_config(cfg)
    rng = np.random.default_rng([cfg.seed, 0])
    n_items, n_cat = cfg.n_items, cfg.n_categories

    category_id = 2_053_013_552_226_107_603 + np.sort(rng.choice(10**17, size=n_cat, replace=False)).astype(np.int64)
    category_code = _category_codes(n_cat, rng)
    category_price = np.exp(rng.normal(np.log(60.0), 1.0, size=n_cat))
    related = (np.arange(n_cat) + rng.integers(1, max(n_cat, 2), size=n_cat)) % n_cat

    # Every category holds an item; the rest spread over categories of uneven size.
    category_share = rng.dirichlet(np.full(n_cat, 2.0))
    item_category = np.concatenate([np.arange(n_cat), rng.choice(n_cat, size=n_items - n_cat, p=category_share)])
    item_category = item_category.astype(np.int32)[rng.permutation(n_items)]
    popularity = (1.0 / np.arange(1, n_items + 1) ** cfg.zipf_exponent)[rng.permutation(n_items)]
    order, cat_item_keys = _category_sampler(item_category, popularity, n_cat)

    # Complements: a few items of the related category, favouring its popular ones mildly.
    starts = np.searchsorted(item_category[order], np.arange(n_cat + 1))
    complements = np.empty((n_items, COMPLEMENTS_PER_ITEM), dtype=np.int32)
    for c in range(n_cat):
        members = order[starts[c] : starts[c + 1]]
        targets = order[starts[related[c]] : starts[related[c] + 1]]
        weights = np.sqrt(popularity[targets])
        picks = rng.choice(len(targets), size=(len(members), COMPLEMENTS_PER_ITEM), p=weights / weights.sum())
        complements[members] = targets[picks]

    # Each category sells a few brands (popular brands in many categories).
    brand_names = _brand_names(cfg.n_brands, rng)
    brand_popularity = 1.0 / np.arange(1, cfg.n_brands + 1)
    brands_per_category = rng.integers(2, 9, size=n_cat)
    brand_popularity /= brand_popularity.sum()
    category_brands = rng.choice(cfg.n_brands, size=brands_per_category.sum(), p=brand_popularity)
    first_brand = np.concatenate([[0], np.cumsum(brands_per_category)[:-1]])
    pick = first_brand[item_category] + rng.integers(0, brands_per_category[item_category])
    brand = brand_names[category_brands[pick]].astype(object)
    brand[rng.random(n_items) < NULL_BRAND_SHARE] = None
    price = category_price[item_category] * rng.lognormal(0.0, 0.35, size=n_items)
    product_id = rng.choice(PRODUCT_ID_SPAN, size=n_items, replace=False).astype(np.int64) + PRODUCT_ID_BASE
    product_id += cfg.item_id_offset

    n_users = cfg.n_users
    ids = rng.choice(90_000_000, size=n_users + cfg.n_bots, replace=False).astype(np.int64) + 510_000_000
    # Tastes centre on the popular categories but each user favours a few of them.
    category_mass = np.bincount(item_category, weights=popularity, minlength=n_cat)
    # Total Dirichlet mass = taste_concentration (+ a little): low values give shoppers who
    # keep to a few categories, as real shop users do; high values make tastes look global.
    alpha = cfg.taste_concentration * category_mass / category_mass.sum() + 0.01
    taste_early = _row_keyed_cdf(rng.dirichlet(alpha, size=n_users))
    taste_late = _row_keyed_cdf(rng.dirichlet(alpha, size=n_users))
    session_user, session_day, session_start = _schedule(cfg, rng)
    bot_days = [(bot, day) for bot in range(cfg.n_bots) for day in rng.choice(cfg.days, max(1, cfg.days // 3), False)]
    return World(
        product_id=product_id,
        item_category=item_category,
        brand=brand,
        price=np.round(np.maximum(price, 0.5), 2),
        popularity=popularity,
        complements=complements,
        category_id=category_id,
        category_code=category_code,
        cat_item_keys=cat_item_keys,
        cat_item_order=order,
        user_id=ids[:n_users],
        taste_early=taste_early,
        taste_late=taste_late,
        bot_user_ids=ids[n_users:],
        session_user=session_user,
        session_day=session_day,
        session_start=session_start,
        bot_day_sessions=np.array(sorted(bot_days), dtype=np.int32).reshape(-1, 2),
        item_launch_day=_launch_days(cfg, item_category, popularity),
    )


def category_heads(item_category: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """int [n_categories]: each category's most popular item (with positive popularity)."""
    n_cat = int(item_category.max()) + 1
    order = np.lexsort((-popularity, item_category))
    firsts = np.searchsorted(item_category[order], np.arange(n_cat))
    return order[firsts]


def _launch_days(cfg: GenerateConfig, item_category: np.ndarray, popularity: np.ndarray) -> np.ndarray | None:
    """The launch day of each item: ``new_items_per_day`` items launch on each day after the
    first, drawn uniformly among the items that are not their category's most popular; None
    when no item launches later. From its own random stream: the rest of the world is the same."""
    later = cfg.new_items_per_day * (cfg.days - 1)
    if later == 0:
        return None
    rng = np.random.default_rng([cfg.seed, 4])
    candidates = np.setdiff1d(np.arange(len(popularity)), category_heads(item_category, popularity))
    chosen = rng.choice(candidates, size=later, replace=False)
    launch = np.zeros(len(popularity), dtype=np.int32)
    launch[chosen] = np.repeat(np.arange(1, cfg.days, dtype=np.int32), cfg.new_items_per_day)
    return launch


def _category_sampler(item_category: np.ndarray, popularity: np.ndarray, n_cat: int) -> tuple[np.ndarray, np.ndarray]:
    """Items sorted by category, keyed ``category + CDF of popularity inside it``."""
    order = np.argsort(item_category, kind="stable").astype(np.int32)
    sorted_cat = item_category[order]
    cumulative = np.cumsum(popularity[order])
    starts = np.searchsorted(sorted_cat, np.arange(n_cat))
    ends = np.searchsorted(sorted_cat, np.arange(n_cat), side="right")
    before = np.where(starts > 0, cumulative[np.maximum(starts - 1, 0)], 0.0)
    cdf = (cumulative - before[sorted_cat]) / (cumulative[ends - 1] - before)[sorted_cat]
    cdf[ends - 1] = 1.0
    return order, sorted_cat + cdf


def _schedule(cfg: GenerateConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions of every user (heavy-tailed activity), sorted by day: user, day, start second.

    With ``user_active_days`` N > 0 a user's sessions fall in the N days from a first day drawn
    uniformly over the period; those past the last day are cut, as at the end of an export.
    """
    activity = rng.lognormal(0.0, 1.0, size=cfg.n_users)
    sessions = rng.poisson(cfg.sessions_per_user * activity / activity.mean())
    if sessions.sum() == 0 and cfg.sessions_per_user > 0:  # a log of a few users is never empty
        sessions[np.argmax(activity)] = 1
    user = np.repeat(np.arange(cfg.n_users, dtype=np.int32), sessions)
    if cfg.user_active_days:
        first_day = rng.integers(0, cfg.days, size=cfg.n_users)
        day = first_day[user] + rng.integers(0, cfg.user_active_days, size=len(user))
        user, day = user[day < cfg.days], day[day < cfg.days].astype(np.int32)
    else:
        day = rng.integers(0, cfg.days, size=len(user)).astype(np.int32)
    hours = rng.choice(24, size=len(user), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    start = (hours * 3600 + rng.integers(0, 3600, size=len(user))).astype(np.int64)
    by_day = np.argsort(day, kind="stable")
    return user[by_day], day[by_day], start[by_day]


def _row_keyed_cdf(probabilities: np.ndarray) -> np.ndarray:
    """Flatten per-row CDFs as ``row + cdf`` so one searchsorted samples every row at once."""
    cdf = np.cumsum(probabilities / probabilities.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    return (cdf + np.arange(len(cdf))[:, None]).ravel()


def _category_codes(n: int, rng: np.random.Generator) -> np.ndarray:
    tops = list(CATEGORY_TREE)
    combos = [f"{top}.{sub}" for top in tops for sub in CATEGORY_TREE[top]]
    picked = [combos[i] for i in rng.choice(len(combos), size=min(n, len(combos)), replace=False)]
    picked += [f"{tops[i % len(tops)]}.group{i}" for i in range(n - len(picked))]
    codes = np.array(picked, dtype=object)
    codes[rng.random(n) < NULL_CATEGORY_CODE_SHARE] = None
    return codes


def _brand_names(n: int, rng: np.random.Generator) -> np.ndarray:
    names: list[str] = []
    for i in range(n):
        name = "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4)))
        names.append(f"{name}{i}" if name in names else name)
    return np.array(names, dtype=object)


# ----------------------------------------------------------------------------- clean events


def generate_events(cfg: GenerateConfig, world: World | None = None) -> Iterator[tuple[dt.date, pd.DataFrame]]:
    """Yield the clean events of each day, time-ordered, before any dirt is injected.

    Sessions that run past midnight continue in the next day; what runs past the last day is
    cut off, as at the end of a real export. A ``burst_share`` of each day's sessions are
    ratings-like bursts instead (see :func:`_burst_events`); events of types not in
    ``event_types`` are dropped.

    Args:
        cfg: the generator's settings.
        world: the result of :func:`build_world` for ``cfg`` (built here when omitted).

    Returns:
        An iterator of ``(date, events)``, one per day in order. ``events`` has the columns
        ``schema.RAW_COLUMNS``: event_time (datetime64[ns, UTC]), event_type (str),
        product_id, category_id, user_id (int64), category_code, brand (str or None),
        price (float64, 2 decimals), user_session (str, a UUID).
    """
    world = world if world is not None else build_world(cfg)
    start = dt.date.fromisoformat(cfg.start_date)
    epoch0 = int(pd.Timestamp(start, tz="UTC").timestamp())
    day_bounds = np.searchsorted(world.session_day, np.arange(cfg.days + 1))
    kept_types = [schema.EVENT_TYPES.index(t) for t in cfg.event_types]
    carry = _empty_internal()
    for day in range(cfg.days):
        rng = np.random.default_rng([cfg.seed, 1, day])
        today_world = world.on_day(day)
        sessions: slice | np.ndarray = slice(day_bounds[day], day_bounds[day + 1])
        bursts = _empty_internal()
        if cfg.burst_share > 0:
            sessions, bursts = _burst_events(cfg, today_world, np.arange(sessions.start, sessions.stop), day)
        parts = [
            carry,
            _session_events(cfg, today_world, rng, sessions, day_offset=day * SECONDS_PER_DAY),
            _bot_events(today_world, rng, day, day_offset=day * SECONDS_PER_DAY),
            bursts,
        ]
        events = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else carry
        end = (day + 1) * SECONDS_PER_DAY
        today = events[events["t"] < end]
        carry = events[events["t"] >= end]
        if len(kept_types) < len(schema.EVENT_TYPES):
            today = today[np.isin(today["etype"].to_numpy(), kept_types)]
        today = today.sort_values(["t", "session", "seq"], kind="stable")
        yield start + dt.timedelta(days=day), typed_events(today, world, epoch0)


def _empty_internal() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "t": np.array([], dtype=np.int64),
            "seq": np.array([], dtype=np.int64),
            "etype": np.array([], dtype=np.int8),
            "item": np.array([], dtype=np.int32),
            "user_id": np.array([], dtype=np.int64),
            "session": np.array([], dtype=object),
        }
    )


def _session_events(
    cfg: GenerateConfig, world: World, rng: np.random.Generator, sessions: slice | np.ndarray, day_offset: int
) -> pd.DataFrame:
    """All events of the given sessions (those starting this day); ``t`` is seconds since the first midnight."""
    users = world.session_user[sessions].astype(np.int64)
    n = len(users)
    if n == 0:
        return _empty_internal()
    start = world.session_start[sessions] + day_offset
    late_weight = cfg.taste_drift * (start / (cfg.days * SECONDS_PER_DAY))
    late = rng.random(n) < late_weight
    lengths = np.minimum(rng.geometric(1.0 / max(cfg.mean_session_length, 1.0), size=n), MAX_SESSION_LENGTH)
    session_ids = uuids(rng, n)

    p_repeat = cfg.p_repeat_view
    p_comp = p_repeat + (1 - p_repeat) * cfg.p_complement
    p_same = p_comp + (1 - p_comp) * cfg.p_same_category
    now = start.copy()
    prev = np.zeros(n, dtype=np.int32)
    prev2 = np.zeros(n, dtype=np.int32)
    steps = []  # (session, step, time, event code, item) per event
    for k in range(int(lengths.max())):
        idx = np.flatnonzero(lengths > k)
        m = len(idx)
        fresh = world.sample_taste(users[idx], late[idx], rng.random(m))
        item = world.sample_in_category(fresh, rng.random(m))
        if k > 0:
            u = rng.random(m)
            back = prev2[idx] if k > 1 else prev[idx]
            complement = world.complements[prev[idx], rng.integers(0, COMPLEMENTS_PER_ITEM, size=m)]
            same = world.sample_in_category(world.item_category[prev[idx]], rng.random(m))
            item = np.select([u < p_repeat, u < p_comp, u < p_same], [back, complement, same], item)
        prev2[idx] = prev[idx]
        prev[idx] = item

        t_view = now[idx]
        carted = rng.random(m) < cfg.p_cart
        cart_delay = rng.integers(3, 40, size=m)
        gap = np.clip(np.rint(rng.lognormal(np.log(35.0), 0.9, size=m)), 1, MAX_VIEW_GAP_S).astype(np.int64)
        now[idx] = t_view + gap + np.where(carted, cart_delay, 0)
        steps.append((idx, np.full(m, 2 * k), t_view, np.full(m, VIEW, np.int8), item))
        c = np.flatnonzero(carted)
        cart_code = np.full(len(c), CART, np.int8)
        steps.append((idx[c], np.full(len(c), 2 * k + 1), t_view[c] + cart_delay[c], cart_code, item[c]))

    session, seq, t, etype, item = (np.concatenate(col) for col in zip(*steps))

    # Checkout at the end of the session: removals first, then purchases, seconds apart.
    carts = np.flatnonzero(etype == CART)
    bought = rng.random(len(carts)) < cfg.p_purchase
    removed = ~bought & (rng.random(len(carts)) < cfg.p_remove_from_cart)
    tail = np.concatenate([carts[removed], carts[bought]])
    tail_code = np.concatenate([np.full(removed.sum(), REMOVE, np.int8), np.full(bought.sum(), PURCHASE, np.int8)])
    tail_session = session[tail]
    order = np.argsort(tail_session, kind="stable")
    tail, tail_code, tail_session = tail[order], tail_code[order], tail_session[order]
    rank = np.arange(len(tail)) - np.searchsorted(tail_session, tail_session)
    tail_t = now[tail_session] + 10 * (rank + 1) + rng.integers(0, 10, size=len(tail))

    return pd.DataFrame(
        {
            "t": np.concatenate([t, tail_t]),
            "seq": np.concatenate([seq, 2 * MAX_SESSION_LENGTH + rank]),
            "etype": np.concatenate([etype, tail_code]),
            "item": np.concatenate([item, item[tail]]),
            "user_id": world.user_id[users[np.concatenate([session, tail_session])]],
            "session": session_ids[np.concatenate([session, tail_session])],
        }
    )


def _burst_events(
    cfg: GenerateConfig, world: World, sessions: np.ndarray, day: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """Turn a ``burst_share`` of the day's sessions into ratings-like bursts.

    A burst is BURST_EVENTS events on distinct items (at most n_items), drawn without
    replacement by popularity times the user's taste for their category, BURST_GAP_S seconds
    apart (dozens a minute), each a purchase with probability ``p_purchase``, else a view.
    It starts at the session's start, or earlier so that it ends the same day. Draws come from
    their own random stream, so that the other sessions' draws depend on the split alone.

    Args:
        sessions: int [n], indices of the day's sessions in the world's schedule.

    Returns:
        (the indices of the other sessions, the bursts' events in the internal layout).
    """
    rng = np.random.default_rng([cfg.seed, 3, day])
    is_burst = rng.random(len(sessions)) < cfg.burst_share
    chosen = sessions[is_burst]
    n = len(chosen)
    if n == 0:
        return sessions, _empty_internal()
    users = world.session_user[chosen].astype(np.int64)
    lengths = np.minimum(rng.integers(BURST_EVENTS[0], BURST_EVENTS[1] + 1, size=n), np.count_nonzero(world.popularity))
    owner = np.repeat(np.arange(n), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    elapsed = np.cumsum(rng.integers(BURST_GAP_S[0], BURST_GAP_S[1] + 1, size=len(owner)))
    elapsed -= elapsed[first][owner]
    duration = elapsed[first + lengths - 1]
    begin = np.minimum(world.session_start[chosen], SECONDS_PER_DAY - 1 - duration)
    day_offset = day * SECONDS_PER_DAY
    late = rng.random(n) < cfg.taste_drift * ((day_offset + begin) / (cfg.days * SECONDS_PER_DAY))

    # Gumbel top-k: the k largest of log(weight) + Gumbel noise, in order, are a draw of k
    # items without replacement with probabilities proportional to weight.
    n_cat, k = world.n_categories, int(lengths.max())
    with np.errstate(divide="ignore"):  # items not launched yet: -inf, never drawn
        log_popularity = np.log(world.popularity)
    items = np.empty(len(owner), dtype=np.int32)
    step = max(1, BURST_DRAW_CELLS // world.n_items)
    for lo in range(0, n, step):
        block = slice(lo, min(n, lo + step))
        u = users[block]
        cdf = np.where(
            late[block, None],
            world.taste_late.reshape(-1, n_cat)[u],
            world.taste_early.reshape(-1, n_cat)[u],
        ) - u[:, None]
        with np.errstate(divide="ignore"):
            # A category of zero taste is drawn last, but before an item not launched yet.
            log_taste = np.maximum(np.log(np.diff(cdf, axis=1, prepend=0.0)), -1e6)
        keys = log_popularity + log_taste[:, world.item_category] + rng.gumbel(size=(len(u), world.n_items))
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable"), 1)
        for i, session in enumerate(range(block.start, block.stop)):
            items[first[session] : first[session] + lengths[session]] = top[i, : lengths[session]]

    etype = np.where(rng.random(len(owner)) < cfg.p_purchase, PURCHASE, VIEW).astype(np.int8)
    events = pd.DataFrame(
        {
            "t": day_offset + begin[owner] + elapsed,
            "seq": np.arange(len(owner), dtype=np.int64) - first[owner],
            "etype": etype,
            "item": items,
            "user_id": world.user_id[users[owner]],
            "session": uuids(rng, n)[owner],
        }
    )
    return sessions[~is_burst], events


def _bot_events(world: World, rng: np.random.Generator, day: int, day_offset: int) -> pd.DataFrame:
    """Bursts of hundreds of views of distinct items, a few seconds apart."""
    todays = world.bot_day_sessions[world.bot_day_sessions[:, 1] == day, 0]
    if len(todays) == 0:
        return _empty_internal()
    frames = []
    session_ids = uuids(rng, len(todays))
    for bot, session_id in zip(todays, session_ids):
        n = min(int(rng.integers(*BOT_VIEWS)), world.n_items)
        gaps = rng.integers(1, 5, size=n)
        begin = int(rng.integers(0, max(1, SECONDS_PER_DAY - int(gaps.sum()))))
        frames.append(
            pd.DataFrame(
                {
                    "t": day_offset + begin + np.cumsum(gaps) - gaps[0],
                    "seq": np.arange(n, dtype=np.int64),
                    "etype": np.full(n, VIEW, np.int8),
                    "item": world.available(rng.choice(world.n_items, size=n, replace=False).astype(np.int32)),
                    "user_id": np.full(n, world.bot_user_ids[bot], dtype=np.int64),
                    "session": np.full(n, session_id, dtype=object),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random version-4 UUID strings from ``rng``."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    text = raw.tobytes().hex()
    hexes = (text[i : i + 32] for i in range(0, 32 * n, 32))
    return np.array([f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexes], dtype=object)


def typed_events(events: pd.DataFrame, world: World, epoch0: int) -> pd.DataFrame:
    """Internal events (t seconds since epoch0, etype, item, user_id, session) as RAW_COLUMNS."""
    item = events["item"].to_numpy()
    category = world.item_category[item]
    return pd.DataFrame(
        {
            schema.EVENT_TIME: pd.to_datetime(events["t"].to_numpy() + epoch0, unit="s", utc=True),
            schema.EVENT_TYPE: np.array(schema.EVENT_TYPES, dtype=object)[events["etype"].to_numpy()],
            schema.PRODUCT_ID: world.product_id[item],
            schema.CATEGORY_ID: world.category_id[category],
            schema.CATEGORY_CODE: world.category_code[category],
            schema.BRAND: world.brand[item],
            schema.PRICE: world.price[item],
            schema.USER_ID: events["user_id"].to_numpy(),
            schema.USER_SESSION: events["session"].to_numpy(),
        }
    )


# ----------------------------------------------------------------------------- text and dirt

_HMS = np.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(SECONDS_PER_DAY)], dtype=object)
_NUMERIC_COLUMNS = {schema.PRODUCT_ID, schema.CATEGORY_ID, schema.PRICE, schema.USER_ID}
_GARBAGE_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ <>/!?#;:=_-"))


def to_raw_text(events: pd.DataFrame, naive: bool = False, empty_columns: tuple[str, ...] = (),
                string_ids: bool = False) -> pd.DataFrame:
    """Render typed events as the raw contract's text values.

    Args:
        events: a frame from :func:`generate_events`.
        naive: write event_time without its zone (``2019-10-01 00:00:04``).
        empty_columns: columns set to null on every row.
        string_ids: user and product ids as :func:`string_user_id` and :func:`string_product_id`.

    Returns:
        The same rows and columns as text (object dtype, None for null): event_time like
        ``2019-10-01 00:00:04 UTC``, prices with 2 decimals, ids as integers (or strings).
    """
    seconds = (events[schema.EVENT_TIME] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    seconds = seconds.to_numpy(dtype=np.int64)
    days, in_day = np.divmod(seconds, SECONDS_PER_DAY)
    unique_days, inverse = np.unique(days, return_inverse=True)
    epoch = dt.date(1970, 1, 1)
    day_text = np.array([(epoch + dt.timedelta(days=int(d))).isoformat() for d in unique_days], dtype=object)
    cents = np.rint(events[schema.PRICE].to_numpy() * 100).astype(np.int64)
    text = {
        schema.EVENT_TIME: day_text[inverse] + " " + _HMS[in_day] + ("" if naive else " UTC"),
        schema.EVENT_TYPE: events[schema.EVENT_TYPE].to_numpy(dtype=object),
        schema.PRODUCT_ID: _as_text(events[schema.PRODUCT_ID].to_numpy(), string_product_id if string_ids else str),
        schema.CATEGORY_ID: _as_text(events[schema.CATEGORY_ID].to_numpy()),
        schema.CATEGORY_CODE: events[schema.CATEGORY_CODE].to_numpy(dtype=object),
        schema.BRAND: events[schema.BRAND].to_numpy(dtype=object),
        schema.PRICE: _as_text(cents, lambda c: f"{c // 100}.{c % 100:02d}"),
        schema.USER_ID: _as_text(events[schema.USER_ID].to_numpy(), string_user_id if string_ids else str),
        schema.USER_SESSION: events[schema.USER_SESSION].to_numpy(dtype=object),
    }
    for column in empty_columns:
        text[column] = np.full(len(events), None, dtype=object)
    return pd.DataFrame(text, columns=schema.RAW_COLUMNS)


_SIZES = ("XS", "S", "M", "L", "XL")
_STRING_ID_NAMESPACE = uuid.UUID("6f1c1a52-31e4-4c55-9a3e-2d0b1f5e7a90")


def string_user_id(user_id: int) -> str:
    """The UUID visitor id that stands for integer ``user_id`` (generate.string_ids)."""
    return str(uuid.uuid5(_STRING_ID_NAMESPACE, str(user_id)))


def string_product_id(product_id: int) -> str:
    """The shop-style id that stands for integer ``product_id`` (generate.string_ids): a SKU with
    dashes and a zero-padded number (``SKU-012345678-XL``) for two products in three, else the
    number zero-padded to ten digits (``0012345678``): text that looks like an integer but is not one."""
    if product_id % 3:
        return f"SKU-{product_id:09d}-{_SIZES[product_id % len(_SIZES)]}"
    return f"{product_id:010d}"


def _as_text(values: np.ndarray, fmt=str) -> np.ndarray:
    """Format each distinct value once: ids and prices repeat a lot within a day."""
    if len(values) == 0:
        return np.array([], dtype=object)
    codes, uniques = pd.factorize(values)
    return np.array([fmt(v) for v in uniques.tolist()], dtype=object)[codes]


def render_lines(rows: pd.DataFrame, fmt: str) -> np.ndarray:
    """One line per row (no newline): CSV with empty fields for null, or a JSON object.

    Values never hold commas, quotes or backslashes, so neither format needs escaping.

    Args:
        rows: text rows with the columns ``schema.RAW_COLUMNS`` (None for null).
        fmt: ``"csv"`` or ``"json"``.

    Returns:
        object array [len(rows)] of str.
    """
    if len(rows) == 0:
        return np.array([], dtype=object)
    if fmt == "csv":
        cols = [rows[c].fillna("") for c in schema.RAW_COLUMNS]
        return cols[0].str.cat(cols[1:], sep=",").to_numpy(dtype=object)
    tokens = []
    for c in schema.RAW_COLUMNS:
        values = rows[c]
        rendered = values if c in _NUMERIC_COLUMNS else '"' + values + '"'
        tokens.append(f'"{c}":' + rendered.where(values.notna(), "null"))
    return ("{" + tokens[0].str.cat(tokens[1:], sep=",") + "}").to_numpy(dtype=object)


def inject_dirt(
    rows: pd.DataFrame, rates: DirtRates, fmt: str, rng: np.random.Generator, protected: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Add the faults of real logs to one day of text rows and render them as lines.

    Each clean row gets at most one field fault (an empty user_id or product_id, an unknown
    event type, an empty user_session), so every count is exact; only rows left untouched are
    duplicated (the copy right after the original), and malformed lines (truncated, a wrong
    number of fields, or garbage; for JSON also a CSV line) are added at random places.
    Protected rows (the bots') get no fault, so they stay countable.

    Args:
        rows: text rows from :func:`to_raw_text`, time-ordered.
        rates: the per-row probabilities.
        fmt: ``"csv"`` or ``"json"``.
        rng: the random source (one per day, for determinism).
        protected: bool [len(rows)], rows to leave as they are.

    Returns:
        (lines, counts): object array of str, and the number of each fault
        (``duplicates``, ``malformed``, ``null_ids``, ``unknown_event_types``, ``missing_sessions``).
    """
    rows, duplicated, counts = inject_row_faults(rows, rates, rng, protected)
    n = len(rows)
    lines = render_lines(rows, fmt)
    n_malformed = int(rng.binomial(n, rates.malformed)) if np.any(~protected) else 0
    sources = rng.choice(np.flatnonzero(~protected), size=n_malformed) if n_malformed else np.array([], dtype=np.int64)
    malformed = np.array([_malformed(lines[i], rows.iloc[i], fmt, rng) for i in sources], dtype=object)

    # Sort keys place each copy right after its original and each malformed line before a row.
    before_row = rng.integers(0, n + 1, size=n_malformed) - 0.25
    keys = np.concatenate([np.arange(n, dtype=np.float64), duplicated + 0.5, before_row])
    all_lines = np.concatenate([lines, lines[duplicated], malformed])
    return all_lines[np.argsort(keys, kind="stable")], {**counts, "malformed": n_malformed}


def inject_row_faults(
    rows: pd.DataFrame, rates: DirtRates, rng: np.random.Generator, protected: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
    """The field faults of :func:`inject_dirt` and the choice of the rows to duplicate.

    Args:
        rows, rates, rng, protected: as for :func:`inject_dirt`.

    Returns:
        (rows, duplicated, counts): the rows with their field faults (same order), int
        [n_duplicated] the positions of the rows to copy, and the counts of ``duplicates``,
        ``null_ids``, ``unknown_event_types`` and ``missing_sessions``.
    """
    rows = rows.copy()
    n = len(rows)
    u = rng.random(n)
    u[protected] = 2.0
    # One uniform per row, cut at cumulative rates, keeps the field faults disjoint.
    cut_null, cut_unknown = rates.null_id, rates.null_id + rates.unknown_event
    cut_missing = cut_unknown + rates.missing_session
    null_ids = u < cut_null
    unknown = (u >= cut_null) & (u < cut_unknown)
    missing = (u >= cut_unknown) & (u < cut_missing)
    null_user = null_ids & (rng.random(n) < 0.5)
    rows.loc[null_user, schema.USER_ID] = None
    rows.loc[null_ids & ~null_user, schema.PRODUCT_ID] = None
    rows.loc[unknown, schema.EVENT_TYPE] = rng.choice(UNKNOWN_EVENT_TYPES, size=int(unknown.sum()))
    rows.loc[missing, schema.USER_SESSION] = None
    untouched = (u >= cut_missing) & ~protected
    duplicated = np.flatnonzero(untouched & (rng.random(n) < rates.duplicate))
    counts = {
        "duplicates": len(duplicated),
        "null_ids": int(null_ids.sum()),
        "unknown_event_types": int(unknown.sum()),
        "missing_sessions": int(missing.sum()),
    }
    return rows, duplicated, counts


def with_duplicates(rows: pd.DataFrame, duplicated: np.ndarray) -> pd.DataFrame:
    """``rows`` with a copy of each row in ``duplicated`` right after its original."""
    keys = np.concatenate([np.arange(len(rows), dtype=np.float64), duplicated + 0.5])
    both = pd.concat([rows, rows.iloc[duplicated]], ignore_index=True)
    return both.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


def _malformed(line: str, row: pd.Series, fmt: str, rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 3))
    if kind == 0:  # cut short, as by a crashed writer: before the last field separator
        return line[: int(rng.integers(1, line.rindex(",")))]
    if kind == 1:
        if fmt == "csv":
            return line + "," + str(int(rng.integers(0, 1000)))
        return ",".join("" if v is None else str(v) for v in row)
    return "".join(rng.choice(_GARBAGE_ALPHABET, size=int(rng.integers(8, 60))))


# ----------------------------------------------------------------------------- stage


def day_file_name(day: dt.date, fmt: str, compression: str) -> str:
    """``events-YYYY-MM-DD.csv``, ``.csv.gz``, ``.json``, ``.json.gz`` or ``.parquet``."""
    suffix = ".gz" if compression == "gzip" and fmt != "parquet" else ""
    return f"events-{day.isoformat()}.{fmt}{suffix}"


_ARROW_TYPES = {T.StringType(): pa.string(), T.LongType(): pa.int64(), T.DoubleType(): pa.float64()}
RAW_ARROW_SCHEMA = pa.schema([pa.field(f.name, _ARROW_TYPES[f.dataType], nullable=True) for f in schema.RAW_TYPED_SCHEMA])


def parquet_bytes(rows: pd.DataFrame, compression: str) -> bytes:
    """One Parquet file of text rows, typed as ``schema.RAW_TYPED_SCHEMA`` (what clean reads).

    Args:
        rows: text rows with the columns ``schema.RAW_COLUMNS`` (None for null), numeric
            columns holding numbers (an unknown event type is fine: event_type is text).
        compression: ``"gzip"`` (Parquet's own codec) or ``"none"``.
    """
    arrays = [pa.array(rows[f.name].to_numpy(dtype=object), type=pa.string()).cast(f.type) for f in RAW_ARROW_SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=RAW_ARROW_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="gzip" if compression == "gzip" else "none")
    return sink.getvalue().to_pybytes()


def run(spark: SparkSession | None, cfg: Config) -> dict:
    """Write the synthetic clickstream, one file per day, to ``paths.raw``.

    A day's file replaces the one of an earlier run (written to a temporary name, then
    renamed; files of the same day in another format are removed). A URI destination is
    written through the Hadoop file system of the Spark session, with the same layout.
    Parquet files hold no malformed lines (``malformed_rate`` is ignored, the count is 0).

    Args:
        spark: the session; only used when ``paths.raw`` is a URI (None will do otherwise).
        cfg: the whole config; ``generate`` and ``paths`` are read.

    Returns:
        raw_path, files, events (lines or Parquet rows written, headers excluded), users and
        items (distinct, in the clean events), days, and dirt: the count of each injected fault.
    """
    gen = effective_config(cfg.generate)
    world = build_world(gen)
    raw_path = cfg.paths.resolve("raw")
    rates = DirtRates.from_config(gen)
    header = ",".join(schema.RAW_COLUMNS) if gen.format == "csv" else None
    seen_users: set[int] = set()
    seen_items = np.zeros(world.n_items, dtype=bool)
    dirt = dict.fromkeys(DIRT_KINDS, 0)
    files = events_written = 0
    for day, events in generate_events(gen, world):
        protected = events[schema.USER_ID].isin(world.bot_user_ids).to_numpy()
        rng = np.random.default_rng([gen.seed, 2, day.toordinal()])
        text = to_raw_text(events, gen.naive_timestamps, tuple(gen.empty_columns), gen.string_ids)
        if gen.format == "parquet":
            rows, duplicated, counts = inject_row_faults(text, rates, rng, protected)
            rows = with_duplicates(rows, duplicated)
            data, written = parquet_bytes(rows, gen.compression), len(rows)
        else:
            lines, counts = inject_dirt(text, rates, gen.format, rng, protected)
            data, written = _day_bytes(lines, header, gen.compression), len(lines)
        for key, value in counts.items():
            dirt[key] += value
        dirt["bot_events"] += int(protected.sum())
        seen_users.update(np.unique(events[schema.USER_ID].to_numpy()).tolist())
        seen_items[np.isin(world.product_id, events[schema.PRODUCT_ID].to_numpy())] = True
        name = day_file_name(day, gen.format, gen.compression)
        if is_uri(raw_path):
            _write_day_hadoop(spark, raw_path.rstrip("/"), day, name, data)
        else:
            _write_day_local(Path(raw_path), day, name, data)
        files += 1
        events_written += written
    summary = {
        "raw_path": raw_path,
        "files": files,
        "events": events_written,
        "users": len(seen_users),
        "items": int(seen_items.sum()),
        "days": gen.days,
        "dirt": dirt,
    }
    log.info("wrote %d %s file(s), %d rows, to %s; dirt %s", files, gen.format, events_written, raw_path, dirt)
    return summary


def _day_bytes(lines: np.ndarray, header: str | None, compression: str) -> bytes:
    body = "\n".join(([header] if header else []) + lines.tolist())
    data = (body + "\n").encode("utf-8") if body else b""
    if compression != "gzip":
        return data
    buffer = io.BytesIO()
    # mtime=0 and no file name in the header: the same seed gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()


def _other_names(day: dt.date, name: str) -> list[str]:
    """The file names the same day has in the other formats, removed on a re-run."""
    names = {day_file_name(day, f, c) for f in ("csv", "json", "parquet") for c in ("none", "gzip")}
    return sorted(names - {name})


def _write_day_local(folder: Path, day: dt.date, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
    for other in _other_names(day, name):
        (folder / other).unlink(missing_ok=True)


def _write_day_hadoop(spark: SparkSession, folder: str, day: dt.date, name: str, data: bytes) -> None:
    """The same single file per day, through the Hadoop file system of the URI.

    Not ``DataFrame.write``: that makes a folder per day, which a plain ``spark.read.csv``
    of ``paths.raw`` does not descend into.
    """
    fs = HadoopFs(spark, folder)
    fs.write_bytes(f"{folder}/{name}", data)
    for other in _other_names(day, name):
        fs.delete(f"{folder}/{other}", recursive=False)
