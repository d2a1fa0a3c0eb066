"""Everything needed to rebuild a trained model and map its outputs back to product ids.

A :class:`ModelBundle` is one self-contained file: the constructor arguments, the weights,
the item vocabulary the model was trained with and the resolved config. Evaluation, scoring
and the MLflow pyfunc all rebuild the model from it, so they score exactly what was trained.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recsys_spark import schema
from recsys_spark.models.two_tower import TwoTowerModel

FORMAT_VERSION = 1


# What a model was built with when its model_args predate the key (the options came later).
LEGACY_MODEL_ARGS = {"use_user_features": False, "use_interest_pooling": False, "user_vector": "last"}


@dataclass
class ModelBundle:
    """Args:
        model_args: ``TwoTowerModel(**model_args)`` constructor arguments.
        state_dict: the trained weights (CPU tensors), item side-feature buffers included.
        item_vocab: rows of schema.ITEM_VOCAB_SCHEMA (item_idx -> product_id and features).
        config: the resolved config (``Config.to_dict()``) of the training run.
        metrics: headline numbers of the training run (e.g. best validation NDCG).
    """

    model_args: dict[str, Any]
    state_dict: dict[str, Tensor]
    item_vocab: pd.DataFrame
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialise with ``torch.save`` (tensors, plain dicts and numpy arrays only)."""
        buffer = io.BytesIO()
        vocab = {c: self.item_vocab[c].to_numpy() for c in schema.ITEM_VOCAB_SCHEMA.fieldNames()}
        torch.save(
            {
                "format_version": FORMAT_VERSION,
                "model_args": self.model_args,
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
                "item_vocab": vocab,
                "config": self.config,
                "metrics": self.metrics,
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "ModelBundle":
        """Inverse of :meth:`to_bytes`."""
        # weights_only=False: the payload holds numpy arrays and dicts, and it comes from our
        # own model registry, not from an untrusted source.
        raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"model bundle format {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
        return cls(
            model_args=raw["model_args"],
            state_dict=raw["state_dict"],
            item_vocab=pd.DataFrame(raw["item_vocab"]),
            config=raw["config"],
            metrics=raw.get("metrics", {}),
        )

    def save(self, path: str) -> None:
        with open(path, "wb") as out:
            out.write(self.to_bytes())

    @classmethod
    def load(cls, path: str) -> "ModelBundle":
        with open(path, "rb") as src:
            return cls.from_bytes(src.read())

    def build_module(self) -> TwoTowerModel:
        """Returns: the TwoTowerModel with the trained weights, in eval mode.

        A bundle saved before an option existed lacks its key in model_args; it was trained
        without it (LEGACY_MODEL_ARGS), whatever today's default.
        """
        model = TwoTowerModel(**{**LEGACY_MODEL_ARGS, **self.model_args})
        model.load_state_dict(self.state_dict)
        return model.eval()

    def product_ids(self) -> np.ndarray:
        """Returns: int64 array [num_items], the product_id of each item_idx (-1 for pad, OOV, gaps)."""
        out = np.full(self.model_args["num_items"], -1, dtype=np.int64)
        out[self.item_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)] = self.item_vocab[schema.PRODUCT_ID].to_numpy()
        return out
