"""Training benchmark: throughput and scaling, data-wait share, reader speed, memory per epoch.

    .venv/bin/python benchmarks/train_bench.py [--windows 4096] [--epochs 4] [--repeats 3] [--no-pin]
                                               [--features PATH]

On one synthetic featurised dataset (or ``--features``, a ``features/`` directory written by
``recsys featurize``), all measured in the same run:

1. training throughput (windows/s, validation excluded) of one process, and of two Horovod
   processes on gloo (``horovod.run``, one thread each) -> scaling efficiency
   ex_s(2) / (2 * ex_s(1)); epoch 1 is warm-up and left out of the means. Each process is
   bound to one CPU of its own (``train.pin_cpus``), so one process has one CPU and two have
   two: unbound, a lone process also borrows the idle CPU for its reader and collective
   threads, which makes the "2x the resources" comparison unfair. ``--no-pin`` measures
   unbound (a second, informative figure);
2. the share of step time spent waiting for the next batch (Petastorm), per configuration;
3. the Petastorm reader (``BatchedDataLoader`` as training uses it, shuffling included)
   against plain ``pyarrow`` ``iter_batches`` + torch conversion of the same Parquet files;
4. peak RSS of the largest rank after each epoch (should stay flat from epoch 2 on).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_spark import schema  # noqa: E402
from recsys_spark.config import load_config  # noqa: E402
from recsys_spark.train import data  # noqa: E402
from recsys_spark.train.loop import train_fn  # noqa: E402

INT_LIST = pa.list_(pa.field("element", pa.int32(), nullable=False))


def synthetic_features(root: Path, windows: int, num_items: int, seq_len: int, seed: int = 0) -> None:
    """A featurised dataset as ``recsys featurize`` lays it out: 4 train files, item tastes by category."""
    rng = np.random.default_rng(seed)
    real = np.arange(schema.FIRST_ITEM_INDEX, num_items)
    categories = 40
    item_category = rng.integers(0, categories, num_items)
    by_category = [real[item_category[real] == c] for c in range(categories)]

    def session(length: int) -> list[int]:
        tastes = rng.choice(categories, 2, replace=False)
        out = []
        for _ in range(length):
            pool = by_category[int(rng.choice(tastes))]
            out.append(int(rng.choice(pool)) if len(pool) else int(rng.choice(real)))
        return out

    def window(length: int) -> tuple[list[int], list[int], list[int]]:
        pad = [schema.PAD_INDEX] * (seq_len + 1 - length)
        events = rng.choice([1, 1, 1, 1, 2, 3, 4], length).tolist()
        gaps = [0] + rng.integers(1, 20, length - 1).tolist()
        return pad + session(length), pad + events, pad + gaps

    rows = [window(int(rng.integers(seq_len // 2, seq_len + 2))) for _ in range(windows)]
    (root / "train").mkdir(parents=True)
    for f, part in enumerate(np.array_split(np.arange(windows), 4)):
        table = pa.table({
            name: pa.array([rows[i][c] for i in part], INT_LIST)
            for c, name in enumerate((schema.ITEM_SEQ, schema.EVENT_SEQ, schema.GAP_SEQ))
        })
        pq.write_table(table, root / "train" / f"part-{f:05d}.parquet", row_group_size=max(1, len(part) // 4))
    validation = []
    for u in range(256):
        items, events, gaps = window(seq_len + 1)
        validation.append({
            schema.USER_ID: f"u{u}", schema.HIST_ITEMS: items[:-3], schema.HIST_EVENTS: events[:-3],
            schema.HIST_GAPS: gaps[:-3], schema.SEEN_ITEMS: items[:-3], schema.TARGET_ITEMS: items[-3:], schema.TARGET_EVENTS: events[-3:],
        })
    for row in validation:  # histories are max_seq_len long, left-padded
        for key in (schema.HIST_ITEMS, schema.HIST_EVENTS, schema.HIST_GAPS):
            row[key] = [0] * (seq_len - len(row[key])) + row[key]
    (root / "validation").mkdir()
    pq.write_table(pa.Table.from_pylist(validation), root / "validation" / "part-00000.parquet")
    counts = np.bincount(np.concatenate([np.asarray(r[0]) for r in rows]), minlength=num_items)
    (root / "item_vocab").mkdir()
    pq.write_table(pa.table({
        schema.ITEM_IDX: pa.array(real, pa.int32()),
        schema.PRODUCT_ID: pa.array(100000 + real, pa.int64()),
        schema.CATEGORY_IDX: pa.array(item_category[real], pa.int32()),
        schema.BRAND_IDX: pa.array(real % 50, pa.int32()),
        schema.PRICE_BUCKET: pa.array(1 + real % 10, pa.int32()),
        schema.TRAIN_COUNT: pa.array(counts[real], pa.int64()),
        schema.PRETEST_COUNT: pa.array(counts[real], pa.int64()),
    }), root / "item_vocab" / "part-00000.parquet")
    (root / schema.FEATURE_METADATA).write_text(json.dumps({
        "num_items": num_items, "num_categories": categories, "num_brands": 50, "num_price_buckets": 11,
        "num_event_codes": schema.NUM_EVENT_CODES, "num_gap_buckets": schema.NUM_GAP_BUCKETS, "max_seq_len": seq_len,
    }))


def train_config(root: Path, features: Path, epochs: int, batch_size: int, pin: bool = True) -> dict:
    return load_config(None, [
        f"paths.root={root}", f"paths.features={features}", "train.launcher=local", f"train.epochs={epochs}",
        f"train.batch_size={batch_size}", "train.threads_per_proc=1", "train.device=cpu", "train.patience=0",
        f"train.pin_cpus={str(pin).lower()}", "train.eval_every_steps=0", "train.max_steps=1000000",
    ]).to_dict()


def one_process(cfg: dict) -> list[dict]:
    return train_fn(cfg, None, None, backend="single")["history"]


def two_horovod_processes(cfg: dict) -> list[dict]:
    import horovod

    # train.threads_per_proc=1 in cfg: each process computes on one thread.
    results = horovod.run(train_fn, args=(cfg, None, None, "horovod"), np=2, use_gloo=True)
    return next(r for r in results if r["rank"] == 0)["history"]


def reader_throughput(path: str, batch_size: int, passes: int = 3) -> tuple[float, float]:
    """(Petastorm rows/s, pyarrow rows/s) over the same Parquet files, best of ``passes``."""
    best_peta = best_arrow = 0.0
    files = sorted(str(p) for p in Path(path).glob("*.parquet"))
    for p in range(passes):
        started, rows = time.perf_counter(), 0
        with data.train_batches(path, 0, 1, batch_size, seed=p, shuffle_buffer=4 * batch_size) as batches:
            for items, _, _ in batches:
                rows += items.shape[0]
        best_peta = max(best_peta, rows / (time.perf_counter() - started))

        started, rows = time.perf_counter(), 0
        for name in files:
            for batch in pq.ParquetFile(name).iter_batches(batch_size=batch_size, columns=list(data.TRAIN_COLUMNS)):
                tensors = []
                for column in batch.columns:
                    flat = column.values.to_numpy(zero_copy_only=False)
                    tensors.append(torch.from_numpy(flat.astype(np.int64).reshape(len(column), -1)))
                rows += tensors[0].shape[0]
        best_arrow = max(best_arrow, rows / (time.perf_counter() - started))
    return best_peta, best_arrow


def summary(history: list[dict]) -> dict:
    steady = history[1:] or history
    return {
        "examples_per_s": float(np.mean([h["examples_per_s"] for h in steady])),
        "data_wait_share": float(np.mean([h["data_wait_share"] for h in steady])),
        "peak_rss_mb": [round(h["peak_rss_mb"], 1) for h in history],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4096, help="synthetic training windows")
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--features", default=None, help="an existing features/ directory instead")
    parser.add_argument("--repeats", type=int, default=3, help="back-to-back pairs of runs; the median counts")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="leave the processes unbound (a lone process then borrows the idle CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp:
        tmp = Path(tmp)
        features = Path(args.features) if args.features else tmp / "features"
        if not args.features:
            synthetic_features(features, args.windows, args.items + schema.FIRST_ITEM_INDEX, args.seq_len)
        print(f"data: {features} ({pq.ParquetDataset(str(features / 'train')).read().num_rows} windows)", flush=True)

        peta, arrow = reader_throughput(str(features / "train"), args.batch_size)
        # The two configurations run back to back, `repeats` times: a shared VM's speed drifts
        # by tens of percent over minutes, so each pair gives one efficiency and the median counts.
        pairs = []
        for r in range(args.repeats):
            single = summary(one_process(
                train_config(tmp / f"one{r}", features, args.epochs, args.batch_size, args.pin)
            ))
            double = summary(two_horovod_processes(
                train_config(tmp / f"two{r}", features, args.epochs, args.batch_size, args.pin)
            ))
            pairs.append((single, double, double["examples_per_s"] / (2 * single["examples_per_s"])))

    efficiencies = [e for _, _, e in pairs]
    binding = "each process bound to its own CPU" if args.pin else "processes unbound"
    print(f"\n== training benchmark (CPU, one thread per process, {binding}; epoch 1 excluded) ==")
    print(f"{'configuration':<28}{'windows/s':>12}{'data wait':>12}   peak RSS per epoch (MiB, largest rank)")
    for r, (one, two, eff) in enumerate(pairs):
        for name, res in ((f"[{r + 1}] 1 process", one), (f"[{r + 1}] 2 Horovod (gloo)", two)):
            print(f"{name:<28}{res['examples_per_s']:>12.1f}{res['data_wait_share']:>11.1%}   {res['peak_rss_mb']}")
        print(f"{f'[{r + 1}] efficiency':<28}{eff:>12.1%}")
    print(f"scaling efficiency, 2 processes vs 1 (median of {len(pairs)}):  "
          f"{float(np.median(efficiencies)):.1%}  (target >= 90%)")
    worst_wait = max(res["data_wait_share"] for one, two, _ in pairs for res in (one, two))
    print(f"data-wait share (worst run):           {worst_wait:.1%}  (target < 10%)")
    print(f"reader: Petastorm {peta:,.0f} rows/s vs pyarrow {arrow:,.0f} rows/s -> ratio {peta / arrow:.2f}x")
    for name, runs in (("1 process", [p[0] for p in pairs]), ("2 processes", [p[1] for p in pairs])):
        growth = [res["peak_rss_mb"][-1] - res["peak_rss_mb"][1] for res in runs if len(res["peak_rss_mb"]) > 2]
        if growth:
            print(f"peak RSS growth epoch 2 -> {args.epochs}, {name}: "
                  + ", ".join(f"{g:+.1f}" for g in growth) + " MiB (each run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
