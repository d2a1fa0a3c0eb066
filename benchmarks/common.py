"""What the loop benchmarks share (exploration_bench.py, incremental_bench.py, ope_bench.py): the
settings of a simulated-days run, the output folder and command line, a day's recommendations,
the registry aliases and how an off-policy estimate reads."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from recsys_spark.config import Config


def add_loop_arguments(parser: argparse.ArgumentParser, out: str, days: int, days_help: str, history_help: str,
                       users: int) -> None:
    """Add the options of the world a simulated-days run shares (:func:`loop_overrides` reads
    them), in this order: --out (default ``out``), --days, --history-days (14), --users, --items
    (1500), --new-items-per-day (10) and --taste-drift (0.5)."""
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--days", type=int, default=days, help=days_help)
    parser.add_argument("--history-days", type=int, default=14, help=history_help)
    parser.add_argument("--users", type=int, default=users)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--new-items-per-day", type=int, default=10)
    parser.add_argument("--taste-drift", type=float, default=0.5)


def loop_overrides(out: Path, args: argparse.Namespace, generate_days: int, *extra: str) -> list[str]:
    """The settings every stage of a simulated-days run shares: the world of ``args`` (users,
    items, new items per day, taste drift) over ``generate_days`` days, one validation and one test
    day, local training on 2 threads; then ``extra``, then the user's ``--set``."""
    return [
        f"paths.root={out}",
        "spark.show_progress=false",
        f"spark.stage_timeout_minutes={args.stage_timeout_minutes}",
        "spark.shuffle_partitions=4",
        f"generate.n_users={args.users}",
        f"generate.n_items={args.items}",
        f"generate.days={generate_days}",
        f"generate.new_items_per_day={args.new_items_per_day}",
        f"generate.taste_drift={args.taste_drift}",
        "clean.allow_dev_key=true",
        "featurize.validation_days=1",
        "featurize.test_days=1",
        "evaluate.protocol=temporal",
        "train.launcher=local",
        "train.threads_per_proc=2",
        *extra,
        *args.set,
    ]


def start_logging(level: int) -> None:
    """Other libraries' warnings only; the package's own lines from ``level``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recsys_spark").setLevel(level)


def fresh_folder(path: Path) -> Path:
    """``path`` resolved, emptied and created."""
    out = path.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def command_line(script: str, argv: list[str] | None) -> str:
    """How the benchmark was called, e.g. ``benchmarks/ope_bench.py --seeds 3``, for its report."""
    return f"benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def read_recommendations(path: Path, run_date: str) -> pd.DataFrame:
    """The recommendations of one run date (the score stage's long table, run_date as a date)."""
    frame = pq.read_table(path / f"run_date={run_date}").to_pandas()
    frame["run_date"] = pd.Timestamp(run_date).date()
    return frame


def set_aliases(cfg: Config, aliases: list[str], version: str) -> None:
    """Point each alias of the registered model at ``version``."""
    import mlflow  # here: only the benchmarks that register models need mlflow (2 s)
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    for name in aliases:
        client.set_registered_model_alias(cfg.mlflow.registered_model, name, version)


def describe(found: dict[str, Any]) -> str:
    """An off-policy estimate (ope.Estimate.as_dict()) in one line: value, interval and ESS, or why
    it was withheld."""
    if not found or found.get("value") is None:
        return f"withheld ({found.get('reason') if found else 'no estimate'})"
    return f"{found['value']:.4f} [{found['low']:.4f}, {found['high']:.4f}] ess {found['ess']:,.0f}"
