"""The training losses: full softmax over the catalogue, or sampled softmax with logQ correction,
and the training wrapper that adds one to the model.

Full softmax (``train.loss=full``): every target's cross-entropy over every real item, as SASRec
with cross-entropy trains (Klenitskiy and Vasilev, RecSys 2023). No sampling, so no correction.
Its [T, N] logits grow with the catalogue, hence the sampled form above
``train.full_softmax_max_items`` (``train.loss=auto``).

Sampled softmax. The full denominator sum_j exp(u.v_j) is replaced by a sum over a candidate
set C. Our C is the union (each item once) of the in-batch targets and M negatives drawn
uniformly, with replacement, from the real items 2..N-1. Item c enters C with probability

    q_c = 1 - (1 - P(c among the targets)) (1 - P(c among the negatives)),
    P(c among the targets)   = 1 - (1 - p_pop(c))^n   (n targets, each drawing c with its popularity),
    P(c among the negatives) = 1 - (1 - 1/(N-2))^M,

and sum_{c in C} exp(u.v_c) / q_c is an unbiased estimate of the full denominator (importance
sampling over inclusion), so the corrected logits o_c = u.v_c - log q_c give a softmax over C
whose gradient estimates the full softmax's (Bengio & Senecal 2008; Yi et al. 2019; TF's
"unique" candidate samplers use the same inclusion probability). Without the correction the
popular items, over-represented among in-batch targets, would be pushed down too hard.

Each item is a candidate once, so a target's own item is never also one of its negatives (no
"accidental hits" to mask) and, when every item is a candidate with certainty (q = 1), the
sampled loss IS the full softmax: the tests check that identity. Each target's cross-entropy
is weighted by the type of the event that produced it, and the loss is the weighted mean.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_spark import schema
from recsys_spark.models.two_tower import TwoTowerModel, check_choice

LOSSES = ("full", "sampled")


def popularity(train_count: Tensor) -> Tensor:
    """Popularity distribution over item indices, zero for pad and OOV.

    Args:
        train_count: Tensor[num_items] of training event counts, indexed by item_idx.

    Returns:
        FloatTensor[num_items] summing to 1 over items 2..num_items-1 (uniform if all zero).
    """
    counts = torch.as_tensor(train_count, dtype=torch.float64).clone()
    counts[: schema.FIRST_ITEM_INDEX] = 0.0
    total = counts.sum()
    if total <= 0:
        counts[schema.FIRST_ITEM_INDEX:] = 1.0
        total = counts.sum()
    return (counts / total).float()


def event_weight_table(event_weights: dict[str, float]) -> Tensor:
    """Per-event-code loss weights from ``{event name: weight}``.

    Returns:
        FloatTensor[NUM_EVENT_CODES]; code 0 (pad) and unnamed events weigh 0.
    """
    unknown = sorted(set(event_weights) - set(schema.EVENT_CODE))
    if unknown:
        raise ValueError(f"train.event_weights: unknown event type(s) {unknown}; known: {schema.EVENT_TYPES}")
    table = torch.zeros(schema.NUM_EVENT_CODES)
    for name, weight in event_weights.items():
        table[schema.EVENT_CODE[name]] = float(weight)
    return table


def fp32_logits(user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
    """Tensor[T, C] = user_vecs @ item_vecs.T in float32, autocast or not: bf16/fp16 logits are too
    coarse for a softmax over thousands of items and for the logQ term."""
    with torch.autocast(user_vecs.device.type, enabled=False):
        return user_vecs.float() @ item_vecs.float().T


def negative_inclusion(num_negatives: int, num_items: int) -> float:
    """P(an item is among ``num_negatives`` uniform draws, with replacement, from items 2..N-1)."""
    real = num_items - schema.FIRST_ITEM_INDEX
    return 1.0 - (1.0 - 1.0 / real) ** num_negatives if real > 0 else 0.0


def sampled_softmax_loss(user_vecs: Tensor, targets: Tensor, weights: Tensor, negatives: Tensor,
                         item_vecs: Tensor | None, item_tower: Callable[[Tensor], Tensor] | None, item_prob: Tensor,
                         num_items: int, negatives_inclusion: float | None = None) -> Tensor:
    """Weighted, logQ-corrected sampled softmax over the union of in-batch targets and negatives.

    Args:
        user_vecs: Tensor[T, d], one user vector per target.
        targets: LongTensor[T], the true item of each target (all >= 2).
        weights: Tensor[T], the loss weight of each target.
        negatives: LongTensor[M], items drawn uniformly from 2..num_items-1.
        item_vecs: Tensor[num_items, d] to look candidates up in, or None to call ``item_tower``
            on the candidate indices only (what training does: no full-catalogue pass).
        item_tower: maps LongTensor[C] -> Tensor[C, d]; used when ``item_vecs`` is None
            (training passes ``TwoTowerModel.output_item_vectors``).
        item_prob: Tensor[num_items], the popularity p_pop of every item.
        num_items: N, pad and OOV included.
        negatives_inclusion: P(an item is among the negatives); None = M uniform draws with
            replacement (:func:`negative_inclusion`). 1.0 says the negatives are every item.

    Returns:
        scalar Tensor: sum_t w_t * CE_t / sum_t w_t.
    """
    candidates, inverse = torch.unique(torch.cat([targets, negatives]), return_inverse=True)
    labels = inverse[: targets.numel()]
    cand_vecs = item_vecs[candidates] if item_vecs is not None else item_tower(candidates)  # type: ignore[misc]
    if negatives_inclusion is None:
        negatives_inclusion = negative_inclusion(negatives.numel(), num_items)
    # P(c among the targets) = 1 - (1 - p)^n, computed stably as -expm1(n log1p(-p)); then the
    # complement of "in neither": log q = log(1 - (1 - in_targets)(1 - in_negatives)).
    p = item_prob[candidates].double().clamp(max=1 - 1e-12)
    not_in_targets = torch.exp(targets.numel() * torch.log1p(-p))
    log_q = torch.log1p(-not_in_targets * (1.0 - negatives_inclusion)).float()
    # The [T, C] logits are the largest tensors of a step: corrected in place, in float32.
    logits = fp32_logits(user_vecs, cand_vecs)
    logits.sub_(log_q[None, :])
    per_target = F.cross_entropy(logits, labels, reduction="none")
    return (weights * per_target).sum() / weights.sum().clamp_min(1e-12)


def full_softmax_loss(user_vecs: Tensor, targets: Tensor, weights: Tensor, item_vecs: Tensor) -> Tensor:
    """Weighted cross-entropy over every real item (pad and OOV are never a class).

    Args:
        user_vecs: Tensor[T, d]; targets: LongTensor[T] (all >= 2); weights: Tensor[T].
        item_vecs: Tensor[num_items, d], every item index's scoring vector.

    Returns:
        scalar Tensor: sum_t w_t * CE_t / sum_t w_t. The logits are float32 even under autocast.
    """
    logits = fp32_logits(user_vecs, item_vecs)
    logits[:, : schema.FIRST_ITEM_INDEX] = float("-inf")
    per_target = F.cross_entropy(logits, targets, reduction="none")
    return (weights * per_target).sum() / weights.sum().clamp_min(1e-12)


def resolve_loss(setting: str, num_items: int, full_softmax_max_items: int) -> str:
    """``train.loss``: "full" or "sampled" as set; "auto": full up to ``full_softmax_max_items``."""
    if setting == "auto":
        return "full" if num_items <= full_softmax_max_items else "sampled"
    if setting not in LOSSES:
        raise ValueError(f"train.loss must be auto, full or sampled, got {setting!r}")
    return setting


def horizon_index(start: Tensor, horizon: int, generator: torch.Generator | None = None) -> Tensor:
    """For every position, the index of a target step drawn from its horizon.

    Args:
        start: LongTensor[B, L], the first target index each position may take (L = none left).
        horizon: H, how many steps from ``start`` on are candidates.
        generator: the random source; draws happen on the CPU (where it lives), whatever the
            device, so CPU and GPU runs with one seed see the same targets.

    Returns:
        LongTensor[B, L] on ``start``'s device: ``start + k``, k uniform over 0..min(H, L - start) - 1,
        clipped to L - 1 where no step is left. Uniform over the steps the window still holds:
        clipping a draw of 0..H-1 to the last step instead would make that step the target of
        most late positions (at H = 10, 55% of the draws of the last ten positions).
    """
    length = start.shape[1]
    span = (length - start).clamp(min=1, max=horizon)
    draws = torch.rand(start.shape, generator=generator).to(start.device)
    offsets = torch.minimum((draws * span).long(), span - 1)
    return (start + offsets).clamp(max=length - 1)


class RetrievalTask(nn.Module):
    """The model plus its training loss, for next-item prediction on windows.

    Args:
        model: the two-tower model.
        item_prob: Tensor[num_items], popularity (see :func:`popularity`).
        event_weights: Tensor[NUM_EVENT_CODES] (see :func:`event_weight_table`).
        uniform_negatives: M, negatives drawn per batch (``loss="sampled"``).
        loss: "full" (cross-entropy over every item) or "sampled" (see the module docstring).
    """

    def __init__(self, model: TwoTowerModel, item_prob: Tensor, event_weights: Tensor, uniform_negatives: int,
                 target_horizon: int = 1, skip_seen_targets: bool = False, visit_gap_bucket: int | None = None,
                 loss: str = "sampled"):
        super().__init__()
        if target_horizon < 1:
            raise ValueError(f"train.target_horizon must be >= 1, got {target_horizon}")
        check_choice("loss", loss, LOSSES)
        self.loss = loss
        self.visit_gap_bucket = visit_gap_bucket
        self.model = model
        self.uniform_negatives = uniform_negatives
        self.target_horizon = target_horizon
        self.skip_seen_targets = skip_seen_targets
        self.register_buffer("item_prob", torch.as_tensor(item_prob, dtype=torch.float32))
        self.register_buffer("event_weights", torch.as_tensor(event_weights, dtype=torch.float32))

    def forward(self, item_seq: Tensor, event_seq: Tensor, gap_seq: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, int]:
        """Loss of one batch of windows.

        Args:
            item_seq, event_seq, gap_seq: LongTensor[B, L+1], left-padded windows; the inputs
                are [:, :-1] and the targets [:, 1:].
            generator: random source of the uniform negatives.

        Returns:
            (scalar loss, number of targets it covers). A target counts when it is a real item
            (not pad, not OOV) and its input step is not padding: predicting from an empty
            history is the popularity fallback's job, not the model's.

        With ``target_horizon`` H > 1, position t's target is the step t + k for k drawn
        uniformly from 1..min(H, steps left in the window): a sampled form of the "dense all-action"
        loss of PinnerFormer (Pancha et al., KDD 2022), which trains a user vector for the
        coming days rather than for the next click. With ``skip_seen_targets``, a target that
        already occurs at or before position t is dropped, as evaluation ranks unseen items only.

        With ``visit_gap_bucket`` set, the horizon starts at the first step of position t's next
        visit (the first later step whose gap bucket is at least ``visit_gap_bucket``) instead of
        at step t + 1; a position with no later visit in its window has no target.
        """
        inputs = item_seq[:, :-1], event_seq[:, :-1], gap_seq[:, :-1]
        targets, target_events = item_seq[:, 1:], event_seq[:, 1:]
        batch, length = targets.shape
        positions = torch.arange(length, device=item_seq.device)[None, :].expand(batch, length)
        start = positions
        if self.visit_gap_bucket is not None:
            # start[b, t] = the smallest j >= t whose target step opens a visit (length if none).
            opens = gap_seq[:, 1:] >= self.visit_gap_bucket
            first = torch.where(opens, positions, torch.full_like(positions, length))
            start = first.flip(1).cummin(dim=1).values.flip(1)
        has_target = start < length
        if self.target_horizon > 1 or self.visit_gap_bucket is not None:
            index = horizon_index(start, self.target_horizon, generator)
            targets, target_events = targets.gather(1, index), target_events.gather(1, index)
        weights = self.event_weights[target_events]
        valid = (targets >= schema.FIRST_ITEM_INDEX) & (inputs[0] != schema.PAD_INDEX) & (weights > 0) & has_target
        if self.skip_seen_targets:
            # seen[b, t] = target t occurs among inputs 0..t of row b.
            earlier = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()
            seen = ((inputs[0][:, None, :] == targets[:, :, None]) & earlier[None]).any(dim=2)
            valid &= ~seen
        n_targets = int(valid.sum())
        if n_targets == 0:
            # Keep every parameter in the graph so that Horovod's allreduce still matches up.
            return sum(p.sum() for p in self.parameters()) * 0.0, 0  # type: ignore[return-value]
        seq_vecs = self.model.sequence_vectors(*inputs)
        if self.loss == "full":
            return full_softmax_loss(seq_vecs[valid], targets[valid], weights[valid], self.model.item_vectors()), n_targets
        num_items = self.model.num_items
        negatives = torch.randint(
            schema.FIRST_ITEM_INDEX, num_items, (self.uniform_negatives,), generator=generator
        ).to(item_seq.device)
        loss = sampled_softmax_loss(
            seq_vecs[valid], targets[valid], weights[valid], negatives,
            item_vecs=None, item_tower=self.model.output_item_vectors, item_prob=self.item_prob, num_items=num_items,
        )
        return loss, n_targets
