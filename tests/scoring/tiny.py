"""A tiny catalogue, model and clickstream shared by the scoring tests (hand-checkable)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import torch

from recsys_spark import schema
from recsys_spark.models import ranking

NUM_ITEMS = 10  # item_idx 2..9 are products 1002..1009
MAX_SEQ_LEN = 4
PRODUCT = 1000
END = dt.datetime(2019, 10, 31, 12, 0, tzinfo=dt.timezone.utc)  # the last event
RECENT = END - dt.timedelta(days=2)  # inside a 7-day popularity window
OLD = END - dt.timedelta(days=20)  # outside it

# category_id of every product that has events (1009 has none: its category is unknown).
CATEGORY = {1002: 77, 1003: 77, 1004: 77, 1005: 88, 1006: 88, 1007: 99, 1008: 99, 2000: 88, 3000: 99, 3001: None}
# "Crowd" users who only make products popular: (users in the last 7 days, users only before).
CROWD = {1002: (1, 0), 1003: (2, 0), 1004: (6, 0), 1005: (5, 1), 1006: (0, 3), 1007: (4, 0), 1008: (2, 0), 2000: (7, 0)}

# The scored users: (user_id, hist_items in the features' vocabulary, their own events).
USERS = [
    ("known", [0, 0, 2, 3], [("view", 1002, OLD), ("view", 1003, RECENT), ("purchase", 1004, RECENT)]),
    ("cold_cat", [0, 0, 0, 1], [("view", 1005, OLD), ("view", 3000, RECENT)]),  # latest category: 99
    ("cold_none", [0, 0, 0, 0], [("view", 3001, OLD)]),  # no category at all
    ("cold_buyer", [0, 0, 1, 1], [("view", 1006, OLD), ("purchase", 2000, RECENT)]),  # latest category: 88
]

# Hand-counted from the crowd and the users above: (recent users, all-time users) per product.
STATS = {1002: (1, 2), 1003: (3, 3), 1004: (7, 7), 1005: (5, 7), 1006: (0, 4), 1007: (4, 4), 1008: (2, 2),
         2000: (8, 8), 3000: (1, 1), 3001: (0, 1)}
ALL_MAX = 8  # the most all-time users of any product (2000)
# Fallback order (recent + all / (1 + ALL_MAX)): 2000 8.89, 1004 7.78, 1005 5.78, 1007 4.44,
# 1003 3.33, 1008 2.22, 1002 1.22, 3000 1.11, 1006 0.44, 3001 0.11.


def fallback_score(product: int) -> float:
    recent, ever = STATS[product]
    return recent + ever / (1 + ALL_MAX)


def tiny_bundle(seed: int = 1, user_vector: str = "last"):
    """A randomly initialised TwoTowerModel over items 2..9 (product_id = 1000 + item_idx)."""
    from recsys_spark.models.bundle import ModelBundle
    from recsys_spark.models.two_tower import TwoTowerModel

    torch.manual_seed(seed)
    args = dict(num_items=NUM_ITEMS, num_categories=4, num_brands=3, num_price_buckets=3,
                num_event_codes=schema.NUM_EVENT_CODES, num_gap_buckets=schema.NUM_GAP_BUCKETS, max_seq_len=MAX_SEQ_LEN,
                dim=8, num_layers=1, num_heads=2, dropout=0.0, user_vector=user_vector,
                use_user_features=False, use_interest_pooling=False)
    model = TwoTowerModel(**args)
    idx = np.arange(schema.FIRST_ITEM_INDEX, NUM_ITEMS)
    vocab = pd.DataFrame({
        schema.ITEM_IDX: idx.astype(np.int32),
        schema.PRODUCT_ID: PRODUCT + idx,
        schema.CATEGORY_IDX: (idx % 4).astype(np.int32),
        schema.BRAND_IDX: (idx % 3).astype(np.int32),
        schema.PRICE_BUCKET: (1 + idx % 2).astype(np.int32),
        schema.TRAIN_COUNT: np.full(len(idx), 5, dtype=np.int64),
        schema.PRETEST_COUNT: np.full(len(idx), 6, dtype=np.int64),
    })
    return ModelBundle(model_args=args, state_dict=model.state_dict(), item_vocab=vocab, config={})


def event_rows() -> list[tuple]:
    """Clean events (schema.CLEAN_SCHEMA order) of the crowd and the scored users."""
    rows = []

    def add(user: str, kind: str, product: int, at: dt.datetime) -> None:
        rows.append((at, kind, product, CATEGORY.get(product), None, None, 10.0, user, f"{user}-s", at.date()))

    for product, (recent, old) in CROWD.items():
        for i in range(recent):
            add(f"crowd{i}", "view", product, RECENT - dt.timedelta(hours=i))
        for i in range(old):
            add(f"old{i}", "view", product, OLD)
    for user, _, events in USERS:
        for kind, product, at in events:
            add(user, kind, product, at)
    add("crowd0", "view", 1002, END)  # the last event of all
    return rows


def history_frame(users=USERS) -> pd.DataFrame:
    """schema.USER_HISTORY_SCHEMA rows of ``users`` (events: view where there is an item)."""
    return pd.DataFrame({
        schema.USER_ID: [u for u, _, _ in users],
        schema.HIST_ITEMS: [h for _, h, _ in users],
        schema.HIST_EVENTS: [[1 if i else 0 for i in h] for _, h, _ in users],
        schema.HIST_GAPS: [[0] * len(h) for _, h, _ in users],
        schema.SEEN_ITEMS: [[i for i in h if i >= schema.FIRST_ITEM_INDEX] for _, h, _ in users],
    })


def model_scores(bundle, hist_items: list[int]) -> dict[int, float]:
    """{product_id: the model's score} for a history of views, by brute force over the towers."""
    module = bundle.build_module()
    items = torch.tensor([hist_items])
    with torch.no_grad():
        user = ranking.user_vectors(module, items, (items > 0).long(), torch.zeros_like(items))[0].double()
        vecs = module.item_vectors().double()
    return {PRODUCT + i: float(user @ vecs[i]) for i in range(schema.FIRST_ITEM_INDEX, NUM_ITEMS)}


def best(scores: dict[int, float], exclude=(), k: int | None = None) -> list[int]:
    """Products by descending score, ``exclude`` left out."""
    ranked = sorted((p for p in scores if p not in set(exclude)), key=lambda p: -scores[p])
    return ranked if k is None else ranked[:k]
