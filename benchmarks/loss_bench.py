"""Benchmark: the full softmax against the sampled one, by catalogue size (``train.full_softmax_max_items``).

    .venv/bin/python benchmarks/loss_bench.py                       # N = 1k .. 200k, the demo's step shape
    .venv/bin/python benchmarks/loss_bench.py --items 5000,50000 --windows 64 --length 50 --threads 2

One training step of the loss alone (forward and backward, the item tower included), for each
catalogue size N: the model's item tower and user tower are the library's own
(``models.two_tower.TwoTowerModel``, ``train.loss.RetrievalTask``) at the default width, on a
batch of random windows of ``--windows`` x (``--length`` + 1) steps. It prints, per N and loss,
the median seconds per step over ``--repeats`` steps, the peak resident memory the step added
(``ru_maxrss`` after minus before, measured in a fresh process per N and loss, so one run's
allocations cannot hide the next's), and the full/sampled ratio of each: what
``train.full_softmax_max_items`` (``train.loss=auto``) is chosen from (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(n_items: int, loss: str, windows: int, length: int, repeats: int, threads: int) -> dict:
    """Seconds per step and the peak memory a step adds, in this process."""
    import torch

    from recsys_spark import schema
    from recsys_spark.config import TrainConfig
    from recsys_spark.models.two_tower import TwoTowerModel
    from recsys_spark.train.loss import RetrievalTask, event_weight_table, popularity

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tc = TrainConfig()
    model = TwoTowerModel(n_items, 2, 2, 2, schema.NUM_EVENT_CODES, schema.NUM_GAP_BUCKETS, length,
                          dim=tc.embedding_dim, num_layers=tc.num_layers, num_heads=tc.num_heads, dropout=tc.dropout)
    counts = 1.0 / torch.arange(1, n_items + 1).float()  # Zipf-like popularity, for the sampled loss's logQ
    task = RetrievalTask(model, popularity(counts), event_weight_table(tc.event_weights), tc.uniform_negatives,
                         loss=loss)
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    items = torch.randint(schema.FIRST_ITEM_INDEX, n_items, (windows, length + 1))
    events = torch.ones_like(items)
    gaps = torch.ones_like(items)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        value, _ = task(items, events, gaps, generator=torch.Generator().manual_seed(1))
        value.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"items": n_items, "loss": loss, "s_per_step": statistics.median(times[1:]),
            "added_mb": (after - before) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--items", default="1000,5000,20000,50000,100000,200000")
    parser.add_argument("--windows", type=int, default=64, help="windows per rank and step (the demo: 128 / 2 ranks)")
    parser.add_argument("--length", type=int, default=50, help="featurize.max_seq_len")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: N,loss in a fresh process
    args = parser.parse_args(argv)
    if args.one:
        n_items, loss = args.one.split(",")
        print(json.dumps(one(int(n_items), loss, args.windows, args.length, args.repeats, args.threads)))
        return 0
    rows = []
    print(f"one step, {args.windows} windows x {args.length + 1} steps, {args.threads} thread(s); "
          f"median of {args.repeats}")
    print("items | full s/step | sampled s/step | full / sampled | full +MB | sampled +MB")
    for n_items in [int(x) for x in args.items.split(",")]:
        measured = {}
        for loss in ("full", "sampled"):
            out = subprocess.run([sys.executable, __file__, "--one", f"{n_items},{loss}", "--windows", str(args.windows),
                                  "--length", str(args.length), "--repeats", str(args.repeats),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            measured[loss] = json.loads(out.stdout.strip().splitlines()[-1])
        full, sampled = measured["full"], measured["sampled"]
        rows.append(measured)
        print(f"{n_items:,} | {full['s_per_step']:.3f} | {sampled['s_per_step']:.3f} | "
              f"{full['s_per_step'] / sampled['s_per_step']:.2f}x | {full['added_mb']:.0f} | {sampled['added_mb']:.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
