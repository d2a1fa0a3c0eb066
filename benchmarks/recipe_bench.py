"""Benchmark: the model's training recipe, variant against variant, on the generator's data shapes.

    nice -n 10 .venv/bin/python benchmarks/recipe_bench.py --out /tmp/rb \
        --variant default= --variant horizon10=train.target_horizon=10 --variant sampled=train.loss=sampled

Each shape (``recsys_spark.data.generate.REGIMES``, with quality_bench's settings: leave_last_out,
``--users`` users) is generated, cleaned and featurized once under ``<out>/<shape>`` (kept: a later
run with the same ``--out`` reuses it). Each variant (``NAME=key=value;key=value``; ``NAME=`` is
the defaults) is then trained on those features by the training function itself
(``train.loop.train_fn``, one process: ``train.launcher=local``), and its best checkpoint, in the
user-vector mode training chose, is ranked on the validation and the test users through the one
ranking path (full catalogue, seen items excluded). Recipes are chosen on validation; test is
printed beside it, with the paired difference to the first variant and its 95% bootstrap interval.

``--world-size 2`` trains under two Horovod processes instead (``train.launcher=horovod_spark`` on
a local[2] session), for the 1-rank vs 2-rank comparison. Results are appended as JSON lines to
``<out>/recipes.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from recsys_spark.config import Config, load_config  # noqa: E402
from recsys_spark.data.generate import REGIMES  # noqa: E402

PROFILE = REPO / "conf" / "local.yaml"
DEFAULT_USERS = 1000
BOOTSTRAP = 1000


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=key=value;key=value`` -> (name, ["key=value", ...]); ``name=`` -> (name, [])."""
    name, _, rest = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=key=value[;key=value...]")
    return name, [item for item in rest.split(";") if item]


def shape_overrides(shape: str, root: Path, users: int, extra: list[str]) -> list[str]:
    from quality_bench import regime_config_overrides

    return regime_config_overrides(shape, root, users, "ease", 60.0, extra)


def prepare(spark, shape: str, cfg_overrides: list[str]) -> Config:
    """Generate, clean and featurize the shape unless its features exist; follows data-threshold hints."""
    from quality_bench import HINT

    from recsys_spark.cli import stage_function
    from recsys_spark.errors import RecsysError

    accepted: list[str] = []
    for _ in range(3):
        cfg = load_config(PROFILE, [*cfg_overrides, *accepted])
        if (Path(cfg.paths.resolve("features")) / "metadata.json").exists():
            return cfg
        try:
            for stage in ("generate", "clean", "featurize"):
                if stage == "generate" and Path(cfg.paths.resolve("raw")).exists():
                    continue
                stage_function(stage)(spark, cfg)
            return cfg
        except RecsysError as exc:
            hint = HINT.search(str(exc))
            if not hint:
                raise
            accepted += hint.group(1).split()
            print(f"[{shape}] accepting {' '.join(accepted)}", flush=True)
    raise RuntimeError(f"[{shape}] could not be featurized")


def ranked_values(cfg: Config, result: dict[str, Any], split: str) -> dict[str, np.ndarray]:
    """Per-user NDCG@k / Recall@k of the trained best weights on ``features/<split>``."""
    from recsys_spark import io
    from recsys_spark.models.two_tower import TwoTowerModel
    from recsys_spark.train import data
    from recsys_spark.train.validation import ranking_values

    rows = data.read_eval_rows(io.feature_path(cfg.paths.resolve("features"), split))
    model = TwoTowerModel(**{**result["model_args"], "user_vector": result["user_vector"]})
    model.load_state_dict(result["state_dict"])
    return ranking_values(model.eval(), rows, cfg.train.eval_k)


def bootstrap(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5%, 97.5%) of the mean over users, by resampling users."""
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def train_variant(spark, cfg: Config, world_size: int) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    if world_size == 1:
        from recsys_spark.train.loop import train_fn

        result = train_fn(cfg.to_dict(), None, None, backend="single")
    else:
        from recsys_spark.train.runner import check_ranks, launch

        result = check_ranks(launch(spark, cfg, None, None))
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="demo,ratings,long_tail")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--variant", dest="variants", action="append", type=parse_variant, default=[],
                        metavar="NAME=key=value;...")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of every variant (before the variant's own)")
    parser.add_argument("--world-size", type=int, default=1, choices=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the one process (--world-size 1)")
    parser.add_argument("--protocol", choices=["leave_last_out", "temporal"], default="leave_last_out",
                        help="evaluate.protocol of the shapes' features (temporal ones live under <out>/<shape>_temporal)")
    args = parser.parse_args(argv)
    variants = args.variants or [("default", [])]
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in REGIMES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown} (known: {', '.join(REGIMES)})")

    from recsys_spark.spark import get_session

    launcher = (["train.launcher=local", "train.num_proc=1", f"train.threads_per_proc={args.threads}",
                 "train.pin_cpus=false"]
                if args.world_size == 1 else ["train.launcher=horovod_spark", "train.num_proc=2"])
    spark = get_session(load_config(PROFILE, ["spark.show_progress=false"]).spark)
    out = args.out.resolve()
    rows = []
    try:
        for shape in shapes:
            folder = out / (shape if args.protocol == "leave_last_out" else f"{shape}_{args.protocol}")
            base = shape_overrides(shape, folder, args.users, [f"evaluate.protocol={args.protocol}"])
            # The data-threshold overrides featurize needed apply to featurize alone: not repeated here.
            prepare(spark, shape, base)
            first: dict[str, np.ndarray] | None = None
            for name, overrides in variants:
                cfg = load_config(PROFILE, [*base, *launcher,
                                            f"paths.checkpoints={folder / 'checkpoints' / name}",
                                            *args.sets, *overrides])
                result, seconds = train_variant(spark, cfg, args.world_size)
                val = ranked_values(cfg, result, "validation")["ndcg"]
                test = ranked_values(cfg, result, "test")["ndcg"]
                best = result["history"][result["best_evaluation"] - 1]
                row = {
                    "shape": shape, "protocol": args.protocol, "variant": name, "overrides": [*args.sets, *overrides],
                    "world_size": args.world_size, "user_vector": result["user_vector"],
                    "best_step": result["best_step"], "steps": result["steps"], "stop": result["stop_reason"],
                    "train_s": round(seconds, 1), "steps_per_s": round(result["steps"] / seconds, 2),
                    "data_wait_share": round(float(np.mean([h["data_wait_share"] for h in result["history"]])), 4),
                    "val_ndcg": bootstrap(val), "val_users": len(val), "test_ndcg": bootstrap(test),
                    "test_users": len(test), "trained_val_ndcg": best[f"val_ndcg_at_{cfg.train.eval_k}"],
                }
                if first is None:
                    first = {"validation": val, "test": test}
                else:
                    row["val_diff"] = bootstrap(val - first["validation"]) if len(val) == len(first["validation"]) else None
                    row["test_diff"] = bootstrap(test - first["test"]) if len(test) == len(first["test"]) else None
                rows.append(row)
                with open(out / "recipes.jsonl", "a") as sink:
                    sink.write(json.dumps(row) + "\n")
                print(describe(row), flush=True)
    finally:
        spark.stop()
    print("\nshape | variant | mode | best step / steps | s | val NDCG [95%] | test NDCG [95%] | test - first [95%]")
    for row in rows:
        print(describe(row))
    return 0


def fmt(triple) -> str:
    if not triple:
        return "-"
    mean, low, high = triple
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]" if low < 0 < high or mean < 0 else f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def describe(row: dict[str, Any]) -> str:
    return (f"{row['shape']} | {row['variant']} | {row['user_vector']} | {row['best_step']}/{row['steps']} | "
            f"{row['train_s']:.0f} | {fmt(row['val_ndcg'])} | {fmt(row['test_ndcg'])} ({row['test_users']}) | "
            f"{fmt(row.get('test_diff'))} | val-first {fmt(row.get('val_diff'))}")


if __name__ == "__main__":
    raise SystemExit(main())
