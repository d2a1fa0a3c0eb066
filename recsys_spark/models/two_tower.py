"""The two-tower sequential recommender: an item tower and a SASRec-style user tower.

Pure ``nn.Module``s: nothing here knows about Horovod, Spark, Petastorm or the loss
(the training wrapper is :class:`recsys_spark.train.loss.RetrievalTask`). The model gives the
user tower's vector after each history step (:meth:`TwoTowerModel.sequence_vectors`) and every
item's vector (:meth:`TwoTowerModel.item_vectors`); how they become item scores and lists
(the ``user_vector`` modes, exclusions, top K) is :mod:`recsys_spark.models.ranking`'s.

Item index conventions come from :mod:`recsys_spark.schema`: 0 is padding, 1 is
out-of-vocabulary, real items start at 2. Sequences are left-padded, so the most recent
step is always the last column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_spark import schema
from recsys_spark.config import TRAINING_USER_VECTOR, TrainConfig
from recsys_spark.models.ranking import USER_VECTORS


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError, naming the argument ``name``, unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


class ItemTower(nn.Module):
    """Item id + category + brand + price-bucket embeddings -> MLP -> item vector.

    The side features of every item live in buffers (saved with the state dict), so a
    vector can be computed from an item index alone.
    """

    def __init__(self, num_items: int, num_categories: int, num_brands: int, num_price_buckets: int, dim: int,
                 dropout: float):
        super().__init__()
        self.id_embedding = nn.Embedding(num_items, dim, padding_idx=schema.PAD_INDEX)
        self.category_embedding = nn.Embedding(num_categories, dim)
        self.brand_embedding = nn.Embedding(num_brands, dim)
        self.price_embedding = nn.Embedding(num_price_buckets, dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.register_buffer("item_category", torch.zeros(num_items, dtype=torch.long))
        self.register_buffer("item_brand", torch.zeros(num_items, dtype=torch.long))
        self.register_buffer("item_price_bucket", torch.zeros(num_items, dtype=torch.long))
        for emb in (self.id_embedding, self.category_embedding, self.brand_embedding, self.price_embedding):
            nn.init.normal_(emb.weight, std=0.05)
        with torch.no_grad():
            self.id_embedding.weight[schema.PAD_INDEX].zero_()

    def forward(self, items: Tensor) -> Tensor:
        """Args: items LongTensor[...] of item indices. Returns: Tensor[..., dim]."""
        x = (
            self.id_embedding(items)
            + self.category_embedding(self.item_category[items])
            + self.brand_embedding(self.item_brand[items])
            + self.price_embedding(self.item_price_bucket[items])
        )
        return x + self.mlp(x)


class HistoryFeatures(nn.Module):
    """User features derived from the history itself, causally: position t sees steps 0..t.

    Leak-free by construction (nothing but the example's own history goes in), and the same
    at training, evaluation and scoring time. Per position t, over the real (non-pad) steps
    0..t:

    * log(1 + n), n the number of steps so far;
    * the share of each event type (view, cart, remove_from_cart, purchase), and
      log(1 + count) of each;
    * the mean time-gap bucket, scaled to [0, 1];
    * the share of steps that revisit an item already met earlier (re-views, re-buys).

    Returns the raw features; the model projects them.
    """

    def __init__(self, num_event_codes: int, num_gap_buckets: int):
        super().__init__()
        self.num_event_codes = num_event_codes
        self.num_gap_buckets = num_gap_buckets

    @property
    def size(self) -> int:
        return 1 + 2 * (self.num_event_codes - 1) + 2

    def forward(self, items: Tensor, events: Tensor, gaps: Tensor) -> Tensor:
        """Args: items, events, gaps LongTensor[B, L], left-padded. Returns: FloatTensor[B, L, size]."""
        real = (items != schema.PAD_INDEX).float()
        n = real.cumsum(dim=1)
        safe_n = n.clamp_min(1.0)
        # One-hot events [B, L, E-1] (code 0 is padding), counted up to each position.
        onehot = F.one_hot(events.clamp(0, self.num_event_codes - 1), self.num_event_codes)[..., 1:].float()
        counts = (onehot * real[..., None]).cumsum(dim=1)
        mean_gap = (gaps.float() * real).cumsum(dim=1) / safe_n / max(1, self.num_gap_buckets - 1)
        # repeat[b, t] = item t occurred at some step s < t (pad excluded).
        length = items.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool, device=items.device).tril(-1)
        same = (items[:, :, None] == items[:, None, :]) & earlier[None] & (items != schema.PAD_INDEX)[:, None, :]
        repeats = (same.any(dim=2).float() * real).cumsum(dim=1)
        return torch.cat([
            torch.log1p(n)[..., None],
            counts / safe_n[..., None],
            torch.log1p(counts),
            mean_gap[..., None],
            (repeats / safe_n)[..., None],
        ], dim=-1)


class TwoTowerModel(nn.Module):
    """Shared item tower; user tower = causal self-attention over the behaviour sequence.

    Args:
        num_items: size of the item vocabulary, pad (0) and OOV (1) included.
        num_categories, num_brands, num_price_buckets: sizes of the side-feature vocabularies.
        num_event_codes: event-type codes (0 = pad), ``schema.NUM_EVENT_CODES``.
        num_gap_buckets: time-gap buckets (0 = pad / first step), ``schema.NUM_GAP_BUCKETS``.
        max_seq_len: longest sequence L the positional embedding covers.
        dim: vector size d of both towers.
        num_layers, num_heads, dropout: the transformer encoder's shape.
        use_user_features: add :class:`HistoryFeatures` (projected to ``dim``) to the sequence
            encoding at every position. False rebuilds models trained before they existed.
        use_interest_pooling: add the running mean of the item vectors of steps 0..t (projected
            to ``dim``): a direct path for the user's long-term taste beside the attention, which
            favours the current session. False rebuilds models trained before it existed.
        user_vector: how the vectors after every step become item scores when ranking, one of
            ``models.ranking.USER_VECTORS`` (see that module). Training does not use it (every
            position has its own targets). "last" rebuilds models trained before it existed.
    """

    # The hyper-parameters' defaults are TrainConfig's (one place for each default).
    def __init__(self, num_items: int, num_categories: int, num_brands: int, num_price_buckets: int,
                 num_event_codes: int, num_gap_buckets: int, max_seq_len: int, dim: int = TrainConfig.embedding_dim,
                 num_layers: int = TrainConfig.num_layers, num_heads: int = TrainConfig.num_heads,
                 dropout: float = TrainConfig.dropout, use_user_features: bool = TrainConfig.user_features,
                 use_interest_pooling: bool = TrainConfig.interest_pooling,
                 user_vector: str = TRAINING_USER_VECTOR):
        super().__init__()
        check_choice("user_vector", user_vector, USER_VECTORS)
        self.user_vector = user_vector
        self.num_items = num_items
        self.max_seq_len = max_seq_len
        self.num_heads = num_heads
        self.item_tower = ItemTower(num_items, num_categories, num_brands, num_price_buckets, dim, dropout)
        self.event_embedding = nn.Embedding(num_event_codes, dim, padding_idx=0)
        self.gap_embedding = nn.Embedding(num_gap_buckets, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_len, dim)
        for emb in (self.event_embedding, self.gap_embedding, self.position_embedding):
            nn.init.normal_(emb.weight, std=0.05)
        self.input_norm = nn.LayerNorm(dim)
        self.input_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=num_heads, dim_feedforward=4 * dim, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # enable_nested_tensor is a fast path for key-padding masks, which we fold into `mask`.
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(dim)
        self.history_features = HistoryFeatures(num_event_codes, num_gap_buckets) if use_user_features else None
        if self.history_features is not None:
            self.user_feature_mlp = nn.Sequential(
                nn.Linear(self.history_features.size, dim), nn.GELU(), nn.Linear(dim, dim)
            )
        self.interest_mlp = (
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            if use_interest_pooling else None
        )
        # A per-item bias (its prior, popularity mostly), folded into the dot product as an
        # extra dimension: items are [v, b], users [u, 1], so retrieval stays a dot product.
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.zeros_(self.item_bias.weight)

    def set_item_features(self, category_idx: Tensor, brand_idx: Tensor, price_bucket: Tensor) -> None:
        """Copy the side features of every item into the buffers.

        Args:
            category_idx, brand_idx, price_bucket: LongTensor[num_items], indexed by item_idx.
        """
        tower = self.item_tower
        for name, values, vocab in (
            ("item_category", category_idx, tower.category_embedding.num_embeddings),
            ("item_brand", brand_idx, tower.brand_embedding.num_embeddings),
            ("item_price_bucket", price_bucket, tower.price_embedding.num_embeddings),
        ):
            values = torch.as_tensor(values, dtype=torch.long)
            if values.shape != (self.num_items,):
                raise ValueError(f"{name}: expected shape ({self.num_items},), got {tuple(values.shape)}")
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= vocab):
                raise ValueError(f"{name}: values must lie in [0, {vocab})")
            getattr(tower, name).copy_(values)

    def output_item_vectors(self, items: Tensor) -> Tensor:
        """Args: items LongTensor[...]. Returns: Tensor[..., d + 1], the scoring side [v, b]."""
        return torch.cat([self.item_tower(items), self.item_bias(items)], dim=-1)

    def item_vectors(self) -> Tensor:
        """Returns: Tensor[num_items, d + 1], the scoring vector of every item index (pad and OOV included)."""
        device = self.position_embedding.weight.device
        return self.output_item_vectors(torch.arange(self.num_items, device=device))

    def sequence_vectors(self, items: Tensor, events: Tensor, gaps: Tensor) -> Tensor:
        """User vector after every step of left-padded sequences.

        Args:
            items, events, gaps: LongTensor[B, L], L <= max_seq_len, 0 = padding.

        Returns:
            Tensor[B, L, d + 1] (the last component is 1, the item bias's weight); position t
            sees steps 0..t only. Pad positions carry a finite but meaningless vector.
        """
        batch, length = items.shape
        if length > self.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len {self.max_seq_len}")
        # Left padding: the last step always takes the last position, whatever L is.
        positions = torch.arange(self.max_seq_len - length, self.max_seq_len, device=items.device)
        step_items = self.item_tower(items)
        x = (
            step_items
            + self.event_embedding(events)
            + self.gap_embedding(gaps)
            + self.position_embedding(positions)[None]
        )
        x = self.input_dropout(self.input_norm(x))
        mask = self._attention_mask(items)
        x = self.encoder(x, mask=mask)
        if self.history_features is not None:
            x = x + self.user_feature_mlp(self.history_features(items, events, gaps))
        if self.interest_mlp is not None:
            real = (items != schema.PAD_INDEX).to(step_items.dtype)[..., None]
            running_mean = (step_items * real).cumsum(dim=1) / real.cumsum(dim=1).clamp_min(1.0)
            x = x + self.interest_mlp(running_mean)
        x = self.output_norm(x)
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    def _attention_mask(self, items: Tensor) -> Tensor:
        """Bool mask [B * heads, L, L], True = may not attend: the future and padded keys.

        Every query may attend to itself, so no row is all-masked: an all-pad history gives
        finite vectors instead of the NaNs of a softmax over nothing.
        """
        batch, length = items.shape
        future = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        padded_key = (items == schema.PAD_INDEX)[:, None, :]
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        blocked = (future[None] | padded_key) & ~eye[None]
        return blocked.repeat_interleave(self.num_heads, dim=0)
