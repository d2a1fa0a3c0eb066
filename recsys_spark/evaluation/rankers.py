"""The rankers evaluation compares: the trained model, popularity and (in baselines.py) the rest.

Each ranker scores every item for a batch of history rows; listing the top K, with each user's
exclusions and the blocked items masked, is :func:`recsys_spark.models.ranking.rank`'s, the one
ranking path that scoring, the pyfunc and training's validation share. The model ranks by its
own scores (:func:`~recsys_spark.models.ranking.score_items`), popularity as the dot product of a
user vector of 1 with each item's log popularity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_spark import schema
from recsys_spark.errors import DataQualityError
from recsys_spark.evaluation import metrics
from recsys_spark.models import ranking


class Ranker(ABC):
    """Scores every item for the users of a pandas batch of history rows (schema.HISTORY_FIELDS).

    Args:
        item_vecs: Tensor[N, d], row i is item index i.
        allowed: BoolTensor[N], False for items never to recommend, or None for all.
    """

    name = "ranker"

    def __init__(self, item_vecs: Tensor, allowed: Tensor | None = None):
        self.item_vecs = item_vecs
        self.allowed = allowed

    @property
    def num_items(self) -> int:
        return int(self.item_vecs.shape[0])

    @abstractmethod
    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        """Args: batch of B history rows. Returns: Tensor[B, d]."""

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        """Args: batch of B history rows; excluded, BoolTensor[B, N], True for the items each
        row is never shown (its seen items, pad, OOV and blocked items), or None.

        Returns: Tensor[B, N], the score of every item. A dot product of user and item vectors;
        rankers that are no dot product (e.g. item-item co-occurrence) override this instead
        of :meth:`user_vectors`. Scores of excluded items are masked afterwards, whatever they are.
        """
        return self.user_vectors(batch) @ self.item_vecs.T

    def recommend(
        self,
        batch: pd.DataFrame,
        k: int,
        exclude_seen: bool = True,
        block_size: int = 1024,
        exclude: Sequence[np.ndarray] | None = None,
        on_scores: ranking.ScoreObserver | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K items of every row of ``batch``, ``block_size`` users at a time.

        Args:
            batch: B rows with hist_items, hist_events, hist_gaps and seen_items.
            k: items per user.
            exclude_seen: leave each row's items out: ``exclude`` when given, else seen_items.
            block_size: users scored at once.
            exclude: B int arrays of item indices to leave out instead of seen_items (e.g.
                only the purchased ones), or None.
            on_scores: sees every block's masked scores (see ``ranking.rank``), or None.

        Returns:
            (item indices int64 [B, k], scores float32 [B, k]); -1 / -inf in empty slots.
        """
        if exclude is not None and len(exclude) != len(batch):
            raise ValueError(f"exclude holds {len(exclude)} lists for {len(batch)} users")
        excluded = None
        if exclude_seen:
            excluded = ranking.pairs_of(exclude if exclude is not None else ranking.int_arrays(batch[schema.SEEN_ITEMS]))
        return ranking.rank(lambda rows, mask: self.score_block(batch.iloc[rows], mask), len(batch), self.num_items,
                            k, excluded, ranking.blocked_items(self.num_items, self.allowed), block_size, self.name,
                            on_scores)

    def rank_targets(
        self,
        batch: pd.DataFrame,
        k: int,
        targets: Sequence[np.ndarray],
        block_size: int = 1024,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """:meth:`recommend`'s top K (seen items excluded), and where each target stands in the
        same full ranking, from the same scores: what evaluation's AUC needs.

        Args:
            targets: B int arrays of target items; the rest as in :meth:`recommend`.

        Returns:
            (item indices int64 [B, k]; B float64 arrays, each target's rank among its row's
            eligible items; eligible items per row int64 [B]), see ``metrics.target_ranks``.
        """
        if len(targets) != len(batch):
            raise ValueError(f"targets holds {len(targets)} lists for {len(batch)} users")
        ranks: list[np.ndarray] = []
        eligible = np.zeros(len(batch), dtype=np.int64)

        def observe(start: int, scores: Tensor) -> None:
            end = start + scores.shape[0]
            block_ranks, block_eligible = metrics.target_ranks(scores.float().numpy(), targets[start:end])
            ranks.extend(block_ranks)
            eligible[start:end] = block_eligible

        top, _ = self.recommend(batch, k, True, block_size, exclude, observe)
        return top, ranks, eligible


class ModelRanker(Ranker):
    """A two-tower model: anything with ``sequence_vectors(items, events, gaps)``, ``item_vectors()``
    and ``user_vector`` (see models.ranking).

    Args:
        module: the model in eval mode (e.g. ``ModelBundle.build_module()``).
        item_vecs: Tensor[N, d] computed once elsewhere, or None to compute them here.
        allowed: BoolTensor[N] or None.
    """

    name = "model"

    def __init__(self, module: torch.nn.Module, item_vecs: Tensor | None = None, allowed: Tensor | None = None):
        self.module = module.eval()
        if item_vecs is None:
            with torch.no_grad():
                item_vecs = self.module.item_vectors()
        super().__init__(item_vecs, allowed)

    @classmethod
    def from_bundle(cls, bundle, item_vecs: Tensor | None = None) -> "ModelRanker":
        """Args: bundle, a ModelBundle; item_vecs as in the constructor. Only vocabulary items are allowed."""
        allowed = torch.from_numpy(bundle.product_ids() >= 0)
        return cls(bundle.build_module(), item_vecs, allowed)

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        return ranking.user_vectors(self.module, *ranking.history_tensors(batch))

    def score_block(self, batch: pd.DataFrame, excluded: Tensor | None = None) -> Tensor:
        """The model's own scores (``ranking.score_items``): a dot product, or its mixture over steps."""
        return ranking.score_items(self.module, *ranking.history_tensors(batch), self.item_vecs, excluded)


class PopularityRanker(Ranker):
    """The same list for everyone: score = log(1 + pretest_count), events before the test cutoff.

    Args:
        counts: int array [N], the pretest_count of every item index.
        allowed: BoolTensor[N] or None.
    """

    name = "popularity"

    def __init__(self, counts: np.ndarray, allowed: Tensor | None = None):
        item_vecs = torch.from_numpy(np.log1p(np.asarray(counts, dtype=np.float64)).astype(np.float32))[:, None]
        super().__init__(item_vecs, allowed)

    @classmethod
    def from_vocab(cls, item_vocab: pd.DataFrame, num_items: int) -> "PopularityRanker":
        """Args: item_vocab rows of schema.ITEM_VOCAB_SCHEMA; num_items N. Only its items are allowed."""
        counts, allowed = vocab_column(item_vocab, schema.PRETEST_COUNT, num_items)
        return cls(counts, torch.from_numpy(allowed))

    def user_vectors(self, batch: pd.DataFrame) -> Tensor:
        return torch.ones(len(batch), 1)


def vocab_column(item_vocab: pd.DataFrame, column: str, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A vocabulary column as a dense array indexed by item_idx.

    Returns:
        (values int64 [num_items], 0 where absent; present bool [num_items]).
    """
    idx = item_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)
    if len(idx) and (idx.min() < schema.FIRST_ITEM_INDEX or idx.max() >= num_items):
        raise DataQualityError(f"item_vocab holds item_idx outside [{schema.FIRST_ITEM_INDEX}, {num_items})")
    values = np.zeros(num_items, dtype=np.int64)
    present = np.zeros(num_items, dtype=bool)
    values[idx] = item_vocab[column].to_numpy(dtype=np.int64)
    present[idx] = True
    return values, present
