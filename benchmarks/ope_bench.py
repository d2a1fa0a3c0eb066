"""Benchmark: off-policy estimates of the next policy against its simulated on-policy truth
(issue 23, item 3: "RESULTS.md reports the relative errors in a table like OBP's").

    nice -n 10 .venv/bin/python benchmarks/ope_bench.py --out /tmp/ope_bench
    .venv/bin/python benchmarks/ope_bench.py --users 2000 --seeds 2 --logging-share 0.3 --out /tmp/ob

The pipeline runs once on generated data (generate, clean, featurize, a short training with
``train.launcher=local``). Then the score stage serves the day after the log with the LOGGING
policy (``score.explore_policy=epsilon``, ``score.explore_share=--logging-share``), the
feedback simulator (``recsys_spark.data.feedback_sim``: position-biased clicks by the
simulated users' known tastes) shows those lists to the users with --seeds different click
draws, and clean validates each draw's feedback as it would a shop's (``paths.feedback`` ->
``paths.clean_feedback``). For each TARGET policy (the model's greedy lists, epsilon and
Thompson sampling at ``score.explore_share=0.1``) the evaluate stage's off-policy estimator
(``evaluation.offpolicy.evaluate_target``) values it from each draw's logs with IPS, SNIPS, DM
and DR; its truth is the mean expected clicks per list of the lists the score stage serves under
the target to the same users (``feedback_sim.policy_value``, exact for each list; for a stochastic
target one draw per user, whose mean over the users is an unbiased estimate of the policy's).

It prints, per target: the truth, each estimator's estimate with its 95% bootstrap interval and
effective sample size per draw, and OBP's summary, the relative error |estimate - truth| / truth,
averaged over the draws, with how many intervals covered the truth.
"""

from __future__ import annotations

import argparse
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

from common import command_line, describe, fresh_folder, read_recommendations, start_logging  # noqa: E402
from recsys_spark.config import load_config  # noqa: E402

TARGETS = {
    "greedy": ["score.explore_share=0.0"],
    "epsilon 0.1": ["score.explore_policy=epsilon", "score.explore_share=0.1"],
    "thompson 0.1": ["score.explore_policy=thompson", "score.explore_share=0.1"],
}
ESTIMATORS = ("ips", "snips", "dm", "dr")


def overrides(out: Path, args: argparse.Namespace) -> list[str]:
    return [
        f"paths.root={out}",
        "spark.show_progress=false",
        "spark.shuffle_partitions=4",
        f"generate.n_users={args.users}",
        f"generate.days={args.days}",
        "clean.allow_dev_key=true",
        "train.launcher=local",
        "train.threads_per_proc=2",
        f"train.max_steps={args.train_steps}",
        "score.model_alias=challenger",
        f"score.run_date={args.run_date}",
        "evaluate.ope_days=0",
        *args.set,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ope_bench"))
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--logging-share", type=float, default=0.3, help="the logging policy's explore_share")
    parser.add_argument("--seeds", type=int, default=3, help="click draws of the simulator")
    parser.add_argument("--set", action="append", default=[], help="key=value for every stage (repeatable)")
    args = parser.parse_args(argv)
    start_logging(logging.INFO)

    from recsys_spark import io
    from recsys_spark.cli import stage_function
    from recsys_spark.data import feedback_sim
    from recsys_spark.data.generate import build_world
    from recsys_spark.etl.feedback import clean_feedback
    from recsys_spark.etl.pseudonym import DEV_KEY
    from recsys_spark.evaluation.offpolicy import evaluate_target
    from recsys_spark.models.registry import load_bundle
    from recsys_spark.spark import get_session

    out = fresh_folder(args.out)
    started = time.time()
    start = np.datetime64(load_config(None, []).generate.start_date, "D")
    args.run_date = str(start + np.timedelta64(args.days, "D"))  # the day after the log
    command = command_line("ope_bench.py", argv)
    base = overrides(out, args)
    cfg = load_config(None, base)
    spark = get_session(cfg.spark)
    for stage in ("generate", "clean", "featurize", "train"):
        stage_function(stage)(spark, cfg)
    print(f"pipeline ready in {time.time() - started:.0f} s", flush=True)

    world, model = build_world(cfg.generate), feedback_sim.ClickModel()
    logging_cfg = load_config(None, [*base, "score.explore_policy=epsilon",
                                     f"score.explore_share={args.logging_share}", "paths.recommendations=recs_logging"])
    stage_function("score")(spark, logging_cfg)
    logged_recs = read_recommendations(out / "recs_logging", args.run_date)
    bundle, _ = load_bundle(cfg, alias="challenger")
    vocab = io.read_features(spark, cfg.paths.resolve("features"), "item_vocab").toPandas()

    truths: dict[str, float] = {}
    for name, extra in TARGETS.items():
        target_cfg = load_config(None, [*base, *extra, f"paths.recommendations=recs_{name.split()[0]}"])
        stage_function("score")(spark, target_cfg)
        served = read_recommendations(out / f"recs_{name.split()[0]}", args.run_date)
        served = served[served["user_id"].isin(set(logged_recs["user_id"]))]
        truths[name] = feedback_sim.policy_value(world, cfg.generate, served, model, DEV_KEY)
    logged_truth = feedback_sim.policy_value(world, cfg.generate, logged_recs, model, DEV_KEY)
    print(f"truth, expected clicks per list: logging (epsilon {args.logging_share}) {logged_truth:.4f}; "
          + "; ".join(f"{name} {value:.4f}" for name, value in truths.items()), flush=True)

    results: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        feedback = feedback_sim.simulate_feedback(world, cfg.generate, logged_recs, model, DEV_KEY, seed=seed)
        feedback_path = out / "feedback"
        if feedback_path.exists():
            shutil.rmtree(feedback_path)
        feedback_sim.write_feedback(None, feedback, str(feedback_path))
        counts = clean_feedback(spark, logging_cfg)  # checked against the lists it served
        clean = io.read_clean_feedback(spark, cfg.paths.resolve("clean_feedback"))
        print(f"draw {seed}: {len(feedback):,} exposures, {int(feedback['clicked'].sum()):,} clicks; clean kept "
              f"{counts['rows_kept']:,} of {counts['rows_read']:,}", flush=True)
        for name, extra in TARGETS.items():
            target_cfg = load_config(None, [*base, *extra])
            section = evaluate_target(spark, target_cfg, bundle, clean, vocab)
            if not section.get("available", False) or "estimates" not in section:
                raise SystemExit(f"no off-policy estimate for {name}: {section.get('note')}")
            row = {"seed": seed, "target": name, "truth": truths[name], "logged": section["logged"]}
            for estimator in ESTIMATORS:
                row[estimator] = section["estimates"][estimator]
            results.append(row)
            print(f"  {name:13s} truth {truths[name]:.4f}  " + "  ".join(
                f"{e} {describe(row[e])}" for e in ESTIMATORS), flush=True)
    summarise(results, args, command, time.time() - started)
    return 0


def summarise(results: list[dict[str, Any]], args: argparse.Namespace, command: str, seconds: float) -> None:
    print(f"\n== {command}: {args.seeds} click draws, logging epsilon {args.logging_share}, {seconds / 60:.1f} min ==")
    print("relative error |estimate - truth| / truth, mean over the draws (intervals covering the truth):")
    print(f"{'target':14s} {'truth':>8s} " + " ".join(f"{e:>16s}" for e in ESTIMATORS))
    for name in TARGETS:
        rows = [r for r in results if r["target"] == name]
        truth = rows[0]["truth"]
        cells = []
        for estimator in ESTIMATORS:
            found = [r[estimator] for r in rows if r[estimator].get("value") is not None]
            if not found:
                cells.append(f"{'withheld':>16s}")
                continue
            error = np.mean([abs(f["value"] - truth) / truth for f in found])
            covered = sum(f["low"] <= truth <= f["high"] for f in found)
            cells.append(f"{error:9.3f} ({covered}/{len(found)})")
        print(f"{name:14s} {truth:8.4f} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())
