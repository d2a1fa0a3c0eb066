"""Train with ``horovodrun`` on a plain cluster (no Spark): every process runs this module.

    horovodrun -np 2 --gloo python -m recsys_spark.train.horovodrun \\
        --config conf/local.yaml [section.key=value ...]

    # four GPU hosts' worth, NCCL-built Horovod:
    horovodrun -np 8 -H host1:4,host2:4 python -m recsys_spark.train.horovodrun --config conf/cluster.yaml

Each rank runs the same training function as ``recsys train`` (:func:`~recsys_spark.train.loop.train_fn`
with the Horovod collective; ``train.launcher`` and ``train.num_proc`` are ignored, horovodrun's
``-np`` decides). Rank 0 opens the MLflow run, logs the inputs, per-epoch metrics and the
model, registers it and sets the alias; the features are read with pyarrow, so no Spark is
needed. The paths must be reachable from every host (a shared filesystem or a URI).
"""

from __future__ import annotations

import contextlib
import logging
import sys

from recsys_spark import io, tracking
from recsys_spark.config import load_config
from recsys_spark.errors import RecsysError
from recsys_spark.stages import build_parser
from recsys_spark.train import data
from recsys_spark.train.collective import init_horovod
from recsys_spark.train.loop import train_fn
from recsys_spark.train.runner import finish, log_inputs


def main(argv: list[str] | None = None) -> int:
    """Returns: the exit status (2 with a one-line message on a config or data problem)."""
    args = build_parser("train").parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        # To learn the rank; train_fn's own init() is then a no-op. The config's cycle time
        # wins over horovodrun's --cycle-time-ms unless train.horovod_cycle_time_ms=0.
        hvd = init_horovod(cfg.train.horovod_cycle_time_ms)
        is_main = hvd.rank() == 0
        features = cfg.paths.resolve("features")
        with (tracking.stage_run(cfg, "train") if is_main else contextlib.nullcontext()) as active:
            run_id = active.info.run_id if is_main else None
            if is_main:
                log_inputs(features)
            result = train_fn(cfg.to_dict(), run_id, cfg.tracking_uri if is_main else None, backend="horovod")
            if is_main:
                vocab = data.read_item_vocab(io.feature_path(features, "item_vocab"))
                print(finish(cfg, [result], vocab, run_id), flush=True)
    except RecsysError as exc:
        print(f"recsys train (horovodrun): error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
