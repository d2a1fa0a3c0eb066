"""Benchmark: two runs of the pipeline on the same data, paired on the same test users.

    .venv/bin/python benchmarks/paired_runs.py /tmp/mc/session_log_m1/session_log /tmp/mc/session_log_m2/session_log
    .venv/bin/python benchmarks/paired_runs.py A B --metric ndcg@20 --ranker model --missing zero

A and B are two ``paths.root`` folders (e.g. ``quality_bench.py --out X`` writes ``X/<regime>``)
of runs that differ in one setting. Each evaluate wrote every test user's metrics per ranker to
``reports/per_user_metrics`` (:data:`recsys_spark.evaluation.evaluate.PER_USER_TABLE`). This
prints, for each ranker, A's and B's mean over the users both evaluated, and the paired difference
A - B with its bootstrap interval (evaluate's resamples, seed and confidence), then the same over
the union of the users.

``--missing`` says what a user evaluated in one run and not in the other counts for there:
``zero`` (default) when the other run could not have ranked that user's target at all, as with
``featurize.min_item_count``: a user whose target was seen once in training is evaluated at 1
and left out at 2, where the target is out of the vocabulary, so a recommendation from that run
scores exactly 0 for them. ``drop`` pairs only the users both evaluated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_spark.evaluation import intervals
from recsys_spark.evaluation.evaluate import PER_USER_TABLE

SAMPLES, SEED, CONFIDENCE = 1000, 0, 0.95


def per_user(root: Path, ranker: str, metric: str) -> pd.Series:
    """One run's per-user values of ``metric`` for ``ranker``, indexed by user id."""
    table = root / "reports" / PER_USER_TABLE
    if not table.exists():
        sys.exit(f"paired_runs: {table} not found (a run of evaluate before per-user metrics were written?)")
    frame = pd.read_parquet(table)
    if metric not in frame.columns:
        sys.exit(f"paired_runs: {table} has no column {metric!r} (has {', '.join(frame.columns[2:])})")
    rows = frame[frame["ranker"] == ranker]
    return rows.set_index("user_id")[metric].astype(np.float64)


def paired(a: pd.Series, b: pd.Series, missing: str) -> tuple[intervals.Interval, float, float, int, int]:
    """A - B paired over the users both hold (or the union, missing ones at 0).

    Returns:
        (difference interval, mean of A, mean of B, users only in A, users only in B).
    """
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if missing == "zero":
        users = a.index.union(b.index)
        a, b = a.reindex(users, fill_value=0.0), b.reindex(users, fill_value=0.0)
    else:
        users = a.index.intersection(b.index)
        a, b = a.loc[users], b.loc[users]
    diff = intervals.mean_interval((a - b).to_numpy(), SAMPLES, SEED, CONFIDENCE)
    return diff, float(a.mean()), float(b.mean()), len(only_a), len(only_b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="paths.root of run A")
    parser.add_argument("b", type=Path, help="paths.root of run B")
    parser.add_argument("--metric", default="ndcg@20")
    parser.add_argument("--rankers", default="model,cooccurrence,ease,als,popularity",
                        help="comma-separated; each is paired with itself across the runs")
    parser.add_argument("--missing", choices=("zero", "drop"), default="zero")
    args = parser.parse_args(argv)
    print(f"A = {args.a}\nB = {args.b}\n{args.metric}, {CONFIDENCE:.0%} paired bootstrap ({SAMPLES} resamples)")
    for missing in ("drop", args.missing) if args.missing == "zero" else ("drop",):
        label = "users both evaluated" if missing == "drop" else "union of the users, missing ones at 0"
        print(f"\nover the {label}:")
        print(f"| ranker | A | B | A - B [95%] | users | only in A | only in B |\n|---|---|---|---|---|---|---|")
        for ranker in args.rankers.split(","):
            a, b = per_user(args.a, ranker, args.metric), per_user(args.b, ranker, args.metric)
            if a.empty or b.empty:
                print(f"| {ranker} | (not in both runs) | | | | | |")
                continue
            diff, mean_a, mean_b, only_a, only_b = paired(a, b, missing)
            print(f"| {ranker} | {mean_a:.4f} | {mean_b:.4f} | {diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] "
                  f"| {diff.users} | {only_a} | {only_b} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
