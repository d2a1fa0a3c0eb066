"""Benchmark: daily incremental training against a full retrain (issue 21, item 4).

    nice -n 10 .venv/bin/python benchmarks/incremental_bench.py --out /tmp/ib
    .venv/bin/python benchmarks/incremental_bench.py --days 8 --history-days 14 --replay 3000 --out /tmp/ib

One generated log with taste drift (``generate.taste_drift``) and a growing catalogue
(``generate.new_items_per_day``) is cleaned once. Then, for each simulated day k = 1..--days,
featurize builds that day's features from the clean events up to day ``history + k`` (its own
folder; from day 2 on ``featurize.vocab_mode=extend`` from the day before, so every arm's model
indexes the same items): the windows up to two days before train, the day before validates and
the day itself is the test, "the next day's events" each day's models are judged on. Three arms
train on them, each in a chain of its own (registered under its own alias, which is also its
``train.parent_alias``):

- ``full``: ``train.mode=full``, from scratch on every window of the history;
- ``finetune``: ``train.mode=incremental`` with ``train.replay_windows=0``: yesterday's
  ``finetune`` model fine-tuned on the new day's windows only (the forgetting reference);
- ``replay``: ``train.mode=incremental`` with ``train.replay_windows=--replay``: yesterday's
  ``replay`` model on the new day's windows plus a seeded sample of older ones.

Day 1's full model starts all three chains. Every arm has the same model and optimiser settings
(conf/base.yaml's, ``train.launcher=local``); the incremental arms pass over their windows at most
``--incremental-epochs`` times (early stopping on validation as usual), the full one under
``train.max_steps``. Each model is ranked on the day's test users (full ranking, seen items
excluded, ``train.user_vector`` as training chose), and the bench prints per day and arm NDCG@20
and Recall@20 with 95% bootstrap intervals and users, the paired difference with ``full``, the
train stage's wall time (``runner.run``: window selection, training, logging, registration) and
the examples it processed (steps x batch size); then the averages over the days and the targets:
replay within 1% (relative) of full's NDCG@20 averaged over the days, and at most 25% of full's
training time on the last day.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import add_loop_arguments, command_line, fresh_folder, loop_overrides, set_aliases  # noqa: E402
from common import start_logging  # noqa: E402
from recsys_spark.config import Config, load_config  # noqa: E402

ARMS = ("full", "finetune", "replay")
K = 20
BOOTSTRAP = dict(samples=1000, seed=11, confidence=0.95)


def base_overrides(out: Path, args: argparse.Namespace) -> list[str]:
    """The settings every stage of every day shares."""
    return loop_overrides(out, args, args.history_days + args.days + 1)


def day_config(out: Path, args: argparse.Namespace, day: int, extra: list[str]) -> Config:
    return load_config(None, [*base_overrides(out, args), f"paths.clean=clean_day{day}",
                              f"paths.features=features_day{day}", f"paths.checkpoints=checkpoints_day{day}", *extra])


def clean_view(out: Path, last_day: str, day: int) -> None:
    """``clean_day<k>``: the clean events up to ``last_day`` (ISO), copied partition by partition."""
    source, view = out / "clean", out / f"clean_day{day}"
    if view.exists():
        shutil.rmtree(view)
    view.mkdir()
    for part in sorted(source.iterdir()):
        if part.name.startswith("event_date=") and part.name.split("=", 1)[1] <= last_day:
            shutil.copytree(part, view / part.name)


def evaluate_model(cfg: Config, version: str) -> dict[str, Any]:
    """The registered version ranked on the features' test users: per-user NDCG@K / Recall@K."""
    import torch

    from recsys_spark import io
    from recsys_spark.metrics import batch_metrics
    from recsys_spark.models.registry import load_bundle
    from recsys_spark.train import data
    from recsys_spark.train.validation import validation_lists

    bundle, _ = load_bundle(cfg, version=int(version))
    model = bundle.build_module()
    rows = data.read_eval_rows(io.feature_path(cfg.paths.resolve("features"), "test"))
    counted = np.flatnonzero([len(t) > 0 for t in rows.target_items])
    kept = data.EvalRows(rows.hist_items[counted], rows.hist_events[counted], rows.hist_gaps[counted],
                         [rows.seen_items[i] for i in counted], [rows.target_items[i] for i in counted])
    with torch.no_grad():
        lists = validation_lists(model, kept, K)
    return {name: values for name, values in batch_metrics(lists, kept.target_items, [K]).items()}


def interval_text(values: np.ndarray) -> str:
    from recsys_spark.evaluation.intervals import mean_interval

    found = mean_interval(values, **BOOTSTRAP)
    return f"{found.mean:.4f} [{found.low:.4f}, {found.high:.4f}] ({found.users} users)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_loop_arguments(parser, "/tmp/incremental_bench", 8, "simulated days (each: featurize, 3 trainings)",
                       "days of log before the first simulated day", users=4000)
    parser.add_argument("--replay", type=int, default=800, help="train.replay_windows of the replay arm")
    parser.add_argument("--incremental-epochs", type=int, default=3)
    parser.add_argument("--stage-timeout-minutes", type=float, default=60.0)
    parser.add_argument("--set", action="append", default=[], help="key=value for every stage (repeatable)")
    args = parser.parse_args(argv)
    start_logging(logging.INFO)

    from recsys_spark.cli import stage_function
    from recsys_spark.evaluation.intervals import mean_interval
    from recsys_spark.spark import get_session

    out = fresh_folder(args.out)
    command = command_line("incremental_bench.py", argv)
    started = time.time()
    cfg = load_config(None, base_overrides(out, args))
    spark = get_session(cfg.spark)
    stage_function("generate")(spark, cfg)
    stage_function("clean")(spark, cfg)
    start = dt_date(cfg.generate.start_date)
    print(f"generated and cleaned {cfg.generate.days} days in {time.time() - started:.0f} s", flush=True)

    rows: list[dict[str, Any]] = []
    for day in range(1, args.days + 1):
        last = start + np.timedelta64(args.history_days + day - 1, "D")
        clean_view(out, str(last), day)
        vocab = [] if day == 1 else ["featurize.vocab_mode=extend", f"featurize.vocab_from={out}/features_day{day - 1}"]
        featurize_cfg = day_config(out, args, day, vocab)
        began = time.time()
        features = stage_function("featurize")(spark, featurize_cfg)
        print(f"day {day} (test {last}): featurized in {time.time() - began:.0f} s; {features.get('train_windows')} "
              f"training windows", flush=True)
        for arm in ARMS:
            if day == 1 and arm != "full":
                continue  # the day-1 full model starts every chain (aliased below)
            extra = [f"mlflow.alias={arm}", f"train.parent_alias={arm}"]
            if arm != "full":
                replay = 0 if arm == "finetune" else args.replay
                extra += ["train.mode=incremental", f"train.replay_windows={replay}",
                          f"train.epochs={args.incremental_epochs}"]
            train_cfg = day_config(out, args, day, extra)
            began = time.time()
            summary = stage_function("train")(spark, train_cfg)
            seconds = time.time() - began
            if day == 1:  # the full model starts every chain
                set_aliases(train_cfg, list(ARMS), summary["version"])
            found = evaluate_model(train_cfg, summary["version"])
            row = {"day": day, "arm": arm, "seconds": seconds, "steps": summary["steps"],
                   "examples": summary["steps"] * train_cfg.train.batch_size, "version": summary["version"],
                   "user_vector": summary.get("user_vector"), **found}
            rows.append(row)
            print(f"  {arm:8s} NDCG@{K} {interval_text(found[f'ndcg@{K}'])}  Recall@{K} "
                  f"{interval_text(found[f'recall@{K}'])}  {seconds:.0f} s, {row['examples']:,} examples",
                  flush=True)
        for arm in ARMS[1:]:
            if day == 1:
                continue
            ours, full = by(rows, day, arm), by(rows, day, "full")
            diff = mean_interval(ours[f"ndcg@{K}"] - full[f"ndcg@{K}"], **BOOTSTRAP)
            print(f"  {arm} - full NDCG@{K}: {diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]", flush=True)

    report(rows, args, command, time.time() - started, out)
    return 0


def dt_date(iso: str) -> np.datetime64:
    return np.datetime64(iso, "D")


def by(rows: list[dict[str, Any]], day: int, arm: str) -> dict[str, Any]:
    return next(r for r in rows if r["day"] == day and r["arm"] == arm)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, command: str, seconds: float, out: Path) -> None:
    """The averages over the days 2.. (day 1 is the same model for every arm) and the targets."""
    days = sorted({r["day"] for r in rows if r["day"] > 1})
    print(f"\n== {command}: {len(days)} incremental days, {seconds / 60:.1f} min ==")
    print(f"{'arm':9s} {'mean NDCG@20':>13s} {'mean Recall@20':>15s} {'vs full (rel.)':>15s} "
          f"{'mean train s':>13s} {'last-day s':>11s} {'examples/day':>13s}")
    means = {}
    for arm in ARMS:
        mine = [by(rows, d, arm) for d in days]
        ndcg = float(np.mean([r[f"ndcg@{K}"].mean() for r in mine]))
        recall = float(np.mean([r[f"recall@{K}"].mean() for r in mine]))
        means[arm] = ndcg
        print(f"{arm:9s} {ndcg:13.4f} {recall:15.4f} {ndcg / means['full'] - 1:+14.1%} "
              f"{np.mean([r['seconds'] for r in mine]):13.0f} {mine[-1]['seconds']:11.0f} "
              f"{np.mean([r['examples'] for r in mine]):13,.0f}")
    last = days[-1]
    ratio = by(rows, last, "replay")["seconds"] / by(rows, last, "full")["seconds"]
    gap = means["replay"] / means["full"] - 1
    print(f"target 1 (replay within 1% of full's NDCG@20, averaged over days): {gap:+.2%} -> "
          f"{'met' if gap >= -0.01 else 'NOT met'}")
    print(f"target 2 (replay's training time <= 25% of full's on the last day): {ratio:.0%} -> "
          f"{'met' if ratio <= 0.25 else 'NOT met'}")
    dump = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows]
    (out / "incremental_bench.json").write_text(json.dumps({"command": command, "rows": dump}, default=str))
    print(f"per-user values: {out / 'incremental_bench.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
