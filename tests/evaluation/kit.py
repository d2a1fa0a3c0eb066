"""What the evaluation tests share: the test users of the evaluate stage's tiny feature set, their
rows in the evaluation schema, and popularity's metrics over them by hand."""

from __future__ import annotations

import math

KS = [1, 2]
G2 = 1 / math.log2(3)

# user, hist_items (L = 4), seen_items, target_items, target_events. Popularity order: 2, 3, 4, 5, 6, 7;
# with head_share 0.2 of the 155 pretest interactions, item 2 alone is the head.
TEST_USERS = [
    ("u1", [0, 0, 0, 2], [2], [3], [1]),  # popularity top-2: 3, 4 -> hit at rank 1
    ("u2", [0, 0, 0, 1], [], [4, 7], [1, 1]),  # 2, 3 -> no hit
    ("u3", [0, 0, 0, 3], [3], [4, 2], [4, 1]),  # 2, 4 -> hits at ranks 1 (viewed) and 2 (purchased)
    ("u4", [0, 2, 3, 4], [2, 3, 4], [6], [2]),  # 5, 6 -> hit at rank 2 (carted)
    ("u5", [0, 0, 5, 6], [5, 6], [], []),  # no target: left out of every average
]
# The popularity baseline by hand, averaged over u1..u4.
POPULARITY = {
    "recall@1": (1 + 0 + 1 / 2 + 0) / 4,
    "ndcg@1": (1 + 0 + 1 + 0) / 4,  # u3: IDCG@1 covers min(1, 2) = 1 position
    "map@1": (1 + 0 + 1 + 0) / 4,
    "hitrate@1": (1 + 0 + 1 + 0) / 4,
    "recall@2": (1 + 0 + 1 + 1) / 4,
    "ndcg@2": (1 + 0 + (1 + G2) / (1 + G2) + G2) / 4,
    "map@2": (1 + 0 + (1 + 1) / 2 + (1 / 2) / 1) / 4,
    "hitrate@2": (1 + 0 + 1 + 1) / 4,
    "mrr": (1 + 0 + 1 + 1 / 2) / 4,
    "precision@1": (1 + 0 + 1 + 0) / 4,
    "precision@2": (1 / 2 + 0 + 1 + 1 / 2) / 4,
    "f1@1": (1 + 0 + 2 / 3 + 0) / 4,  # u3: P 1, R 1/2
    "f1@2": (2 / 3 + 0 + 1 + 2 / 3) / 4,  # u1, u4: P 1/2, R 1
    # Over the eligible (unseen) items: u1 3 first of 3..7; u2 4 (above 5, 6) and 7 (last) of 2..7:
    # (2/4 + 0) / 2; u3 2 and 4 first of 2, 4..7; u4 6 second of 5, 6, 7.
    "auc": (1 + 1 / 4 + 1 + 1 / 2) / 4,
    "coverage@1": 3 / 6,  # {3, 2, 2, 5}
    "coverage@2": 5 / 6,  # {3, 4, 2, 3, 2, 4, 5, 6}
    "head_share@1": (0 + 1 + 1 + 0) / 4,  # item 2 tops u2 and u3
    "head_share@2": (0 + 1 / 2 + 1 / 2 + 0) / 4,
}


def eval_rows(users=TEST_USERS) -> list[tuple]:
    rows = []
    for user, hist, seen, targets, target_events in users:
        events = [1 if i else 0 for i in hist]
        rows.append((user, hist, events, [0] * len(hist), seen, targets, target_events))
    return rows
