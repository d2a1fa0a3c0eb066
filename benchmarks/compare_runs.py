"""Are two pipeline runs' outputs the same, exactly? For refactors that must not move an output.

    .venv/bin/python benchmarks/compare_runs.py RUN_A RUN_B     # each a paths.root (e.g. quality_bench's <out>/demo)

Compares ``reports/evaluation.json`` key by key (every value that differs is printed with its
path), then ``reports/per_user_metrics`` and ``recommendations`` as frames sorted by their scalar
columns (``DataFrame.equals``: values and dtypes). Exits 1 when anything but the run's own
identity (its MLflow run id, notes that name its folder) differs.

The recommendations of two runs compare only for the same run date: exploration is seeded by it.
Run both on one UTC day, or pin it (``--set score.run_date=YYYY-MM-DD``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

TABLES = ("reports/per_user_metrics", "recommendations")
# Keys that name the run itself, not what it computed.
OWN_IDENTITY = ("/mlflow_run_id", "/off_policy/note")


def json_differences(a, b, path: str = "") -> list[str]:
    """Every ``path: a != b`` between two parsed JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{path}/{key}: only in {'B' if key not in a else 'A'}")
            else:
                out += json_differences(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in json_differences(u, v, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def sorted_frame(folder: Path) -> pd.DataFrame:
    frame = pd.read_parquet(folder)
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):  # partition columns
            frame[column] = frame[column].astype(str)
    scalar = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, str) or not hasattr(v, "__len__")).all()]
    return frame.sort_values(scalar).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    report = "reports/evaluation.json"
    found = json_differences(json.loads((args.run_a / report).read_text()), json.loads((args.run_b / report).read_text()))
    moved = [d for d in found if not d.startswith(OWN_IDENTITY)]
    print(f"{report}: {len(found)} differences, {len(moved)} beyond the run's own identity")
    for line in found[:40]:
        print("  " + line)
    for table in TABLES:
        a, b = sorted_frame(args.run_a / table), sorted_frame(args.run_b / table)
        same = a.equals(b)
        print(f"{table}: {len(a):,} and {len(b):,} rows, {'equal' if same else 'DIFFERENT'}")
        moved += [] if same else [table]
    return 1 if moved else 0


if __name__ == "__main__":
    raise SystemExit(main())
