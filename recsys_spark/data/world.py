"""The synthetic world behind a generated clickstream: the catalogue (Zipf popularity,
categories, brands, prices, complements), the users with their drifting tastes, and the session
schedule. One random stream per seed: the same config gives the same world.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recsys_spark.config import PRODUCT_ID_BASE, PRODUCT_ID_SPAN, GenerateConfig

COMPLEMENTS_PER_ITEM = 3
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

    complements = _complements(item_category, order, related, popularity, rng)
    brand = _brands(cfg.n_brands, item_category, n_cat, rng)
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


def _complements(item_category: np.ndarray, order: np.ndarray, related: np.ndarray, popularity: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """int32 [n_items, COMPLEMENTS_PER_ITEM]: each item's complements, a few items of its
    category's ``related`` category, favouring its popular ones mildly.

    Args:
        order: the items sorted by category (:func:`_category_sampler`).
        related: int [n_categories], the related category of each.
    """
    n_items, n_cat = len(item_category), len(related)
    starts = np.searchsorted(item_category[order], np.arange(n_cat + 1))
    complements = np.empty((n_items, COMPLEMENTS_PER_ITEM), dtype=np.int32)
    for c in range(n_cat):
        members = order[starts[c] : starts[c + 1]]
        targets = order[starts[related[c]] : starts[related[c] + 1]]
        weights = np.sqrt(popularity[targets])
        picks = rng.choice(len(targets), size=(len(members), COMPLEMENTS_PER_ITEM), p=weights / weights.sum())
        complements[members] = targets[picks]
    return complements


def _brands(n_brands: int, item_category: np.ndarray, n_cat: int, rng: np.random.Generator) -> np.ndarray:
    """object [n_items]: each item's brand (None where unknown). Each category sells a few
    brands (popular brands in many categories)."""
    n_items = len(item_category)
    brand_names = _brand_names(n_brands, rng)
    brand_popularity = 1.0 / np.arange(1, n_brands + 1)
    brands_per_category = rng.integers(2, 9, size=n_cat)
    brand_popularity /= brand_popularity.sum()
    category_brands = rng.choice(n_brands, size=brands_per_category.sum(), p=brand_popularity)
    first_brand = np.concatenate([[0], np.cumsum(brands_per_category)[:-1]])
    pick = first_brand[item_category] + rng.integers(0, brands_per_category[item_category])
    brand = brand_names[category_brands[pick]].astype(object)
    brand[rng.random(n_items) < NULL_BRAND_SHARE] = None
    return brand


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
