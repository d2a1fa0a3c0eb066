"""Train with ``horovodrun`` on a plain cluster (no Spark cluster): every process runs this module.

    horovodrun -np 2 --gloo python -m recsys_spark.train.horovodrun \\
        --config conf/local.yaml [section.key=value ...]

    # four GPU hosts' worth, NCCL-built Horovod:
    horovodrun -np 8 -H host1:4,host2:4 python -m recsys_spark.train.horovodrun --config conf/cluster.yaml

Every rank runs the same training function as ``recsys train`` (:func:`~recsys_spark.train.loop.train_fn`
with the Horovod collective; ``train.launcher`` and ``train.num_proc`` are ignored, horovodrun's
``-np`` decides), after the same preparation (:func:`~recsys_spark.train.runner.prepare`): rank 0
checks the features and, for ``train.mode=incremental``, finds the parent and writes the windows to
train on, with a Spark session of the config's ``spark.*`` (a local master is enough), then hands
the resulting config to every rank. Rank 0 opens the MLflow run with the same tags as ``recsys
train``, logs the inputs, per-epoch metrics and the model, registers it and sets the alias. The
paths must be reachable from every host (a shared filesystem or a URI). ``search.trials > 0`` is
refused: the search starts its own trials (``recsys train`` runs it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys

import mlflow

from recsys_spark import tracking
from recsys_spark.config import Config, load_config
from recsys_spark.errors import ConfigError, RecsysError
from recsys_spark.spark import get_session
from recsys_spark.stages import build_parser
from recsys_spark.train.collective import init_horovod
from recsys_spark.train.loop import train_fn
from recsys_spark.train.runner import Prepared, finish, log_inputs, prepare


def main(argv: list[str] | None = None) -> int:
    """Returns: the exit status (2 with a one-line message on a config or data problem)."""
    args = build_parser("train").parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.search.trials:
            raise ConfigError(f"search.trials={cfg.search.trials}: the search starts its own trials, which horovodrun "
                              "cannot; run it with `recsys train`, or set search.trials=0")
        # To learn the rank; train_fn's own init() is then a no-op. The config's cycle time
        # wins over horovodrun's --cycle-time-ms unless train.horovod_cycle_time_ms=0.
        hvd = init_horovod(cfg.train.horovod_cycle_time_ms)
        is_main = hvd.rank() == 0
        prepared = prepared_on_rank_0(hvd, cfg)
        with (tracking.stage_run(prepared.cfg, "train") if is_main else contextlib.nullcontext()) as active:
            run_id = active.info.run_id if is_main else None
            if is_main:
                mlflow.set_tags(prepared.tags)
                log_inputs(prepared.cfg.paths.resolve("features"))
            result = train_fn(prepared.cfg.to_dict(), run_id, cfg.tracking_uri if is_main else None,
                              backend="horovod")
            if is_main:
                print(finish(prepared.cfg, [result], prepared.item_vocab, run_id), flush=True)
    except RecsysError as exc:
        print(f"recsys train (horovodrun): error: {exc}", file=sys.stderr)
        return 2
    return 0


def prepared_on_rank_0(hvd, cfg: Config) -> Prepared:
    """:func:`prepare` on rank 0, its config sent to every rank (the item vocabulary and the tags
    stay on rank 0, which alone logs). Every rank raises rank 0's error, so none waits for a
    rank that stopped.
    """
    prepared, failure = None, None
    if hvd.rank() == 0:
        spark = get_session(cfg.spark)
        try:
            prepared = prepare(spark, cfg)
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here too
            failure = exc
        finally:
            spark.stop()  # its JVM is not needed while training
    message = None if failure is None else str(failure) if isinstance(failure, RecsysError) else repr(failure)
    train = None if prepared is None else {"mode": prepared.cfg.train.mode, "windows_path": prepared.cfg.train.windows_path}
    message, train = hvd.broadcast_object((message, train), root_rank=0)
    if failure is not None:
        raise failure
    if message is not None:
        raise RecsysError(f"rank 0 could not prepare the training: {message}")
    return prepared if prepared is not None else Prepared(from_train_section(cfg, train), None, {})


def from_train_section(cfg: Config, train: dict) -> Config:
    """``cfg`` with the train section rank 0 decided (train.mode, train.windows_path)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, mode=train["mode"], windows_path=train["windows_path"]))


if __name__ == "__main__":
    raise SystemExit(main())
