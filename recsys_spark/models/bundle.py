"""Everything needed to rebuild a registered ranker and map its outputs back to product ids.

A :class:`ModelBundle` is one self-contained file: the constructor arguments, the weights,
the item vocabulary the model was trained with and the resolved config. Evaluation, scoring
and the MLflow pyfunc all rebuild the model from it, so they score exactly what was trained.

A :class:`BaselineBundle` is the same kind of file for a tuned baseline (co-occurrence, ALS or
EASE, as evaluate fitted and tuned it): what the gate registers and serves when the baseline
beats the model on validation. Both give :meth:`ranker`, the one ranking path the pyfunc,
evaluation and scoring share; :func:`load` and :func:`read` return either kind.
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
from recsys_spark.models import rankers
from recsys_spark.models.two_tower import TwoTowerModel

FORMAT_VERSION = 1
# What a bundle file holds (its "kind"; a file without one holds a trained model).
MODEL_KIND, BASELINE_KIND = "model", "baseline"
# The baselines a BaselineBundle can hold (evaluation.baselines), as summaries name them.
BASELINE_NAMES = {"cooccurrence": "co-occurrence", "als": "ALS", "ease": "EASE"}


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

    ranker_name = MODEL_KIND  # what evaluate and the run summary call it

    def to_bytes(self) -> bytes:
        """Serialise with ``torch.save`` (tensors, plain dicts and numpy arrays only)."""
        return _write({
            "model_args": self.model_args,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "item_vocab": _vocab_columns(self.item_vocab),
            "config": self.config,
            "metrics": self.metrics,
        })

    @classmethod
    def from_bytes(cls, payload: bytes) -> "ModelBundle":
        """Inverse of :meth:`to_bytes` (:func:`read` takes either kind of bundle)."""
        bundle = read(payload)
        if not isinstance(bundle, cls):
            raise ValueError(f"the payload holds a {bundle.ranker_name} baseline, not a trained model: read it with "
                             "recsys_spark.models.bundle.read")
        return bundle

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> "ModelBundle":
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

    def ranker(self, item_vecs: Tensor | None = None):
        """The model as a ranker (``models.rankers.ModelRanker``): its own scores, every
        vocabulary item allowed. Args: item_vecs Tensor[N, d] computed elsewhere, or None."""
        return rankers.ModelRanker.from_bundle(self, item_vecs)

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
        return product_ids_of(self.item_vocab, self.model_args["num_items"])


@dataclass
class BaselineBundle:
    """A tuned baseline as a registered model: the ranker evaluate fitted on the training windows
    and tuned on validation, rebuilt exactly (:mod:`recsys_spark.evaluation.baselines`).

    Args:
        family: "cooccurrence", "als" or "ease" (a key of BASELINE_NAMES).
        params: the grid point tuned on validation, e.g. {"lambda": 100.0, "decay": 1.0}.
        arrays: the fit: cooccurrence ``indptr``, ``indices``, ``data`` (the item-item
            similarity as rankers.SparseRows); als ``item_factors`` float32 [N, r]; ease
            ``items`` int64 [n] and ``weights`` float32 [n, n].
        item_vocab: rows of schema.ITEM_VOCAB_SCHEMA of the features it was fitted on.
        model_args: ``num_items`` N and ``max_seq_len`` L, the keys a ModelBundle's share.
        config: the resolved config of the evaluate run that fitted it.
        metrics: headline numbers (e.g. its validation figures and the model's).
    """

    family: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    item_vocab: pd.DataFrame
    model_args: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in BASELINE_NAMES:
            raise ValueError(f"baseline {self.family!r} is not one of {', '.join(BASELINE_NAMES)}")

    @property
    def ranker_name(self) -> str:
        return self.family

    def to_bytes(self) -> bytes:
        """Serialise with ``torch.save`` (numpy arrays and plain dicts only)."""
        return _write({
            "kind": BASELINE_KIND,
            "family": self.family,
            "params": self.params,
            "arrays": {name: np.asarray(values) for name, values in self.arrays.items()},
            "item_vocab": _vocab_columns(self.item_vocab),
            "model_args": self.model_args,
            "config": self.config,
            "metrics": self.metrics,
        })

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> "BaselineBundle":
        return cls(family=raw["family"], params=raw["params"], arrays=raw["arrays"],
                   item_vocab=pd.DataFrame(raw["item_vocab"]), model_args=raw["model_args"], config=raw["config"],
                   metrics=raw.get("metrics", {}))

    def save(self, path: str) -> None:
        with open(path, "wb") as out:
            out.write(self.to_bytes())

    def product_ids(self) -> np.ndarray:
        """Returns: int64 array [num_items], the product_id of each item_idx (-1 for pad, OOV, gaps)."""
        return product_ids_of(self.item_vocab, self.model_args["num_items"])

    def ranker(self):
        """The ranker evaluate measured: this fit with its tuned settings, every vocabulary item
        allowed (as evaluate allows them)."""
        allowed = torch.from_numpy(self.product_ids() >= 0)
        arrays, params = self.arrays, self.params
        if self.family == "cooccurrence":
            matrix = rankers.SparseRows(arrays["indptr"], arrays["indices"], arrays["data"])
            return rankers.CooccurrenceRanker(matrix, params["decay"], allowed)
        if self.family == "als":
            return rankers.AlsRanker(arrays["item_factors"], params["reg_param"], params["alpha"], allowed)
        return rankers.EaseRanker(arrays["items"], arrays["weights"], params["decay"], self.model_args["num_items"],
                                  allowed)


Bundle = ModelBundle | BaselineBundle


def ranker_label(ranker_name: str) -> str:
    """How summaries and tags name a ranker: "the model", or a tuned baseline: "EASE (tuned)"."""
    return "the model" if ranker_name == MODEL_KIND else f"{BASELINE_NAMES[ranker_name]} (tuned)"


def read(payload: bytes) -> Bundle:
    """A bundle of either kind from its bytes (``to_bytes``): a BaselineBundle when the file says
    so, else a ModelBundle."""
    # weights_only=False: the payload holds numpy arrays and dicts, and it comes from our own
    # model registry, not from an untrusted source.
    raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"model bundle format {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
    kind = raw.get("kind", MODEL_KIND)
    if kind not in (MODEL_KIND, BASELINE_KIND):
        raise ValueError(f"model bundle of kind {kind!r}, expected {MODEL_KIND!r} or {BASELINE_KIND!r}")
    return (BaselineBundle if kind == BASELINE_KIND else ModelBundle)._from_raw(raw)


def load(path: str) -> Bundle:
    """:func:`read` of a bundle file (``save``)."""
    with open(path, "rb") as src:
        return read(src.read())


def product_ids_of(item_vocab: pd.DataFrame, num_items: int) -> np.ndarray:
    """Returns: int64 array [num_items], the product_id of each item_idx (-1 for pad, OOV, gaps)."""
    out = np.full(num_items, -1, dtype=np.int64)
    out[item_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)] = item_vocab[schema.PRODUCT_ID].to_numpy()
    return out


def _vocab_columns(item_vocab: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: item_vocab[c].to_numpy() for c in schema.ITEM_VOCAB_SCHEMA.fieldNames()}


def _write(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, buffer)
    return buffer.getvalue()
