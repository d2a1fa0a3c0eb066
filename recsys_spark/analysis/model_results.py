"""A trained model's results: the evaluation report as tables, nearest items in the model's item
space, and a user's history next to their recommendations.

Inputs are what the pipeline wrote: ``<paths.reports>/evaluation.json`` (evaluate), the
registered model's bundle (``recsys_spark.models.registry.load_bundle``), the
``user_history`` feature table and the recommendations (score), read here with pyarrow
from local paths.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys_spark import schema
from recsys_spark.errors import InputError

EVENT_NAMES = {code: name for name, code in schema.EVENT_CODE.items()}


# ----------------------------------------------------------------------------- reading


def load_report(path: str) -> dict[str, Any]:
    """Args: the evaluate stage's report (``<paths.reports>/evaluation.json``).

    Raises:
        InputError: the file is missing or not a JSON report with rankers.
    """
    if not os.path.isfile(path):
        raise InputError(f"evaluation report not found: {path}; run `recsys evaluate` first")
    try:
        with open(path) as src:
            report = json.load(src)
    except json.JSONDecodeError as exc:
        raise InputError(f"evaluation report {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(report, dict) or not isinstance(report.get("rankers"), dict):
        raise InputError(f"evaluation report {path} holds no 'rankers' section")
    return report


def read_table(path: str, columns: Sequence[str] | None = None, filters: list | None = None) -> pd.DataFrame:
    """A local Parquet table (a folder, partition columns included) as pandas.

    Raises:
        InputError: the path does not exist.
    """
    if not os.path.exists(path):
        raise InputError(f"table not found: {path}")
    return pq.read_table(path, columns=list(columns) if columns else None, filters=filters).to_pandas()


def latest_partition(path: str, column: str = schema.RUN_DATE) -> str:
    """The largest ``<column>=<value>`` partition value under a local folder (ISO dates sort).

    Raises:
        InputError: the folder is missing or holds no such partition.
    """
    prefix = f"{column}="
    values = sorted(p[len(prefix):] for p in os.listdir(path) if p.startswith(prefix)) if os.path.isdir(path) else []
    if not values:
        raise InputError(f"no {prefix}... partition under {path}; run `recsys score` first")
    return values[-1]


# ----------------------------------------------------------------------------- the report


def report_path(reports_folder: str) -> str:
    """Args: ``cfg.paths.resolve("reports")``. Returns: where evaluate writes its report."""
    # Here, not at the top: evaluate brings torch (2 s), which the notebooks that read results
    # through this module do not need.
    from recsys_spark.evaluation.evaluate import REPORT_FILE

    return os.path.join(reports_folder, REPORT_FILE)


def metric_columns(table: pd.DataFrame, prefixes: Sequence[str] = ("recall@", "ndcg@")) -> list[str]:
    """The columns of a :func:`ranker_table` that start with one of ``prefixes``, in order."""
    return [c for c in table.columns if c.startswith(tuple(prefixes))]


def ranker_table(report: Mapping[str, Any], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every ranker's overall metrics.

    Args:
        report: the evaluation report.
        metrics: the columns, in order; None means every metric of the first ranker.

    Returns:
        one row per ranker (index "ranker", the report's order), one column per metric.
    """
    rankers = report["rankers"]
    if not rankers:
        return pd.DataFrame()
    first = next(iter(rankers.values()))
    columns = list(metrics) if metrics else [m for m in first if m != "users"]
    table = pd.DataFrame([[values.get(m, np.nan) for m in columns] for values in rankers.values()],
                         index=pd.Index(list(rankers), name="ranker"), columns=columns)
    return table


def lift_table(table: pd.DataFrame, baseline: str = "popularity") -> pd.DataFrame:
    """Relative lift of each ranker over a baseline: value / baseline - 1 (NaN where the baseline is 0).

    Args:
        table: the output of :func:`ranker_table`.
        baseline: a ranker of the table.

    Raises:
        InputError: the baseline is not in the table.
    """
    if baseline not in table.index:
        raise InputError(f"baseline {baseline!r} is not among the report's rankers {list(table.index)}")
    base = table.loc[baseline].replace(0.0, np.nan)
    return (table / base - 1.0).drop(index=baseline)


def segment_table(report: Mapping[str, Any], metric: str | None = None) -> pd.DataFrame:
    """One metric per user segment (cold / warm users, head / tail targets, ...) and ranker.

    Args:
        report: the evaluation report, with its ``segments`` section.
        metric: default: the report's primary metric.

    Returns:
        index "segment" (the report's order), a column per ranker and "users" (users in the
        segment, from the first ranker).

    Raises:
        InputError: the report has no segments.
    """
    segments = report.get("segments")
    if not segments:
        raise InputError("the evaluation report has no per-segment results ('segments')")
    metric = metric or report["primary_metric"]
    names: list[str] = []
    for per_ranker in segments.values():
        names += [s for s in per_ranker if s not in names]
    table = pd.DataFrame(
        {ranker: [per.get(s, {}).get(metric, np.nan) for s in names] for ranker, per in segments.items()},
        index=pd.Index(names, name="segment"),
    )
    first = next(iter(segments.values()))
    table["users"] = [int(first.get(s, {}).get("users", 0)) for s in names]
    return table


# ----------------------------------------------------------------------------- the model


def nearest_items(item_vecs: np.ndarray, product_ids: np.ndarray, queries: Sequence[int], n: int = 5) -> pd.DataFrame:
    """The ``n`` items most similar to each query item, by cosine similarity of the item vectors.

    Args:
        item_vecs: float array [N, d], row i is item index i (e.g. the model's item_vectors()).
        product_ids: int array [N], the product_id of each item index, -1 where there is none
            (``ModelBundle.product_ids()``); those rows are never returned.
        queries: product ids to look up.
        n: neighbours per query (fewer when the catalogue is smaller).

    Returns:
        query, rank (1 = nearest), product_id, similarity; queries in the given order.

    Raises:
        InputError: a query is not an item of the model.
    """
    vecs = np.asarray(item_vecs, dtype=np.float64)
    product_ids = np.asarray(product_ids, dtype=np.int64)
    index_of = {int(p): i for i, p in enumerate(product_ids) if p >= 0}
    norms = np.linalg.norm(vecs, axis=1)
    unit = vecs / np.where(norms > 0, norms, 1.0)[:, None]
    rows = []
    for query in queries:
        if int(query) not in index_of:
            raise InputError(f"product_id {query} is not in the model's item vocabulary")
        i = index_of[int(query)]
        similarity = unit @ unit[i]
        similarity[(product_ids < 0) | (np.arange(len(product_ids)) == i)] = -np.inf
        count = min(n, int(np.isfinite(similarity).sum()))
        # Stable sort on -similarity: ties keep item-index order.
        best = np.argsort(-similarity, kind="stable")[:count]
        rows += [(int(query), rank, int(product_ids[j]), float(similarity[j])) for rank, j in enumerate(best, 1)]
    return pd.DataFrame(rows, columns=["query", "rank", schema.PRODUCT_ID, "similarity"])


def item_space(bundle) -> tuple[np.ndarray, np.ndarray]:
    """Args: a ModelBundle. Returns: (item vectors float32 [N, d] of the model's item tower, product ids int64 [N])."""
    import torch  # here, not at the top: only this function needs torch (2 s), see report_path

    with torch.no_grad():
        vectors = bundle.build_module().item_vectors().numpy()
    return vectors, bundle.product_ids()


def history_length(hist_items: Sequence[int]) -> int:
    """Steps of a left-padded history that are not padding."""
    return int(np.count_nonzero(np.asarray(hist_items) != schema.PAD_INDEX))


def pick_user(user_history: pd.DataFrame, recommended_users: Sequence[str]) -> str:
    """The user with the longest history among those with recommendations (ties: smallest id).

    Raises:
        InputError: no user has both.
    """
    candidates = user_history[user_history[schema.USER_ID].isin(set(recommended_users))]
    if candidates.empty:
        raise InputError("no user of user_history has recommendations")
    lengths = candidates[schema.HIST_ITEMS].map(history_length)
    ranked = candidates.assign(_length=lengths).sort_values(["_length", schema.USER_ID], ascending=[False, True])
    return str(ranked[schema.USER_ID].iloc[0])


def history_and_recommendations(
    history: Mapping[str, Any], recommendations: pd.DataFrame, product_ids: np.ndarray, n: int = 10
) -> pd.DataFrame:
    """A user's latest steps beside their recommendations, row by row.

    Args:
        history: one user_history row (hist_items left-padded with 0, hist_events).
        recommendations: that user's recommendation rows (rank, item_id, score, source).
        product_ids: int array [N], product_id of each item index (-1 where none).
        n: rows shown.

    Returns:
        step (1 = the most recent), viewed_product_id, event (view, cart, ...),
        rank, recommended_item_id, score, source; a side shorter than the other is left empty.
    """
    items = np.asarray(history[schema.HIST_ITEMS], dtype=np.int64)
    events = np.asarray(history[schema.HIST_EVENTS], dtype=np.int64)
    real = items != schema.PAD_INDEX
    items, events = items[real][::-1][:n], events[real][::-1][:n]
    lookup = np.asarray(product_ids, dtype=np.int64)
    past = pd.DataFrame(
        {
            "step": np.arange(1, len(items) + 1),
            "viewed_product_id": [int(lookup[i]) if 0 <= i < len(lookup) else -1 for i in items],
            "event": [EVENT_NAMES.get(int(e), "?") for e in events],
        }
    )
    recs = recommendations.sort_values(schema.RANK).head(n)
    future = pd.DataFrame(
        {
            schema.RANK: recs[schema.RANK].to_numpy(),
            "recommended_item_id": recs[schema.ITEM_ID].to_numpy(),
            schema.SCORE: recs[schema.SCORE].to_numpy(),
            schema.SOURCE: recs[schema.SOURCE].to_numpy(),
        }
    )
    return pd.concat([past, future], axis=1).astype({"step": "Int64", "viewed_product_id": "Int64", schema.RANK: "Int64",
                                                     "recommended_item_id": "Int64"})


def with_catalogue(frame: pd.DataFrame, catalogue: pd.DataFrame, column: str, prefix: str = "") -> pd.DataFrame:
    """``frame`` with the category_code and brand of the product ids in ``column`` (rows kept, in order).

    Args:
        catalogue: product_id, category_code, brand (e.g. clickstream.item_catalogue().toPandas()).
        prefix: put before the added columns' names (to label two product columns).
    """
    labels = catalogue[[schema.PRODUCT_ID, schema.CATEGORY_CODE, schema.BRAND]].rename(
        columns={schema.PRODUCT_ID: column, schema.CATEGORY_CODE: prefix + schema.CATEGORY_CODE, schema.BRAND: prefix + schema.BRAND}
    )
    return frame.merge(labels.astype({column: frame[column].dtype}), on=column, how="left")


def user_table(
    user_id: str,
    user_history: pd.DataFrame,
    recommendations: pd.DataFrame,
    product_ids: np.ndarray,
    catalogue: pd.DataFrame | None = None,
    n: int = 10,
) -> pd.DataFrame:
    """:func:`history_and_recommendations` of one user, labelled from the catalogue when given.

    Args:
        user_history: user_history rows (user_id, hist_items, hist_events).
        recommendations: recommendation rows of any users (user_id, rank, item_id, score, source).

    Raises:
        InputError: the user has no history row.
    """
    rows = user_history[user_history[schema.USER_ID] == user_id]
    if rows.empty:
        raise InputError(f"user {user_id!r} is not in user_history")
    table = history_and_recommendations(
        rows.iloc[0], recommendations[recommendations[schema.USER_ID] == user_id], product_ids, n
    )
    if catalogue is not None:
        table = with_catalogue(table, catalogue, "viewed_product_id", prefix="viewed_")
        table = with_catalogue(table, catalogue, "recommended_item_id", prefix="recommended_")
    return table
