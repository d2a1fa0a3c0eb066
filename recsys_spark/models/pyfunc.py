"""A registered ranker as an MLflow pyfunc: histories in, top-K product ids out.

The pyfunc's only artifact is the bundle file: a trained model's
:class:`~recsys_spark.models.bundle.ModelBundle`, or the
:class:`~recsys_spark.models.bundle.BaselineBundle` of a tuned baseline the gate serves in its
place; both rank through their ``ranker()``, with the same input and output. The
``recsys_spark`` package must be importable where the model is loaded.
"""

from __future__ import annotations

import os
import tempfile
from importlib import metadata
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.models import infer_signature
import numpy as np
import pandas as pd

from recsys_spark import schema
from recsys_spark.models import bundle as bundles
from recsys_spark.models.bundle import Bundle
from recsys_spark.schema import ITEM_IDS, SCORES

BUNDLE_ARTIFACT = "bundle"
BUNDLE_FILE = "model_bundle.pt"
INPUT_COLUMNS = (schema.HIST_ITEMS, schema.HIST_EVENTS, schema.HIST_GAPS, schema.SEEN_ITEMS)
DEFAULT_K = 10


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(df)`` -> DataFrame with ``item_ids`` (top-K product_ids) and ``scores`` per row.

    Input columns: hist_items, hist_events, hist_gaps (int lists of equal length L, left
    padded) and seen_items (int list, excluded from the ranking). Param ``k`` (default 10).
    """

    def load_context(self, context: Any) -> None:
        self.bundle = bundles.load(context.artifacts[BUNDLE_ARTIFACT])
        self._prepare()

    def _prepare(self) -> None:
        self.ranker = self.bundle.ranker()
        self.product_ids = self.bundle.product_ids()

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "RecommenderPyfunc":
        """The same predictor without MLflow (what ``load_context`` builds)."""
        obj = cls()
        obj.bundle = bundle
        obj._prepare()
        return obj

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Args:
            model_input: one row per user with the INPUT_COLUMNS list columns (Spark may hand
                them over as float arrays; they are cast to int64).
            params: {"k": int}.

        Returns:
            DataFrame [rows] with item_ids (list of K product_id) and scores (list of K float),
            best first; pad, OOV, unknown and seen items are never returned, so a user with fewer
            than K other items gets a shorter list.
        """
        k = int((params or {}).get("k", DEFAULT_K))
        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks column(s) {', '.join(missing)}")
        if len(model_input) == 0:
            return pd.DataFrame({ITEM_IDS: pd.Series([], dtype=object), SCORES: pd.Series([], dtype=object)})
        # The ranker allows the bundle's vocabulary items only and leaves each row's seen_items out.
        top, scores = self.ranker.recommend(model_input, k)
        filled = top != schema.EMPTY_SLOT  # empty slots only trail: a user with fewer eligible items gets a shorter list
        return pd.DataFrame(
            {
                ITEM_IDS: [self.product_ids[row[keep]].tolist() for row, keep in zip(top, filled)],
                SCORES: [row[keep].tolist() for row, keep in zip(scores, filled)],
            }
        )


def example_input(bundle: Bundle, rows: int = 2) -> pd.DataFrame:
    """A small, valid input: short histories of the first vocabulary items, left-padded."""
    length = bundle.model_args["max_seq_len"]
    items = bundle.item_vocab[schema.ITEM_IDX].to_numpy(dtype=np.int64)[: 2 * rows]
    out = []
    for r in range(rows):
        hist = items[r::rows][:2].tolist() or [schema.OOV_INDEX]
        pad = [schema.PAD_INDEX] * (length - len(hist))
        out.append(
            {
                schema.HIST_ITEMS: pad + hist,
                schema.HIST_EVENTS: pad + [schema.EVENT_CODE["view"]] * len(hist),
                schema.HIST_GAPS: pad + [0] + [5] * (len(hist) - 1),
                schema.SEEN_ITEMS: hist,
            }
        )
    return pd.DataFrame(out)


def log_model(bundle: Bundle, registered_model: str | None, k: int = DEFAULT_K):
    """Log the bundle as a pyfunc under the active run (and register it when a name is given).

    Returns:
        mlflow.models.model.ModelInfo (``registered_model_version`` holds the new version).
    """
    example = example_input(bundle)
    output = RecommenderPyfunc.from_bundle(bundle).predict(None, example, {"k": k})
    signature = infer_signature(example, output, params={"k": k})
    with tempfile.TemporaryDirectory(prefix="recsys_bundle_") as tmp:
        path = os.path.join(tmp, BUNDLE_FILE)
        bundle.save(path)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=RecommenderPyfunc(),
            artifacts={BUNDLE_ARTIFACT: path},
            signature=signature,
            input_example=example,
            registered_model_name=registered_model,
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    out = []
    for name in ("torch", "numpy", "pandas", "pyarrow", "mlflow"):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out
