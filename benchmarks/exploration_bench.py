"""Benchmark: exploration in a closed loop, day after day (issue 23, item 4).

    nice -n 5 .venv/bin/python benchmarks/exploration_bench.py --out /tmp/xb
    .venv/bin/python benchmarks/exploration_bench.py --out /tmp/xb --days 10 --history-days 10 --users 1200 \
        --items 1000 --replay 300 --set train.embedding_dim=32 --set train.num_layers=1   # RESULTS.md, 29 min

One world (``generate``: drifting tastes, ``--new-items-per-day`` launches a day) makes the shop's
organic log. Its first ``--history-days`` days are cleaned and featurized once, and one full
training on them starts every setting's chain. Then, for each simulated day k = 1..--days (run
date R = the history's end + k - 1) and each SETTING (``score.explore_share`` in {0, 0.05, 0.1}
with ``score.explore_policy`` epsilon or Thompson; share 0 is the same for both):

1. score: the setting's latest model (registered under the setting's alias) serves every known
   user a list of 20 for R, with the setting's policy and propensities;
2. feedback: the simulator (``recsys_spark.data.feedback_sim``, position-biased clicks by the
   users' known tastes on R) shows those lists, with the same click draws for every setting
   (common random numbers); the feedback goes to the setting's ``paths.feedback``;
3. clean: R's organic events plus the events of those clicks (``feedback_sim.click_events``: a
   view, and a cart and a purchase for a purchase) are cleaned into the setting's own clean
   events, and its feedback into its clean feedback (checked against the lists served);
4. featurize (the vocabulary extended from the day before) and incremental training
   (``train.mode=incremental``, ``train.replay_windows=--replay``, the parent being the
   setting's alias), so tomorrow's model has seen today's reactions to its lists. A Thompson
   setting's posteriors are updated from its feedback counts (``score.feedback_counts_path``).

Each setting's model therefore learns from its own lists' clicks: what exploration buys is
information about items the model would not show. The bench prints per day and setting the
clicks drawn, the exact expected clicks of the lists served (``feedback_sim.policy_value``) and
the catalogue coverage so far; and at the end:

- cumulative clicks (drawn and expected) per setting, the paired difference with no exploration
  over the users (95% bootstrap interval, users counted), and catalogue coverage (distinct items
  shown / items launched by the last day);
- the model's NDCG@20 on the simulator's truth: each setting's final model ranks greedily
  (``explore_share=0``) for the day after the last, and each list's DCG with the users' true
  relevance (``ClickModel.relevance``) as gains is divided by the best list's (the 20 most
  relevant launched items); the day-0 model's beside them;
- off-policy evaluation on the last day: each setting's policy on that day (its own model,
  history and settings) is valued from the logged feedback of that day of each other setting
  named by ``--ope-loggers`` (exploring ones: a greedy log supports no other list)
  (``evaluation.offpolicy.evaluate_target``: IPS, SNIPS, DM, DR with bootstrap intervals and
  effective sample sizes) and compared with its truth, the expected clicks per list of what it
  served that day to the same users.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import add_loop_arguments, command_line, describe, fresh_folder, loop_overrides  # noqa: E402
from common import read_recommendations, set_aliases, start_logging  # noqa: E402
from recsys_spark.config import Config, load_config  # noqa: E402

K = 20
BOOTSTRAP = dict(samples=1000, seed=11, confidence=0.95)
ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass(frozen=True)
class Setting:
    """One exploration setting: its alias (also its folder) and its score keys."""

    name: str
    alias: str
    share: float
    policy: str

    @property
    def score_keys(self) -> list[str]:
        return [f"score.explore_share={self.share}", f"score.explore_policy={self.policy}"]


SETTINGS = (
    Setting("none", "none", 0.0, "epsilon"),
    Setting("epsilon 0.05", "eps05", 0.05, "epsilon"),
    Setting("epsilon 0.1", "eps10", 0.1, "epsilon"),
    Setting("thompson 0.05", "ts05", 0.05, "thompson"),
    Setting("thompson 0.1", "ts10", 0.1, "thompson"),
)


def base_overrides(out: Path, args: argparse.Namespace) -> list[str]:
    """The settings every stage of every day and setting shares."""
    return loop_overrides(out, args, args.history_days + args.days, "generate.defects=false",
                          f"train.max_steps={args.train_steps}", f"score.top_k={K}", "evaluate.ope_days=0")


def setting_paths(setting: Setting) -> list[str]:
    """A setting's own folders: its raw files (organic + its clicks), clean events, feedback."""
    root = f"loop_{setting.alias}"
    return [f"paths.{key}={root}/{key}" for key in ("raw", "clean", "quarantine", "checkpoints", "recommendations",
                                                      "reports", "feedback", "clean_feedback", "feedback_quarantine")]


def day_config(out: Path, args: argparse.Namespace, setting: Setting, features: str, extra: list[str]) -> Config:
    return load_config(None, [*base_overrides(out, args), *setting_paths(setting), f"paths.features={features}",
                              f"mlflow.alias={setting.alias}", f"score.model_alias={setting.alias}",
                              *setting.score_keys, *extra])


def link_day_files(source: Path, target: Path) -> None:
    """Hard links of the organic day files into a setting's raw folder (no copy)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if not (target / path.name).exists():
            os.link(path, target / path.name)


def write_clicks(events: pd.DataFrame, folder: Path, run_date: str) -> int:
    """The clicks' events as a raw CSV file dated by the run date (clean picks it by its name)."""
    from recsys_spark import schema
    from recsys_spark.data.generate import to_raw_text

    text = to_raw_text(events)[schema.RAW_COLUMNS]
    path = folder / f"clicks-{run_date}.csv"
    text.to_csv(path.with_suffix(".tmp"), index=False, header=True, na_rep="")
    os.replace(path.with_suffix(".tmp"), path)
    return len(text)


def expected_by_user(world, gen_cfg, frame: pd.DataFrame, model, key: bytes) -> pd.Series:
    """Vectorised :func:`list_values`: the sum over each user's rows of P(click)."""
    from recsys_spark.data import feedback_sim

    users = feedback_sim.user_index(world, frame["user_id"].to_numpy(dtype=object), key)
    items = feedback_sim.item_index(world, frame["item_id"].to_numpy(dtype=np.int64))
    keep = (users >= 0) & (items >= 0)
    day = feedback_sim.day_of(gen_cfg, pd.Timestamp(frame["run_date"].iloc[0]).date())
    p = model.click_probability(world, gen_cfg, users[keep], items[keep], frame["slot"].to_numpy()[keep], day)
    return pd.Series(p, index=frame["user_id"].to_numpy(dtype=object)[keep]).groupby(level=0).sum()


def truth_ndcg(world, gen_cfg, frame: pd.DataFrame, model, key: bytes) -> np.ndarray:
    """Per user: NDCG@K of the list with the users' true relevance as gains (ideal: the K most
    relevant items of the world that day)."""
    from recsys_spark.data import feedback_sim

    day = feedback_sim.day_of(gen_cfg, pd.Timestamp(frame["run_date"].iloc[0]).date())
    users_ids = frame["user_id"].unique()
    users = feedback_sim.user_index(world, users_ids, key)
    users_ids, users = users_ids[users >= 0], users[users >= 0]
    lists = np.full((len(users), K), -1, dtype=np.int64)
    row = pd.Index(users_ids).get_indexer(frame["user_id"].to_numpy(dtype=object))
    ok = (row >= 0) & (frame["slot"].to_numpy() < K)
    lists[row[ok], frame["slot"].to_numpy()[ok]] = feedback_sim.item_index(world, frame["item_id"].to_numpy()[ok])
    discount = 1.0 / np.log2(np.arange(K) + 2.0)
    out = np.zeros(len(users))
    for start in range(0, len(users), 256):
        part = slice(start, start + 256)
        gains = model.relevance(world, gen_cfg, users[part, None], np.arange(world.n_items)[None, :], day)
        ideal = -np.sort(-gains, axis=1)[:, :K] @ discount
        got = np.take_along_axis(gains, np.maximum(lists[part], 0), 1) * (lists[part] >= 0)
        out[part] = np.where(ideal > 0, (got @ discount) / np.maximum(ideal, 1e-12), 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_loop_arguments(parser, "/tmp/exploration_bench", 10, "simulated days of the loop",
                       "days of organic log before the loop", users=2000)
    parser.add_argument("--train-steps", type=int, default=1200, help="train.max_steps of the day-0 full training")
    parser.add_argument("--replay", type=int, default=300, help="train.replay_windows of the daily training")
    parser.add_argument("--incremental-epochs", type=int, default=2)
    parser.add_argument("--settings", default=",".join(s.alias for s in SETTINGS),
                        help="aliases of the settings to run (none is always run)")
    parser.add_argument("--ope-loggers", default="eps10,ts10",
                        help="aliases of the exploring settings whose last-day logs value every other setting")
    parser.add_argument("--stage-timeout-minutes", type=float, default=30.0)
    parser.add_argument("--set", action="append", default=[], help="key=value for every stage (repeatable)")
    parser.add_argument("--breakdown-only", action="store_true",
                        help="only print the exploration breakdown of an earlier run in --out")
    args = parser.parse_args(argv)
    start_logging(logging.WARNING)
    if args.breakdown_only:
        breakdown(args.out.resolve(), args)
        return 0

    from recsys_spark.cli import stage_function
    from recsys_spark.data import feedback_sim
    from recsys_spark.data.generate import build_world, effective_config
    from recsys_spark.etl.pseudonym import DEV_KEY
    from recsys_spark.spark import get_session

    chosen = {a.strip() for a in args.settings.split(",")} | {"none"}
    settings = [s for s in SETTINGS if s.alias in chosen]
    out = fresh_folder(args.out)
    command = command_line("exploration_bench.py", argv)
    started = time.time()
    base = load_config(None, base_overrides(out, args))
    spark = get_session(base.spark)
    gen_cfg = effective_config(base.generate)
    world, model = build_world(gen_cfg), feedback_sim.ClickModel()

    # Day 0: the organic log, the history cleaned and featurized once, one full model for all.
    stage_function("generate")(spark, base)
    start = np.datetime64(base.generate.start_date, "D")
    history_end = str(start + np.timedelta64(args.history_days - 1, "D"))
    shared = load_config(None, [*base_overrides(out, args), f"clean.end_date={history_end}", "paths.clean=clean0",
                                "paths.features=features0", "mlflow.alias=day0"])
    stage_function("clean")(spark, shared)
    stage_function("featurize")(spark, shared)
    day0 = stage_function("train")(spark, shared)
    set_aliases(shared, [s.alias for s in settings], day0["version"])
    for setting in settings:
        link_day_files(out / "raw", out / f"loop_{setting.alias}" / "raw")
        shutil.copytree(out / "clean0", out / f"loop_{setting.alias}" / "clean")
    print(f"day 0: generated {base.generate.days} days, cleaned, featurized and trained the first "
          f"{args.history_days} in {time.time() - started:.0f} s (model version {day0['version']})", flush=True)

    features = {s.alias: str(out / "features0") for s in settings}
    served: dict[str, list[pd.DataFrame]] = {s.alias: [] for s in settings}
    rows: list[dict[str, Any]] = []
    shown: dict[str, set[int]] = {s.alias: set() for s in settings}
    ope: list[dict[str, Any]] = []
    for day in range(1, args.days + 1):
        run_date = str(start + np.timedelta64(args.history_days + day - 1, "D"))
        for setting in settings:
            began = time.time()
            extra = [f"score.run_date={run_date}"]
            counts = Path(features[setting.alias]) / "feedback_counts"
            if setting.policy == "thompson" and counts.exists():
                extra.append(f"score.feedback_counts_path={counts}")
            cfg = day_config(out, args, setting, features[setting.alias], extra)
            stage_function("score")(spark, cfg)
            recs = read_recommendations(out / f"loop_{setting.alias}" / "recommendations", run_date)
            feedback = feedback_sim.simulate_feedback(world, gen_cfg, recs, model, DEV_KEY, seed=day)
            feedback_sim.write_feedback(None, feedback, str(out / f"loop_{setting.alias}" / "feedback"))
            events = feedback_sim.click_events(world, feedback, DEV_KEY, seed=day)
            write_clicks(events, out / f"loop_{setting.alias}" / "raw", run_date)
            clean_cfg = day_config(out, args, setting, features[setting.alias],
                                   [*extra, f"clean.start_date={run_date}", f"clean.end_date={run_date}"])
            cleaned = stage_function("clean")(spark, clean_cfg)
            expected = expected_by_user(world, gen_cfg, recs, model, DEV_KEY)
            served[setting.alias].append(pd.DataFrame({"user_id": expected.index, "day": day,
                                                       "expected": expected.to_numpy()}))
            clicks_by_user = feedback.groupby("user_id")["clicked"].sum()
            served[setting.alias][-1]["clicks"] = clicks_by_user.reindex(expected.index).fillna(0).to_numpy()
            shown[setting.alias].update(recs["item_id"].astype(np.int64).tolist())
            rows.append({"day": day, "setting": setting.name, "alias": setting.alias, "lists": int(recs["user_id"].nunique()),
                         "clicks": int(feedback["clicked"].sum()), "expected": float(expected.sum()),
                         "explored": int((recs["source"] == "explore").sum()), "coverage": len(shown[setting.alias]),
                         "click_events": len(events), "clean_kept": int(cleaned["rows_kept"]),
                         "seconds_serve": time.time() - began})
        if day == args.days:
            loggers = [s for s in settings if s.alias in args.ope_loggers.split(",") and s.share > 0]
            ope = off_policy(spark, out, args, settings, loggers, features, run_date, world, gen_cfg, model, DEV_KEY)
        for setting in settings:
            began = time.time()
            today = str(out / f"loop_{setting.alias}" / f"features{day}")
            cfg = day_config(out, args, setting, today, [
                "featurize.vocab_mode=extend", f"featurize.vocab_from={features[setting.alias]}",
                f"train.parent_alias={setting.alias}", "train.mode=incremental",
                f"train.replay_windows={args.replay}", f"train.epochs={args.incremental_epochs}"])
            stage_function("featurize")(spark, cfg)
            trained = stage_function("train")(spark, cfg)
            previous, features[setting.alias] = features[setting.alias], today
            if day > 1:
                shutil.rmtree(previous, ignore_errors=True)  # keeps the disk bounded; today's extends it
            row = next(r for r in rows if r["day"] == day and r["alias"] == setting.alias)
            row.update(version=trained["version"], seconds_learn=time.time() - began)
        for row in (r for r in rows if r["day"] == day):
            print(f"day {day} ({run_date}) {row['setting']:13s} clicks {row['clicks']:5d}  expected "
                  f"{row['expected']:8.1f}  explored {row['explored']:5d}  items shown so far {row['coverage']:5d}  "
                  f"serve {row['seconds_serve']:.0f} s, learn {row['seconds_learn']:.0f} s", flush=True)

    final_date = str(start + np.timedelta64(args.history_days + args.days, "D"))
    ndcg = {"day-0 model": greedy_ndcg(spark, out, args, settings[0], str(out / "features0"), "day0", final_date,
                                       world, gen_cfg, model, DEV_KEY)}
    for setting in settings:
        ndcg[setting.name] = greedy_ndcg(spark, out, args, setting, features[setting.alias], setting.alias,
                                         final_date, world, gen_cfg, model, DEV_KEY)
    launched = int((world.item_launch_day <= args.history_days + args.days - 1).sum()) \
        if world.item_launch_day is not None else world.n_items
    report(rows, served, ndcg, ope, settings, launched, args, command, time.time() - started, out)
    breakdown(out, args)
    return 0


def breakdown(out: Path, args: argparse.Namespace) -> None:
    """Where each setting's clicks came from: per source (model items, exploration picks) the
    exposures, clicks drawn, expected clicks per exposure (the click model's truth) and the
    share of exposures of items launched during the loop; read from the run's own outputs."""
    import pyarrow.parquet as pq

    from recsys_spark.data import feedback_sim
    from recsys_spark.data.generate import build_world, effective_config
    from recsys_spark.etl.pseudonym import DEV_KEY

    gen_cfg = effective_config(load_config(None, base_overrides(out, args)).generate)
    world, model = build_world(gen_cfg), feedback_sim.ClickModel()
    key = ["user_id", "run_date", "slot"]
    print("\nexposures by source over the loop (expected: the click model's P(click) per exposure; relevance: "
          "P(click | examined); new items: launched during the loop):")
    print(f"{'setting':14s} {'source':8s} {'exposures':>10s} {'clicks':>7s} {'CTR':>7s} {'expected':>9s} "
          f"{'relevance':>13s} {'new items':>9s}")
    for setting in SETTINGS:
        folder = out / f"loop_{setting.alias}"
        if not (folder / "feedback").exists():
            continue
        feedback = pq.read_table(folder / "feedback").to_pandas()
        recs = pq.read_table(folder / "recommendations").to_pandas()
        for frame in (feedback, recs):
            frame["run_date"] = pd.to_datetime(frame["run_date"].astype(str)).dt.date
        joined = feedback.merge(recs[[*key, "source"]], on=key, how="left", validate="one_to_one")
        users = feedback_sim.user_index(world, joined["user_id"].to_numpy(dtype=object), DEV_KEY)
        items = feedback_sim.item_index(world, joined["item_id"].to_numpy(dtype=np.int64))
        days = np.array([feedback_sim.day_of(gen_cfg, d) for d in joined["run_date"]])
        relevance = model.relevance(world, gen_cfg, users, items, days)
        joined["expected"] = model.examine(joined["slot"].to_numpy()) * relevance
        joined["relevance"] = relevance
        joined["new"] = world.item_launch_day[items] >= args.history_days if world.item_launch_day is not None else False
        for source, part in joined.groupby("source"):
            print(f"{setting.name:14s} {source:8s} {len(part):10,d} {int(part['clicked'].sum()):7d} "
                  f"{part['clicked'].mean():7.3%} {part['expected'].mean():9.5f} {part['relevance'].mean():13.5f} "
                  f"{part['new'].mean():9.1%}")


def greedy_ndcg(spark, out: Path, args, setting: Setting, features: str, model_alias: str, run_date: str, world,
                gen_cfg, model, key: bytes) -> np.ndarray:
    """Per-user NDCG@K on the truth of the model at ``model_alias`` ranking greedily for ``run_date``."""
    from recsys_spark.cli import stage_function

    folder = f"greedy_{model_alias}"
    cfg = day_config(out, args, setting, features, [f"score.model_alias={model_alias}", "score.explore_share=0.0",
                                                    "score.explore_policy=epsilon", f"score.run_date={run_date}",
                                                    f"paths.recommendations={folder}"])
    stage_function("score")(spark, cfg)
    frame = read_recommendations(out / folder, run_date)
    return truth_ndcg(world, gen_cfg, frame[frame["source"] != "fallback"], model, key)


def off_policy(spark, out: Path, args, settings: list[Setting], loggers: list[Setting], features: dict[str, str],
               run_date: str, world, gen_cfg, model, key: bytes) -> list[dict[str, Any]]:
    """Each setting's policy on ``run_date`` valued from each logger's logs of that day (but its own)."""
    from pyspark.sql import functions as F

    from recsys_spark import io
    from recsys_spark.data import feedback_sim
    from recsys_spark.evaluation.offpolicy import evaluate_target
    from recsys_spark.models.registry import load_bundle

    results = []
    for target in settings:
        cfg = day_config(out, args, target, features[target.alias], [f"score.run_date={run_date}"])
        bundle, version = load_bundle(cfg, alias=target.alias)
        vocab = io.read_features(spark, features[target.alias], "item_vocab").toPandas()
        served = read_recommendations(out / f"loop_{target.alias}" / "recommendations", run_date)
        for logger in loggers:
            if logger.alias == target.alias:
                continue
            clean = io.read_clean_feedback(spark, str(out / f"loop_{logger.alias}" / "clean_feedback"))
            clean = clean.where(F.col("run_date") == F.lit(run_date).cast("date"))
            began = time.time()
            section = evaluate_target(spark, cfg, bundle, clean, vocab, str(version))
            logged_users = set(clean.select("user_id").distinct().toPandas()["user_id"])
            truth = feedback_sim.policy_value(world, gen_cfg, served[served["user_id"].isin(logged_users)], model, key)
            row = {"target": target.name, "logger": logger.name, "truth": truth,
                   "seconds": time.time() - began, "lists": section.get("lists"),
                   "note": section.get("note")}
            for estimator in ESTIMATORS:
                row[estimator] = (section.get("estimates") or {}).get(estimator, {})
            results.append(row)
            print(f"  OPE {target.name:13s} from {logger.name:13s} truth {truth:.4f}  " + "  ".join(
                f"{e} {describe(row[e])}" for e in ESTIMATORS), flush=True)
    return results


def report(rows, served, ndcg, ope, settings, launched, args, command, seconds, out: Path) -> None:
    from recsys_spark.evaluation.intervals import mean_interval

    print(f"\n== {command}: {args.days} days x {len(settings)} settings, {seconds / 60:.1f} min ==")
    base = pd.concat(served["none"]).groupby("user_id")[["expected", "clicks"]].sum()
    print(f"{'setting':14s} {'clicks':>7s} {'expected':>9s} {'vs none (expected, paired 95% CI, users)':>44s} "
          f"{'coverage':>9s} {'NDCG@20 truth':>24s}")
    summary = []
    for setting in settings:
        mine = pd.concat(served[setting.alias]).groupby("user_id")[["expected", "clicks"]].sum()
        both = mine.join(base, how="inner", rsuffix="_none")
        diff = mean_interval((both["expected"] - both["expected_none"]).to_numpy(), **BOOTSTRAP)
        relative = both["expected"].sum() / both["expected_none"].sum() - 1
        cover = max(r["coverage"] for r in rows if r["alias"] == setting.alias) / launched
        found = mean_interval(ndcg[setting.name], **BOOTSTRAP)
        text = "" if setting.alias == "none" else (f"{relative:+.2%} ({diff.mean:+.4f} [{diff.low:+.4f}, "
                                                    f"{diff.high:+.4f}], {diff.users})")
        print(f"{setting.name:14s} {int(mine['clicks'].sum()):7d} {mine['expected'].sum():9.1f} {text:>44s} "
              f"{cover:9.1%} {found.mean:.4f} [{found.low:.4f}, {found.high:.4f}]")
        summary.append({"setting": setting.name, "clicks": int(mine["clicks"].sum()),
                        "expected": float(mine["expected"].sum()), "relative": float(relative),
                        "diff": [diff.mean, diff.low, diff.high, diff.users], "coverage": cover,
                        "ndcg": [found.mean, found.low, found.high, found.users]})
    day0 = mean_interval(ndcg["day-0 model"], **BOOTSTRAP)
    print(f"{'day-0 model':14s} {'':7s} {'':9s} {'':>44s} {'':9s} {day0.mean:.4f} [{day0.low:.4f}, {day0.high:.4f}]")
    if ope:
        print("\noff-policy estimates on the last day (relative error |estimate - truth| / truth; * = interval "
              "covers the truth):")
        print(f"{'target':14s} {'logs of':14s} {'truth':>7s} " + " ".join(f"{e:>14s}" for e in ESTIMATORS))
        for row in ope:
            cells = []
            for estimator in ESTIMATORS:
                found = row[estimator]
                if not found or found.get("value") is None:
                    cells.append(f"{'withheld':>14s}")
                    continue
                error = abs(found["value"] - row["truth"]) / row["truth"]
                covered = found["low"] <= row["truth"] <= found["high"]
                cells.append(f"{found['value']:.4f} {error:5.2f}{'*' if covered else ' '}")
            print(f"{row['target']:14s} {row['logger']:14s} {row['truth']:7.4f} " + " ".join(f"{c:>14s}" for c in cells))
    dump = {"command": command, "minutes": seconds / 60, "rows": rows, "summary": summary, "ope": ope,
            "launched_items": launched}
    (out / "exploration_bench.json").write_text(json.dumps(dump, default=str, indent=1))
    print(f"per-day rows: {out / 'exploration_bench.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
