"""How ``recsys train`` starts its training processes, and the check of what they return.

:func:`launch` runs :func:`~recsys_spark.train.loop.train_fn` with ``train.launcher``; the
stage's own training (runner.py) and every search trial (search.py) go through it, then through
:func:`check_ranks`.
"""

from __future__ import annotations

from typing import Any

import torch
from pyspark.sql import SparkSession

from recsys_spark.config import Config
from recsys_spark.errors import DataQualityError
from recsys_spark.train.loop import train_fn
from recsys_spark.waits import WaitTimeout


def launch(spark: SparkSession, cfg: Config, run_id: str | None, tracking_uri: str | None) -> list[dict[str, Any]]:
    """Run :func:`train_fn` with the configured launcher.

    "horovod_spark": ``train.num_proc`` Horovod processes on gloo, one per Spark task (so the
    cluster needs that many free task slots). "torch_distributor": as many torch.distributed
    processes started by Spark's TorchDistributor (gloo on CPU, NCCL on GPU). "local": in this
    process, world size 1.

    Returns:
        train_fn's results in rank order (TorchDistributor hands back rank 0's only; it carries
        every rank's weight checksum).
    """
    args = (cfg.to_dict(), run_id, tracking_uri)
    tc = cfg.train
    if tc.launcher == "local":
        threads = torch.get_num_threads()
        try:
            return [train_fn(*args)]
        finally:
            torch.set_num_threads(threads)

    if tc.launcher == "torch_distributor":
        # Here, not at the top: only this launcher needs pyspark.ml's distributor (0.5 s to import).
        from pyspark.ml.torch.distributor import TorchDistributor

        use_gpu = tc.device == "cuda"
        # local_mode=False: the processes run inside Spark tasks, as Horovod's do, so the
        # driver stays free and a cluster spreads them over its executors.
        distributor = TorchDistributor(num_processes=tc.num_proc, local_mode=False, use_gpu=use_gpu)
        return [distributor.run(train_fn, *args, "torch")]

    # Here, not at the top: Horovod is an optional dependency that only this launcher needs
    # (2 s to import).
    import horovod.spark
    from horovod.runner.common.util.timeout import TimeoutException

    try:
        return horovod.spark.run(
            train_fn, args=args, num_proc=tc.num_proc, use_mpi=False, use_gloo=True, verbose=1,
            start_timeout=tc.start_timeout_s,
        )
    except TimeoutException:
        raise WaitTimeout(f"the {tc.num_proc} Horovod processes did not all start within train.start_timeout_s="
                          f"{tc.start_timeout_s} (free Spark task slots: lower train.num_proc or add executors)") from None


def check_ranks(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's result, after checking that every rank ended with the same weights.

    Raises:
        DataQualityError: the ranks' weights differ (data-parallel training went out of step).
    """
    main = next((r for r in results if r.get("rank") == 0), None)
    if main is None or main.get("state_dict") is None:
        raise DataQualityError("training returned no result from rank 0")
    checksums = main.get("rank_checksums") or [r["checksum"] for r in results]
    if len(set(checksums)) != 1:
        raise DataQualityError(f"the {len(checksums)} training ranks ended with different weights")
    return main
