"""Warm starts: a trained model's weights carried into a model of a grown vocabulary.

Incremental training (``train.mode=incremental``) starts from the registered parent's weights.
Featurize extends the parent's vocabularies append-only (``featurize.vocab_mode=extend``), so
every index the parent knows keeps its meaning and the new values take the indices after it:
growing a table is copying the parent's rows in front and initialising the rows after them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from recsys_spark import schema
from recsys_spark.errors import InputError
from recsys_spark.models.two_tower import TwoTowerModel

# The constructor arguments that are vocabulary sizes: a child may have more, never fewer.
GROWN_ARGS = ("num_items", "num_categories", "num_brands")
# The weights and buffers whose first dimension is a vocabulary's size.
TABLES = {
    "item_tower.id_embedding.weight": "num_items",
    "item_bias.weight": "num_items",
    "item_tower.item_category": "num_items",
    "item_tower.item_brand": "num_items",
    "item_tower.item_price_bucket": "num_items",
    "item_tower.category_embedding.weight": "num_categories",
    "item_tower.brand_embedding.weight": "num_brands",
}
# Rows of new items start from their category's mean row of these (where the category has items).
CATEGORY_MEAN_TABLES = ("item_tower.id_embedding.weight", "item_bias.weight")


def incompatibility(parent_args: Mapping[str, Any], child_args: Mapping[str, Any]) -> str | None:
    """Why a model of ``child_args`` cannot start from weights of ``parent_args`` (None if it can).

    Every argument but the vocabulary sizes must be equal (dimension, layers, heads, sequence
    length, options); the vocabularies may only grow.
    """
    for key in sorted(set(parent_args) | set(child_args)):
        parent, child = parent_args.get(key), child_args.get(key)
        if key in GROWN_ARGS:
            if child is None or parent is None or int(child) < int(parent):
                return f"{key} shrank from {parent} to {child}: the vocabulary was not extended from the parent's"
        elif key != "dropout" and parent != child:  # dropout is a training setting, not a shape
            return f"{key} is {child} here, {parent} in the parent model"
    return None


def grow_state(parent_state: Mapping[str, Tensor], parent_args: Mapping[str, Any], child_args: Mapping[str, Any],
               item_category: np.ndarray | Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The parent's weights in the shapes of a model of ``child_args``.

    Args:
        parent_state: the parent's state dict.
        parent_args, child_args: TwoTowerModel constructor arguments (see :func:`incompatibility`).
        item_category: int [child num_items], each item's category_idx in the grown vocabulary.
        seed: seeds the initialisation of the rows no parent row or category mean fills.

    Returns:
        A state dict for ``TwoTowerModel(**child_args)``: the parent's rows unchanged at their
        indices; a new item's id-embedding row and bias its category's mean over the parent's
        items (by ``item_category``) where the category has some, else as a fresh model
        initialises them; new category and brand rows as initialised.

    Raises:
        InputError: the shapes are incompatible (see :func:`incompatibility`).
    """
    reason = incompatibility(parent_args, child_args)
    if reason is not None:
        raise InputError(f"cannot warm-start from the parent model: {reason}")
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    fresh = TwoTowerModel(**child_args).state_dict()
    torch.set_rng_state(generator_state)
    grown = {}
    for name, tensor in parent_state.items():
        if name not in TABLES:
            grown[name] = tensor.clone()
            continue
        table = fresh[name].clone()
        table[: tensor.shape[0]] = tensor
        grown[name] = table
    old, new = int(parent_args["num_items"]), int(child_args["num_items"])
    if new > old:
        categories = torch.as_tensor(np.asarray(item_category), dtype=torch.long)
        if categories.shape != (new,):
            raise ValueError(f"item_category: expected shape ({new},), got {tuple(categories.shape)}")
        known = torch.arange(schema.FIRST_ITEM_INDEX, old)
        added = torch.arange(max(old, schema.FIRST_ITEM_INDEX), new)
        for name in CATEGORY_MEAN_TABLES:
            table = grown[name]
            sums = torch.zeros(int(categories.max()) + 1, table.shape[1], dtype=table.dtype)
            counts = torch.zeros(sums.shape[0], dtype=table.dtype)
            sums.index_add_(0, categories[known], table[known])
            counts.index_add_(0, categories[known], torch.ones(len(known), dtype=table.dtype))
            # Category 0 is "unknown": no category, so no mean to start from.
            has_mean = (counts[categories[added]] > 0) & (categories[added] != schema.VOCAB_NULL_INDEX)
            rows = added[has_mean]
            table[rows] = sums[categories[rows]] / counts[categories[rows], None]
    return grown


def grow_moments(moments: Mapping[str, Mapping[str, Any]], grown_state: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    """The parent's optimiser moments in the shapes of the grown weights.

    Args:
        moments: {parameter name (a state-dict key): {"step", "exp_avg", "exp_avg_sq"}}, AdamW's
            state of the parent's last step (see ``train.checkpoint.optimizer_moments``).
        grown_state: :func:`grow_state`'s result.

    Returns:
        The same moments with every grown table padded with zero rows (a new row has no history:
        AdamW treats it as it treats a fresh parameter's); names the grown model lacks are dropped.
    """
    grown: dict[str, dict[str, Any]] = {}
    for name, state in moments.items():
        if name not in grown_state:
            continue
        shape = grown_state[name].shape
        entry = {"step": state["step"]}
        for key in ("exp_avg", "exp_avg_sq"):
            tensor = state[key]
            if tensor.shape != shape:
                padded = torch.zeros(shape, dtype=tensor.dtype)
                padded[: tensor.shape[0]] = tensor
                tensor = padded
            entry[key] = tensor.clone()
        grown[name] = entry
    return grown
