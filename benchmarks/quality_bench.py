"""Benchmark: the model against tuned baselines on each of the generator's data shapes, under
``evaluate.protocol=leave_last_out`` (issue 20, item 5), and on MovieLens-1M beside its published
figures (issue 30, item 6).

    nice -n 10 .venv/bin/python benchmarks/quality_bench.py                        # demo, ratings, long_tail
    .venv/bin/python benchmarks/quality_bench.py --regimes movielens --movielens /data/ml-1m.txt --out /tmp/qb
    .venv/bin/python benchmarks/quality_bench.py --regimes ratings --users 2000 --out /tmp/qb
    .venv/bin/python benchmarks/quality_bench.py --set train.max_steps=1500 --set long_tail:evaluate.ease_max_items=5000

For each regime (``recsys_spark.data.generate.REGIMES``: ``demo``, ``ratings``, ``long_tail``) it
runs the whole pipeline in this process (``recsys run``'s function: generate, clean, featurize,
train, evaluate, score) with ``conf/local.yaml``, the regime's generator overrides,
``generate.n_users=--users``, ``evaluate.protocol=leave_last_out`` and a fresh
``paths.root=<--out>/<regime>`` (its own data, features and MLflow store, so no champion); the
ratings regime also gets the README's bot rules for a ratings log (``REGIME_SETTINGS``). The
baselines are tuned on validation over ``conf/base.yaml``'s grids, read from that file
(``--grids base``, the default: co-occurrence, ALS and EASE); ``--grids ease`` keeps
``conf/local.yaml``'s single points for co-occurrence and ALS (chosen on the demo's data under the
temporal protocol) and gives EASE alone base's grid, which is cheaper. The bench itself chooses
nothing: every figure is read back from what the run wrote, ``<paths.root>/reports/evaluation.json``
(rankers, intervals, paired differences, users), ``features/metadata.json`` and the run's MLflow
store (the train stage's history, stop reason and the pipeline's seconds per stage).

It prints, per regime, every ranker's NDCG@20 and Recall@20 with their 95% bootstrap intervals and
users, and the paired difference model - ranker on NDCG@20 with its interval; then what the runs
show about why (the training curve, the baselines' chosen points); then a summary: is the target
met, i.e. does the model beat tuned EASE and every other baseline on NDCG@20 with the lower bound
of the paired interval above 0? And each regime's wall time.

A run stopped by a data threshold (an error ending ``(to accept it: key=value ...)``, e.g. the
ratings regime's empty brand and price columns) is run again with those overrides, which the
output lists (``--no-follow-hints``: stop instead). Any other error ends that regime's run: it is
reported (with the figures of evaluate when that stage had finished before it), the other regimes
run, and the bench exits with status 1.

``movielens`` (``--movielens PATH``; skipped, with a message, without it) is real data with a
published figure: SASRec's ``data/ml-1m.txt`` (per-user item sequences; README, "How good is the
model", says where to get it: MovieLens may not be redistributed), turned into a clickstream by
``recsys_spark.data.sequences_log`` (one view per line, 5 minutes apart per user) in
``<out>/movielens/raw``, then the same pipeline with the papers' protocol: leave-one-out (each
user's last item is the test target, the one before it the validation target), full ranking with
the user's seen items excluded, HR@10 (``hitrate@10``: one target per user) and NDCG@10, the
baselines tuned and the model validated on NDCG@10 (``MOVIELENS_SETTINGS``). Its table also
quotes ``PUBLISHED``, and is written to ``<out>/movielens/published_comparison.{md,json}``.
``--movielens-users N`` keeps the first N users of the file (a smoke run; no longer comparable).

``--set key=value`` (repeatable) adds an override to every regime, ``--set regime:key=value`` to
one; both come last and win. Every stage is bounded by ``spark.stage_timeout_minutes``
(``--stage-timeout-minutes``, default 60 here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_spark.config import Config, load_config  # noqa: E402
from recsys_spark.data import sequences_log  # noqa: E402
from recsys_spark.data.generate import REGIMES, regime_overrides  # noqa: E402
from recsys_spark.errors import RecsysError  # noqa: E402

PROFILE = REPO / "conf" / "local.yaml"
BASE = REPO / "conf" / "base.yaml"
PROTOCOL = "leave_last_out"
NDCG, RECALL = "ndcg@20", "recall@20"
MODEL, CHAMPION, EASE = "model", "champion", "ease"
# Evaluate keys of each tuned baseline's grid; base.yaml's lists are the full grids.
GRID_KEYS = {
    "cooccurrence": ("cooccurrence_windows", "cooccurrence_decays", "cooccurrence_similarities"),
    "als": ("als_ranks", "als_reg_params", "als_alphas"),
    "ease": ("ease_lambdas", "ease_decays"),
}
# What a regime needs beyond its generator overrides, and why. A ratings log is not a click log:
# under the default bot rules (30 events a minute, 100 distinct items a session) clean drops the
# ratings regime's bursts, about 97% of its rows (measured at 300 users), and the run would measure
# the remainder; these are the README's values for a ratings log ("Logs that are not click logs").
# `--set ratings:clean.bot_max_events_per_minute=30 ...` restores the defaults.
REGIME_SETTINGS = {
    "ratings": ("clean.bot_max_events_per_minute=300", "clean.bot_max_distinct_items_per_session=1000"),
}
MOVIELENS = "movielens"
SHAPES = (*REGIMES, MOVIELENS)
# The papers' protocol and metrics on ML-1M, and why each setting.
MOVIELENS_SETTINGS = (
    # HR@10 and NDCG@10: the baselines' grids and the paired differences on NDCG@10 ...
    "evaluate.primary_metric=ndcg@10",
    # ... and the model's validation (early stopping, best weights) too, as the paper's val_ndcg@10.
    "train.eval_k=10",
    # Every item with a training step gets its own index (the papers rank all 3,416; on the whole
    # file every item has at least 2 training steps, so this matters for --movielens-users only).
    "featurize.min_item_count=1",
    # The papers' maxlen on ML-1M: the model sees a user's last 200 steps. Windows stay at base's
    # max_windows_per_user (20, more than the 12 the longest user needs): every training step is
    # used, where the paper trains on each user's last 201 training items only (34% of the steps
    # unused; --set movielens:featurize.max_windows_per_user=1 does that).
    "featurize.max_seq_len=200",
    # The file has no category, brand or price.
    "featurize.dq_max_null_rate.category_id=1.0",
    "featurize.dq_max_null_rate.brand=1.0",
    "featurize.dq_max_null_rate.price=1.0",
)
# The published figures, quoted exactly: Klenitskiy and Vasilev, "Turning Dross Into Gold Loss: is
# BERT4Rec really better than SASRec?", RecSys 2023; the MovieLens-1m table of the authors'
# repository (antklen/sasrec-bert4rec-recsys23, README, "Main paper results"), on the same file.
# SASRec+ is SASRec trained with cross-entropy over all items, SASRec+ 3000 with 3,000 sampled
# negatives, SASRec with binary cross-entropy and one negative (the original). Single runs, no
# intervals; test on all 6,040 users.
PUBLISHED = {
    "source": ('Klenitskiy and Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", '
               "RecSys 2023; MovieLens-1m table (github.com/antklen/sasrec-bert4rec-recsys23, README, "
               '"Main paper results")'),
    "rows": [
        {"model": "BERT4Rec", "hitrate@10": 0.2843, "ndcg@10": 0.1537},
        {"model": "SASRec", "hitrate@10": 0.2500, "ndcg@10": 0.1341},
        {"model": "SASRec+ (our)", "hitrate@10": 0.3152, "ndcg@10": 0.1821},
        {"model": "SASRec+ 3000 (our)", "hitrate@10": 0.3159, "ndcg@10": 0.1857},
    ],
}
HINT = re.compile(r"\(to accept it: ([^()]+)\)\s*$")
# generate.n_users: at the demo's 4,000 the demo alone took 676 s on 2 vCPUs (and long_tail's EASE
# would invert ~16,000 x 16,000 matrices); at 1,000 the three regimes took 23-27 min there
# (benchmarks/RESULTS.md).
DEFAULT_USERS = 1000


# ----------------------------------------------------------------------------- configuration


def shape_metrics(regime: str) -> tuple[str, str]:
    """(the NDCG, the recall-like metric) a shape is reported on: @10 (HR@10) for movielens, else @20."""
    return ("ndcg@10", "hitrate@10") if regime == MOVIELENS else (NDCG, RECALL)


def grid_overrides(families: list[str]) -> list[str]:
    """``evaluate.<key>=[...]`` setting each family's grid to conf/base.yaml's, read from that file."""
    base = load_config(BASE).evaluate
    return [f"evaluate.{key}={compact(list(getattr(base, key)))}" for family in families for key in GRID_KEYS[family]]


def compact(values: list[Any]) -> str:
    """A YAML list without spaces (one shell word): ``[10.0,100.0]``, ``["count","cosine"]``."""
    return json.dumps(values, separators=(",", ":"))


def split_sets(values: list[str], regimes: list[str]) -> dict[str, list[str]]:
    """``--set`` values -> {regime: overrides}: ``key=value`` for every regime, ``regime:key=value`` for one."""
    out: dict[str, list[str]] = {regime: [] for regime in regimes}
    for value in values:
        key = value.partition("=")[0]
        prefix, colon, rest = key.partition(":")
        if colon and prefix in SHAPES:
            if prefix in out:
                out[prefix].append(value[len(prefix) + 1:])
        else:
            for regime in regimes:
                out[regime].append(value)
    return out


def regime_config_overrides(regime: str, root: Path, users: int, grids: str, stage_timeout: float,
                            extra: list[str]) -> list[str]:
    """The overrides of one regime's run, in order (later ones win)."""
    families = list(GRID_KEYS) if grids == "base" else [EASE]
    shape = list(MOVIELENS_SETTINGS) if regime == MOVIELENS else [
        *regime_overrides(regime), *REGIME_SETTINGS.get(regime, ()), f"generate.n_users={users}"]
    return [
        *shape,
        f"paths.root={root}",
        f"evaluate.protocol={PROTOCOL}",
        "spark.show_progress=false",
        f"spark.stage_timeout_minutes={stage_timeout}",
        *grid_overrides(families),
        *extra,
    ]


def code_fingerprint() -> str:
    """HEAD and a digest of the package's and the profiles' current contents (the tree may be dirty)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        head = "?"
    digest = hashlib.sha256()
    for path in sorted([*(REPO / "recsys_spark").rglob("*.py"), *(REPO / "conf").glob("*.yaml")]):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return f"{head} + tree {digest.hexdigest()[:12]}"


# ----------------------------------------------------------------------------- one regime


@dataclass
class Outcome:
    regime: str
    root: Path
    seconds: float
    attempts: int
    accepted: list[str]
    overrides: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    clean: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    failed_stage: str = ""
    ease_items: int | None = None
    ease_max_items: int = 0
    baselines: list[str] = field(default_factory=list)
    error: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # movielens: what sequences_log.convert wrote

    @property
    def ndcg(self) -> str:
        return shape_metrics(self.regime)[0]

    @property
    def recall(self) -> str:
        return shape_metrics(self.regime)[1]


def run_regime(spark, regime: str, root: Path, overrides: list[str], follow_hints: bool, rounds: int = 3) -> Outcome:
    """Run the pipeline on one regime; on an error with a ``(to accept it: ...)`` hint, again with it."""
    from recsys_spark.cli import stage_function

    accepted: list[str] = []
    started = time.perf_counter()
    for attempt in range(1, rounds + 1):
        cfg = load_config(PROFILE, [*overrides, *accepted])
        try:
            summary = stage_function("run")(spark, cfg)
        except RecsysError as exc:
            message = str(exc)
            hint = HINT.search(message)
            print(f"[{regime}] attempt {attempt} stopped: {message}", flush=True)
            if not (follow_hints and hint) or attempt == rounds:
                return Outcome(regime, root, time.perf_counter() - started, attempt, accepted, overrides,
                               error=message)
            accepted += [item for item in hint.group(1).split() if item not in accepted]
            print(f"[{regime}] running again, accepting: {' '.join(accepted)}", flush=True)
            continue
        except Exception as exc:  # not the data's doing (a bug?): report it, and what the run measured before it
            outcome = Outcome(regime, root, time.perf_counter() - started, attempt, accepted, overrides,
                              error=last_error_line(exc))
            print(f"[{regime}] the run FAILED: {outcome.error}", flush=True)
            if (Path(cfg.paths.resolve("reports")) / "evaluation.json").exists():  # evaluate finished first
                read_back(outcome, cfg)
            return outcome
        outcome = Outcome(regime, root, time.perf_counter() - started, attempt, accepted, overrides, summary=summary)
        read_back(outcome, cfg)
        return outcome
    raise AssertionError("unreachable")


def last_error_line(exc: BaseException) -> str:
    """The line that names the error: for a Spark task's failure, the Python worker's last one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Invalid|Interrupt)\b.*:", line)]
    return f"{type(exc).__name__}: {(named or lines or [''])[-1][:300]}"


def read_back(outcome: Outcome, cfg: Config) -> None:
    """Fill the outcome from what the run wrote: the evaluation report, the features' metadata,
    EASE's item count, and from its MLflow store the train stage's history and the stage times."""
    import pandas as pd

    reports = Path(cfg.paths.resolve("reports"))
    features = Path(cfg.paths.resolve("features"))
    outcome.report = json.loads((reports / "evaluation.json").read_text())
    outcome.metadata = json.loads((features / "metadata.json").read_text())
    outcome.clean = json.loads((reports / "clean_report.json").read_text())
    if outcome.report.get("protocol") != PROTOCOL:
        raise SystemExit(f"{outcome.regime}: the report's protocol is {outcome.report.get('protocol')!r}, "
                         f"not {PROTOCOL}: the bench would not measure what it claims")
    for name in (outcome.ndcg, outcome.recall):
        if name not in outcome.report["rankers"].get(MODEL, {}):
            raise SystemExit(f"{outcome.regime}: the report has no {name} (evaluate.ks must hold {name.partition('@')[2]})")
    outcome.baselines = list(cfg.evaluate.baselines)
    outcome.ease_max_items = cfg.evaluate.ease_max_items
    vocab = pd.read_parquet(features / "item_vocab", columns=["train_count"])
    outcome.ease_items = int((vocab["train_count"] > 0).sum())  # what baselines.ease_items models
    outcome.train, outcome.stage_seconds, outcome.failed_stage = mlflow_facts(cfg)


def mlflow_facts(cfg: Config) -> tuple[dict[str, Any], dict[str, float], str]:
    """(the latest train run's tags, metrics and training/history.json; the latest pipeline run's
    seconds.<stage> metrics; its failed_stage tag, "" if none) from the regime's own MLflow store."""
    from mlflow import MlflowClient

    from recsys_spark.tracking import TAG_STAGE

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)

    def latest(stage: str):
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{TAG_STAGE} = '{stage}'",
                                  order_by=["attribute.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    train, pipeline = latest("train"), latest("pipeline")
    facts: dict[str, Any] = {}
    if train is not None:
        facts = {"tags": dict(train.data.tags), "metrics": dict(train.data.metrics)}
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(train.info.run_id, "training/history.json", folder)
            facts["history"] = json.loads(Path(path).read_text())
    seconds = {} if pipeline is None else {
        key.removeprefix("seconds."): value for key, value in pipeline.data.metrics.items() if key.startswith("seconds.")
    }
    return facts, seconds, "" if pipeline is None else pipeline.data.tags.get("failed_stage", "")


# ----------------------------------------------------------------------------- printing


def interval(report: dict[str, Any], ranker: str, metric: str) -> str:
    value = report["rankers"][ranker][metric]
    bounds = report.get("intervals", {}).get(ranker, {}).get(metric)
    return f"{value:.4f} [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else f"{value:.4f} [no interval]"


def paired(report: dict[str, Any], ranker: str, metric: str = NDCG) -> dict[str, float] | None:
    return report.get("paired", {}).get(f"{MODEL}_vs_{ranker}", {}).get(metric)


def describe_difference(found: dict[str, float] | None) -> str:
    if found is None:
        return "-"
    word = "model ahead" if found["low"] > 0 else "baseline ahead" if found["high"] < 0 else "not told apart"
    return f"{found['diff']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}] ({found['users']:,} users) {word}"


def others(report: dict[str, Any]) -> list[str]:
    """The rankers the model is compared with, baselines in the report's order (a champion first)."""
    names = [r for r in report["rankers"] if r != MODEL]
    return sorted(names, key=lambda r: (r != CHAMPION, names.index(r)))


def verdict(outcome: Outcome) -> tuple[bool, str]:
    """(met, why): met when EASE ran and every baseline's paired lower bound on the shape's NDCG
    (NDCG@20; NDCG@10 for movielens) is above 0."""
    if not outcome.report:
        return False, f"no result: the run stopped ({outcome.error})"
    report = outcome.report
    problems = []
    missing = [b for b in outcome.baselines if b not in report["rankers"]]
    if EASE in missing:
        problems.append(f"EASE was not run ({ease_skip_reason(outcome)}), so the model cannot be said to beat it")
    elif missing:
        problems.append(f"baselines missing from the report: {', '.join(missing)}")
    for ranker in others(report):
        if ranker == CHAMPION:
            continue
        found = paired(report, ranker, outcome.ndcg)
        if found is None:
            problems.append(f"no paired difference with {ranker}")
        elif not found["low"] > 0:
            problems.append(f"model - {ranker} {describe_difference(found)}")
    return (not problems), "; ".join(problems)


def ease_skip_reason(outcome: Outcome) -> str:
    if outcome.ease_items is not None and outcome.ease_items > outcome.ease_max_items:
        return (f"skipped: {outcome.ease_items:,} items with training events > evaluate.ease_max_items="
                f"{outcome.ease_max_items:,}, whose n x n inverse the stage does not attempt")
    return "not in evaluate.baselines" if EASE not in outcome.baselines else "absent for a reason the report does not give"


def stage_of(outcome: Outcome) -> str:
    return f" in stage {outcome.failed_stage}" if outcome.failed_stage else ""


def print_regime(outcome: Outcome) -> None:
    print(f"\n=== {outcome.regime} ===")
    if outcome.accepted:
        print(f"accepted data thresholds (from the run's own hint): {' '.join(outcome.accepted)}")
    if outcome.error:
        print(f"the run FAILED{stage_of(outcome)} after {outcome.attempts} attempt(s), {outcome.seconds:.0f} s: "
              f"{outcome.error}")
        if not outcome.report:
            return
        print("evaluate had finished: its figures follow")
    report, meta, clean = outcome.report, outcome.metadata, outcome.clean
    print(f"clean: {clean['rows_read']:,} rows read, {clean['rows_kept']:,} kept, {clean['bot_rows']:,} bot rows "
          f"({clean['bot_rows'] / max(clean['rows_read'], 1):.1%})")
    print(f"protocol {report['protocol']}; {report['users_evaluated']:,} test users evaluated of "
          f"{report['users']:,}; catalogue {report['catalogue_size']:,} items; {meta['num_users']:,} users in the "
          f"vocabulary; counts {json.dumps(meta.get('counts', {}))}")
    ndcg, recall = outcome.ndcg, outcome.recall
    header = (f"{'ranker':<14}{metric_title(ndcg) + ' [95%]':<28}{metric_title(recall) + ' [95%]':<28}{'users':>7}"
              f"   model - ranker, {metric_title(ndcg)} [95%]")
    print(header)
    print("-" * len(header))
    for ranker in [MODEL, *others(report)]:
        users = report["rankers"][ranker].get("users", 0)
        difference = "" if ranker == MODEL else describe_difference(paired(report, ranker, ndcg))
        print(f"{ranker:<14}{interval(report, ranker, ndcg):<28}{interval(report, ranker, recall):<28}"
              f"{users:>7,}   {difference}")
    if EASE not in report["rankers"]:
        print(f"EASE: {ease_skip_reason(outcome)}")
    for key, value in outcome.summary.items():
        if key.startswith("WARNING"):
            print(f"{key}: {value}")
    print_evidence(outcome)
    if outcome.regime == MOVIELENS:
        print_published(outcome)


def metric_title(name: str) -> str:
    """``ndcg@10`` -> ``NDCG@10``, ``hitrate@10`` -> ``HR@10``, ``recall@20`` -> ``Recall@20``."""
    metric, _, k = name.partition("@")
    return {"ndcg": "NDCG", "hitrate": "HR", "recall": "Recall"}.get(metric, metric) + f"@{k}"


def published_comparison(outcome: Outcome) -> dict[str, Any]:
    """Every ranker of the run (HR@10 and NDCG@10 with their intervals, tuned points) and the
    published rows, as recorded in published_comparison.json."""
    report = outcome.report
    rows = []
    for ranker in [MODEL, *others(report)]:
        row = {"ranker": ranker, "users": report["rankers"][ranker].get("users", 0),
               "tuned_on_validation": report.get("baselines", {}).get(ranker, {}).get("chosen")}
        for name in (outcome.recall, outcome.ndcg):
            row[name] = report["rankers"][ranker][name]
            row[f"{name}.interval"] = report.get("intervals", {}).get(ranker, {}).get(name)
        if ranker != MODEL:
            row[f"model_minus.{outcome.ndcg}"] = paired(report, ranker, outcome.ndcg)
        rows.append(row)
    whole = (outcome.source.get("users"), outcome.source.get("rows")) == (6040, 999611)
    return {
        "data": outcome.source,
        "comparable": whole,  # the whole file, as the published runs (all 6,040 users tested)
        "protocol": report.get("protocol"),
        "users_evaluated": report.get("users_evaluated"),
        "ours": rows,
        "published": PUBLISHED,
    }


def print_published(outcome: Outcome) -> None:
    """The run's rankers beside the published figures, printed and written next to the run."""
    table = published_comparison(outcome)
    hr, ndcg = outcome.recall, outcome.ndcg
    lines = [f"| ranker | {metric_title(hr)} [95%] | {metric_title(ndcg)} [95%] | users |", "|---|---|---|---|"]
    for row in table["ours"]:
        tuned = f" (tuned on validation: {row['tuned_on_validation']})" if row["tuned_on_validation"] else ""
        lines.append(f"| {row['ranker']}{tuned} | {interval(outcome.report, row['ranker'], hr)} | "
                     f"{interval(outcome.report, row['ranker'], ndcg)} | {row['users']:,} |")
    for row in PUBLISHED["rows"]:
        lines.append(f"| published: {row['model']} | {row['hitrate@10']:.4f} | {row['ndcg@10']:.4f} | 6,040 |")
    note = (f"Published: {PUBLISHED['source']}; single runs, no intervals. Ours: this run, "
            f"{table['users_evaluated']:,} test users"
            + ("." if table["comparable"] else
               f", on the first {table['data'].get('users', 0):,} users of the file only: NOT comparable."))
    print(f"\n=== {outcome.regime}: beside the published figures ===")
    print("\n".join(lines))
    print(note)
    (outcome.root / "published_comparison.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    (outcome.root / "published_comparison.json").write_text(json.dumps(table, indent=2, default=str) + "\n")
    print(f"written: {outcome.root / 'published_comparison.md'}, .json")


def published_position(outcome: Outcome) -> str:
    """Where the published SASRec+ (cross-entropy) NDCG@10 lies against the model's interval."""
    sasrec_ce = next(r for r in PUBLISHED["rows"] if r["model"] == "SASRec+ (our)")["ndcg@10"]
    bounds = outcome.report.get("intervals", {}).get(MODEL, {}).get(outcome.ndcg)
    if not bounds:
        return f"published SASRec+ (cross-entropy) NDCG@10 {sasrec_ce}; the model's interval is missing"
    where = "above" if sasrec_ce > bounds[1] else "below" if sasrec_ce < bounds[0] else "inside"
    return (f"published SASRec+ (cross-entropy) NDCG@10 {sasrec_ce:.4f} is {where} the model's "
            f"{interval(outcome.report, MODEL, outcome.ndcg)}"
            + ("" if outcome.source.get("users") == 6040 else " (a subset of users: not comparable)"))


def print_evidence(outcome: Outcome) -> None:
    """What the run shows about the result: training's course on validation, the baselines' chosen points."""
    report, train = outcome.report, outcome.train
    history = train.get("history", {}).get("history", [])
    tags, metrics = train.get("tags", {}), train.get("metrics", {})
    if history:
        best = history[train["history"]["best_evaluation"] - 1]
        wanted = "val_" + outcome.ndcg.replace("@", "_at_")
        val = wanted if wanted in best else next(k for k in best if k.startswith("val_ndcg"))
        print(f"train: {history[-1]['step']} steps in {history[-1]['epoch']} passes, {len(history)} evaluations; "
              f"best evaluation {best['evaluation']} (step {best['step']}, pass {best['epoch']}) validation "
              f"{val} {best[val]:.4f}; stop: {tags.get('train.stop_reason', '?')}")
        curve = ", ".join(f"{h['step']}:{h[val]:.4f}" for h in history)
        print(f"  validation curve (step:{val}): {curve}")
    elif metrics:
        print(f"train: {metrics}")
    for family, tuned in report.get("baselines", {}).items():
        rows = tuned.get("grid", [])
        chosen = tuned.get("chosen", {})
        ndcg = outcome.ndcg
        value = next((r[ndcg] for r in rows if all(r.get(k) == v for k, v in chosen.items())), float("nan"))
        line = f"{family} tuned on validation over {len(rows)} points: chosen {chosen} (validation {ndcg} {value:.4f})"
        if family == EASE:
            line += f", on {outcome.ease_items:,} items; grid: " + ", ".join(
                f"lambda {r['lambda']:g} decay {r['decay']:g}: {r[ndcg]:.4f}" for r in rows)
        print(line)
    if outcome.stage_seconds:
        print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in outcome.stage_seconds.items()))


def print_summary(outcomes: list[Outcome], users: int, command: str, fingerprints: tuple[str, str]) -> None:
    print("\n=== summary: does the model beat tuned EASE and every other baseline on NDCG@20 (movielens: "
          "NDCG@10) (paired 95% lower bound > 0)? ===")
    for outcome in outcomes:
        met, why = verdict(outcome)
        failed = f" (figures from evaluate; the run then failed{stage_of(outcome)}: {outcome.error})" \
            if outcome.error and outcome.report else ""
        print(f"{outcome.regime:<10} {'MET' if met else 'NOT MET: ' + why}{failed}")
        if outcome.regime == MOVIELENS and outcome.report:
            print(f"{'':<10} {published_position(outcome)}")
    print("\nwall time per regime (the whole pipeline, retries included):")
    for outcome in outcomes:
        retries = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        print(f"  {outcome.regime:<10} {outcome.seconds:7.1f} s{retries}  ({outcome.root})")
    print(f"  total      {sum(o.seconds for o in outcomes):7.1f} s")
    print(f"\ncommand: {command}")
    generated = any(o.regime in REGIMES for o in outcomes)
    print((f"generator users: {users:,}; " if generated else "") + f"code: {fingerprints[0]}"
          + ("" if fingerprints[0] == fingerprints[1] else f"; CHANGED during the run to {fingerprints[1]}"))
    for outcome in outcomes:
        print(f"  {outcome.regime} overrides: {' '.join([*outcome.overrides, *outcome.accepted])}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--regimes", default=None,
                        help=f"comma-separated, of {', '.join(SHAPES)} (default: all; {MOVIELENS} with --movielens only)")
    parser.add_argument("--movielens", type=Path, default=None, metavar="PATH",
                        help="SASRec's ml-1m.txt ('user item' lines; README says where to get it): runs the "
                             f"{MOVIELENS} shape")
    parser.add_argument("--movielens-users", type=int, default=0, metavar="N",
                        help="the first N users of --movielens only (a smoke run; default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="each regime runs under OUT/<regime>, which must not exist (default: a new temp dir)")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"generate.n_users of every regime (default {DEFAULT_USERS})")
    parser.add_argument("--grids", choices=["base", "ease"], default="base",
                        help="base: conf/base.yaml's grids for co-occurrence, ALS and EASE; "
                             "ease: only EASE's (the others keep conf/local.yaml's demo points)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="[REGIME:]KEY=VALUE",
                        help="an override for every regime, or for one with REGIME: (repeatable; wins)")
    parser.add_argument("--stage-timeout-minutes", type=float, default=60.0,
                        help="spark.stage_timeout_minutes: the bound on each stage")
    parser.add_argument("--no-follow-hints", dest="follow_hints", action="store_false",
                        help="stop on a data threshold instead of running again with the override it names")
    args = parser.parse_args(argv)

    regimes = [r.strip() for r in (args.regimes or ",".join(SHAPES)).split(",") if r.strip()]
    unknown = [r for r in regimes if r not in SHAPES]
    if unknown or not regimes:
        parser.error(f"--regimes: unknown {unknown} (known: {', '.join(SHAPES)})")
    if MOVIELENS in regimes and args.movielens is None:
        if args.regimes is not None:
            parser.error(f"--regimes {MOVIELENS} needs --movielens PATH (SASRec's ml-1m.txt; README, "
                         "'How good is the model', says where to get it)")
        print(f"[{MOVIELENS}] skipped: no --movielens PATH (SASRec's data/ml-1m.txt; README, 'How good is the "
              "model', says where to get it)", flush=True)
        regimes.remove(MOVIELENS)
    if args.movielens is not None and not args.movielens.is_file():
        parser.error(f"--movielens: {args.movielens} is not a file")
    out = (args.out or Path(tempfile.mkdtemp(prefix="quality_bench_"))).resolve()
    taken = [str(out / r) for r in regimes if (out / r).exists()]
    if taken:
        parser.error(f"--out: {', '.join(taken)} already exist(s): choose another --out or remove them "
                     "(a fresh folder per regime: its own data, features and MLflow store)")
    sets = split_sets(args.sets, regimes)
    overrides = {r: regime_config_overrides(r, out / r, args.users, args.grids, args.stage_timeout_minutes, sets[r])
                 for r in regimes}
    configs = {r: load_config(PROFILE, overrides[r]) for r in regimes}  # every override checked before Spark starts

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("recsys_spark").setLevel(logging.INFO)
    command = " ".join([Path(sys.executable).relative_to(REPO).as_posix() if sys.executable.startswith(str(REPO))
                        else sys.executable, *sys.argv])
    before = code_fingerprint()
    import recsys_spark

    sizes = [f"{args.users:,} generated users"] if set(regimes) & set(REGIMES) else []
    if MOVIELENS in regimes:
        sizes.append(f"{MOVIELENS} {args.movielens}" + (f", first {args.movielens_users:,} users"
                                                         if args.movielens_users else ""))
    print(f"quality bench {dt.datetime.now().isoformat(timespec='seconds')}: regimes {', '.join(regimes)}, "
          f"{'; '.join(sizes)}, under {out}; code {before} ({Path(recsys_spark.__file__).parent})", flush=True)

    from recsys_spark.spark import get_session

    # One session for every regime (their spark sections are the same profile's; a --set spark.*
    # for one regime only would not apply): each regime's paths and MLflow store are its own.
    spark = get_session(configs[regimes[0]].spark)
    outcomes = []
    try:
        for regime in regimes:
            print(f"\n[{regime}] starting: {' '.join(overrides[regime])}", flush=True)
            source = {}
            if regime == MOVIELENS:  # the raw clickstream first: the pipeline then skips generate
                source = sequences_log.convert(args.movielens, configs[regime].paths.resolve("raw"),
                                               args.movielens_users, rules=configs[regime].clean)
                print(f"[{regime}] wrote the clickstream: {json.dumps(source)}", flush=True)
            outcome = run_regime(spark, regime, out / regime, overrides[regime], args.follow_hints)
            outcome.source = source
            outcomes.append(outcome)
            print(f"[{regime}] done in {outcome.seconds:.1f} s", flush=True)
            print_regime(outcome)
    finally:
        spark.stop()

    for outcome in outcomes:
        print_regime(outcome)
    print_summary(outcomes, args.users, command, (before, code_fingerprint()))
    return 0 if not any(o.error for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
