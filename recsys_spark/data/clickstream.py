"""The clean events of a synthetic clickstream, day by day, drawn from a :class:`World`:
sessions of views and carts whose next item follows the previous one (a repeat, a complement,
the same category, else a fresh taste draw), checkouts at their end, bots' bursts of views and
ratings-like bursts. Vectorised with numpy across the sessions of a day.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterator

import numpy as np
import pandas as pd

from recsys_spark import schema
from recsys_spark.config import GenerateConfig
from recsys_spark.data.world import COMPLEMENTS_PER_ITEM, World, build_world

SECONDS_PER_DAY = 86_400
VIEW, CART, REMOVE, PURCHASE = (schema.EVENT_TYPES.index(t) for t in ("view", "cart", "remove_from_cart", "purchase"))
MAX_SESSION_LENGTH = 200
# Longer pauses would split one generated session in two under clean's 30-minute rule.
MAX_VIEW_GAP_S = 20 * 60
BOT_VIEWS = (150, 450)
# A ratings-like burst: this many events (inclusive), this many seconds apart (inclusive).
BURST_EVENTS = (100, 300)
BURST_GAP_S = (1, 2)
# Burst items are drawn for this many session-items at a time (bounds the memory of a day).
BURST_DRAW_CELLS = 2_000_000


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
