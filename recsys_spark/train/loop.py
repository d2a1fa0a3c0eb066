"""The data-parallel training loop: one function, run once per rank, whatever launched it.

:func:`train_fn` is what Horovod on Spark, ``horovodrun``, Spark's ``TorchDistributor`` and the
in-process launcher all run; the only difference between them is the
:class:`~recsys_spark.train.collective.Collective` it builds. Every side effect (progress,
MLflow metrics, checkpoints) happens on rank 0 only, behind one ``is_main`` flag.

Read :func:`_train` top to bottom: :func:`_start` builds the rank's :class:`Training`,
:func:`_resume` continues a checkpoint, then each pass runs :func:`_train_pass` (its steps,
:func:`_step`, and the evaluations of :func:`_evaluate`) and :func:`_save_pass`. The checkpoint
files live in ``checkpoint.py``, validation in ``validation.py``, the learning-rate schedule in
``schedule.py``, the process's set-up in ``system.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import socket
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.config import Config, TrainConfig, from_dict
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.models.two_tower import TwoTowerModel
from recsys_spark.train import data
from recsys_spark.train.checkpoint import (
    BEST_WEIGHTS, LAST_CHECKPOINT, WARM_START, check_resumable, load_checkpoint, model_args_from, optimizer_moments,
    read_checkpoint, read_on_main, restore_moments, restore_rng, rng_state, save_checkpoint, save_weights,
    state_checksum,
)
from recsys_spark.train.collective import Collective
from recsys_spark.train.loss import RetrievalTask, event_weight_table, popularity
from recsys_spark.train.schedule import budget_cooldown, cooldown_done, lr_factor, resolve_recipe, start_cooldown
from recsys_spark.train.system import (
    BACKENDS, amp_settings, bind_threads, limit_heap_growth, make_collective, peak_rss_mb, pick_device, pin_cpus,
    release_free_memory,
)
from recsys_spark.train.validation import best_mode, metric_key, plateau_reached, user_vector_modes, validation_scores

PROGRESS_LOG_INTERVAL_S = 30
# The most memory a rank's shard of training windows may take to be shuffled fully in memory
# (train/data.py TrainWindows); a larger shard is streamed through a buffer of this size.
SHUFFLE_MEMORY_MB = 4096


def train_fn(cfg_dict: dict[str, Any], run_id: str | None, tracking_uri: str | None,
             backend: str | None = None,
             on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the two-tower model on this rank's shard; rank 0 returns the best weights.

    Args:
        cfg_dict: the resolved config, ``Config.to_dict()`` (plain data, so it pickles to tasks).
        run_id: the MLflow run that rank 0 logs each evaluation's metrics to (at its optimiser
            step); None logs nothing.
        tracking_uri: the MLflow store of ``run_id``.
        backend: the collective ("horovod", "torch", "single"); None follows ``train.launcher``.
        on_checkpoint: called with the pass (epoch) number on every rank once rank 0 has written
            that pass's checkpoint (tests use it to kill a run at a checkpoint boundary).

    Returns:
        rank 0: {"state_dict": best weights (CPU tensors), "model_args", "history" (one dict
        per evaluation, resumed ones included: "evaluation", "epoch" (the pass it fell in),
        "step" and the metrics), "best_evaluation" (1-based, into history), "best_epoch",
        "best_step", "stopped_early", "stop_reason", "resumed_from", "rank", "size",
        "checksum", "steps"}; other ranks: {"rank", "size", "checksum" (sha256 of the final
        weights), "steps"}.
    """
    # The one conversion of this process: everything below takes the typed config.
    cfg = from_dict(cfg_dict)
    tc = cfg.train
    torch.set_num_threads(tc.threads_per_proc)
    limit_heap_growth()
    use_gpu = tc.device == "cuda" or (tc.device == "auto" and torch.cuda.is_available())
    comm = make_collective(backend or BACKENDS[tc.launcher], use_gpu=use_gpu,
                           horovod_cycle_time_ms=tc.horovod_cycle_time_ms)
    # The in-process launcher trains in the driver: its CPUs are given back afterwards.
    previous_cpus = os.sched_getaffinity(0) if tc.pin_cpus else None
    if previous_cpus is not None:
        pin_cpus(comm.local_rank, tc.threads_per_proc)
    try:
        return _train(cfg, cfg_dict, comm, run_id, tracking_uri, on_checkpoint)
    finally:
        comm.shutdown()
        if previous_cpus is not None:
            bind_threads(previous_cpus)


def _train(cfg: Config, cfg_dict: dict[str, Any], comm: Collective, run_id: str | None, tracking_uri: str | None,
           on_checkpoint: Callable[[int], None] | None) -> dict[str, Any]:
    """The loop: set up, resume, then one pass after another until a stop; see :func:`train_fn`."""
    tc = cfg.train
    run = _start(cfg, cfg_dict, comm)
    if tc.resume:
        _resume(run)
    run.module, run.optimizer = comm.distribute(run.task, run.optimizer, run.device)

    run.run_id = run_id
    run.client = _mlflow_client(tracking_uri) if comm.is_main and run_id else None
    if run.client is not None:
        for past in run.history:  # a resumed run's curve starts at its first evaluation, like an uninterrupted one
            log_evaluation(run.client, run_id, past)
    run.params = [p for p in run.task.parameters() if p.requires_grad]
    # What the steps since the last evaluation did: summed on every rank, all-reduced at the next.
    run.since = Accumulated()

    for epoch in range(run.first_epoch, tc.epochs + 1):
        if run.stopped or run.step >= tc.max_steps:
            break
        _train_pass(run, epoch)
        if run.since.batches or not run.history:
            _evaluate(run, epoch)
        if not run.stopped and run.step >= tc.max_steps:
            run.stopped, run.stop_reason = True, f"reached train.max_steps={tc.max_steps}"
        _save_pass(run, epoch)
        if on_checkpoint is not None:
            on_checkpoint(epoch)
    return _result(run)


class Accumulated:
    """Sums over the steps since the last evaluation (this rank's)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.targets, self.windows, self.batches = 0.0, 0, 0, 0
        self.wait_s, self.norm_sum = 0.0, 0.0
        self.started = time.perf_counter()

    def add(self, loss: float, targets: int, windows: int, norm: float) -> None:
        self.loss_sum += loss * targets
        self.targets += targets
        self.windows += windows
        self.norm_sum += norm
        self.batches += 1


@dataclasses.dataclass
class Training:
    """What one rank's training carries from step to step: built by :func:`_start`, advanced by
    :func:`_train_pass` and :func:`_evaluate`, saved by :func:`_save_pass`."""

    cfg: Config
    cfg_dict: dict[str, Any]  # the config as given: what checkpoints and best weights store
    comm: Collective
    device: torch.device
    amp_dtype: torch.dtype | None
    negatives_rng: torch.Generator
    model: TwoTowerModel
    model_args: dict[str, Any]
    task: RetrievalTask
    optimizer: torch.optim.Optimizer  # after comm.distribute, the distributed one
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    # The schedule's state: wsd's cool-down (where it starts and how long it lasts), and the
    # plateau scale of cosine/constant (1, then plateau_factor after each plateau).
    plateau: dict[str, Any]
    windows: data.TrainWindows
    train_path: str
    validation: data.EvalRows
    checkpoints: str
    total_steps: int
    # Under user_vector=auto every evaluation ranks the validation users in every mode and keeps
    # the best (mode, step): the checkpoint is chosen on the vector that will be served.
    modes: tuple[str, ...]
    best: dict[str, Any]
    module: nn.Module | None = None
    params: list[Tensor] = dataclasses.field(default_factory=list)
    run_id: str | None = None
    client: Any = None
    since: Accumulated = dataclasses.field(default_factory=Accumulated)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # This rank's per-user NDCG of the best evaluation so far, for the paired gain's interval.
    best_values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None
    step: int = 0
    first_epoch: int = 1
    stopped: bool = False
    stop_reason: str = ""
    resumed_from: int = 0

    @property
    def tc(self) -> TrainConfig:
        return self.cfg.train


def _start(cfg: Config, cfg_dict: dict[str, Any], comm: Collective) -> Training:
    """Everything a rank needs before its first step: device, seeds, data, model, optimiser, schedule."""
    tc = cfg.train
    rank, size = comm.rank, comm.size
    device = pick_device(tc.device, comm.local_rank)
    # One line per rank (the others print nothing else), so a cluster's executor logs show
    # where each rank ran and on what.
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "all"
    print(f"rank {rank}/{size} (local rank {comm.local_rank}) on {socket.gethostname()}: {device}, "
          f"{tc.threads_per_proc} thread(s), CPUs {cpus}", flush=True)
    amp_dtype, needs_scaler = amp_settings(device, tc.amp)
    random.seed(tc.seed + rank)
    np.random.seed(tc.seed + rank)
    torch.manual_seed(tc.seed)  # the same initial weights everywhere (rank 0's are broadcast anyway)
    negatives_rng = torch.Generator().manual_seed(tc.seed + 1000 * (rank + 1))

    features = cfg.paths.resolve("features")
    metadata = data.read_metadata(features)
    item_vocab = data.read_item_vocab(io.feature_path(features, "item_vocab"))
    validation = data.read_eval_rows(io.feature_path(features, "validation"), rank, size,
                                     limit=tc.validation_users, seed=tc.seed)
    model_args = model_args_from(metadata, tc)
    item_features = data.item_feature_arrays(item_vocab, model_args["num_items"])
    checkpoints = cfg.paths.resolve("checkpoints")
    model, warm = _model(comm, model_args, item_features, checkpoints, tc.mode)
    recipe = resolve_recipe(tc, model_args["num_items"], size)
    task = RetrievalTask(
        model,
        item_prob=popularity(torch.from_numpy(item_features[schema.TRAIN_COUNT])),
        event_weights=event_weight_table(tc.event_weights),
        uniform_negatives=tc.uniform_negatives,
        target_horizon=recipe["target_horizon"],
        visit_gap_bucket=schema.gap_bucket_of(tc.visit_gap_s) if tc.target_start == "next_visit" else None,
        skip_seen_targets=tc.skip_seen_targets,
        loss=recipe["loss"],
    ).to(device)
    if comm.is_main:
        print("recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()), flush=True)

    # batch_size is the batch over all ranks and the learning rate is not scaled by the world
    # size: 1 and N ranks take the same steps with the same rate (RESULTS.md, "The model's recipe").
    optimizer = torch.optim.AdamW(task.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if warm.get("moments"):
        restore_moments(optimizer, model, warm["moments"])
    train_path = tc.windows_path or io.feature_path(features, "train")
    windows = data.TrainWindows(train_path, rank, size, recipe["rank_batch"], SHUFFLE_MEMORY_MB)
    # Steps per pass as if the shards were even (uneven shards stop a little earlier).
    total_steps = min(tc.max_steps, tc.epochs * math.ceil(windows.total_rows / tc.batch_size))
    plateau = {"scale": 1.0, "decays": 0, "cooldown_start": -1, "cooldown_steps": 0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda at: lr_factor(at, tc, total_steps, plateau) * plateau["scale"]
    )
    # hvd.DistributedOptimizer (made after the checkpoint is restored) wraps the optimizer
    # in a new object, so the scheduler never sees its step() and warns on every epoch that it
    # runs first. It does not: the scheduler only counts steps, which stay in order.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    best = {"evaluation": 0, "epoch": 0, "step": 0, "ndcg": float("-inf"), "bad_evaluations": 0,
            "user_vector": model_args["user_vector"]}
    return Training(cfg=cfg, cfg_dict=cfg_dict, comm=comm, device=device, amp_dtype=amp_dtype,
                    negatives_rng=negatives_rng, model=model, model_args=model_args, task=task, optimizer=optimizer,
                    scheduler=scheduler, scaler=scaler, plateau=plateau, windows=windows, train_path=train_path,
                    validation=validation, checkpoints=checkpoints, total_steps=total_steps,
                    modes=user_vector_modes(tc), best=best)


def _model(comm: Collective, model_args: dict[str, Any], item_features: dict[str, np.ndarray], checkpoints: str,
           mode: str) -> tuple[TwoTowerModel, dict[str, Any]]:
    """The model with this run's item features: fresh, or (train.mode=incremental) the grown parent.

    Returns:
        (model, the warm start read: {} unless incremental; its "moments" seed the optimiser).
    """
    model = TwoTowerModel(**model_args)
    warm: dict[str, Any] = {}
    if mode == "incremental":
        # Rank 0 reads the grown parent and hands it over; a resumed run overwrites it.
        warm = read_on_main(comm, lambda: read_checkpoint(checkpoints, WARM_START))
        if warm["model_args"] != model_args:
            raise InputError(f"train.mode=incremental: {checkpoints}/{WARM_START} was grown for "
                             f"{warm['model_args']}, this run builds {model_args}")
        model.load_state_dict(warm["model"])
    # This run's item features, for the parent's items too (a product's category may change).
    model.set_item_features(
        torch.from_numpy(item_features[schema.CATEGORY_IDX]),
        torch.from_numpy(item_features[schema.BRAND_IDX]),
        torch.from_numpy(item_features[schema.PRICE_BUCKET]),
    )
    return model, warm


def _resume(run: Training) -> None:
    """train.resume: continue from the last checkpoint under paths.checkpoints, when there is one."""
    comm, rank, is_main = run.comm, run.comm.rank, run.comm.is_main
    # Rank 0 reads the checkpoint and hands it to every rank: on a cluster only the
    # checkpoint store is shared, and every rank needs its own RNG states back.
    checkpoint = read_on_main(comm, lambda: load_checkpoint(run.checkpoints))
    if checkpoint is None:
        if is_main:
            print(f"train.resume: no checkpoint under {run.checkpoints}; starting from scratch", flush=True)
        return
    check_resumable(checkpoint, run.model_args, comm.size, run.checkpoints)
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    if run.scaler is not None and checkpoint.get("scaler"):
        run.scaler.load_state_dict(checkpoint["scaler"])
    restore_rng(checkpoint["rng"][rank], run.negatives_rng)
    if checkpoint.get("best_values") and checkpoint["best_values"][rank] is not None:
        run.best_values = {"ndcg": checkpoint["best_values"][rank]}
    run.history = list(checkpoint["history"])
    run.step, run.resumed_from = int(checkpoint["step"]), int(checkpoint["epoch"])
    run.first_epoch = run.resumed_from + 1
    run.best = dict(checkpoint["best"])
    run.plateau.update(checkpoint.get("plateau", {}))
    run.stopped, run.stop_reason = bool(checkpoint.get("stopped", False)), checkpoint.get("stop_reason", "")
    if is_main and run.best["evaluation"]:
        run.best_state = read_checkpoint(run.checkpoints, BEST_WEIGHTS)["model"]
    if is_main:
        print(f"resuming after epoch {run.resumed_from} from {run.checkpoints}/{LAST_CHECKPOINT}", flush=True)


def _train_pass(run: Training, epoch: int) -> None:
    """One pass over this rank's windows, evaluating every ``train.eval_every_steps`` steps,
    until the windows, ``train.max_steps`` or a stop end it."""
    tc, comm, since = run.tc, run.comm, run.since
    run.module.train()
    since.reset()
    progress = progress_bar(f"pass {epoch}", run.step, run.total_steps, enabled=comm.is_main)
    with run.windows.pass_batches(seed=tc.seed * 1000 + epoch + 7919 * comm.rank) as batches:
        # Shards hold different numbers of batches. Every rank must join every collective or
        # the job hangs, so all ranks stop as soon as one runs out. Whether every rank has its
        # next batch is agreed one step ahead, by an allreduce started before the step and
        # read after it: the check rides along with the step's gradient allreduce instead of
        # holding every rank at a synchronisation point of its own.
        def fetch():
            fetch_start = time.perf_counter()
            batch = next(batches, None)
            since.wait_s += time.perf_counter() - fetch_start
            return batch, comm.allreduce_async(torch.tensor([int(batch is not None)]), op="min")

        upcoming, everyone_has = fetch()
        # Every rank takes the same steps and evaluations, so all leave this loop at the same
        # step; an agreement started and not read yet is read before leaving, on every rank.
        unread = True
        while run.step < tc.max_steps and not run.stopped:
            unread = False
            if int(everyone_has().item()) != 1:
                break
            batch = tuple(t.to(run.device, non_blocking=True) for t in upcoming)
            upcoming, everyone_has = fetch()
            unread = True
            _step(run, batch, progress)
            step = run.step
            if tc.lr_schedule == "wsd" and budget_cooldown(run.plateau, step, tc.cooldown_share, run.total_steps) \
                    and comm.is_main:
                print(f"step {step}: the last {run.plateau['cooldown_steps']} steps of the budget cool the learning "
                      f"rate down (train.cooldown_share={tc.cooldown_share})", flush=True)
            if step < tc.max_steps and cooldown_done(run.plateau, step):
                run.stopped, run.stop_reason = True, f"the learning rate's cool-down ended at step {step}"
            elif tc.eval_every_steps and step % tc.eval_every_steps == 0 and step < tc.max_steps:
                _evaluate(run, epoch)
        if unread:
            everyone_has()
    progress.close()


def _step(run: Training, batch: tuple[Tensor, ...], progress) -> None:
    """One optimiser step on ``batch`` (this rank's windows), gradients averaged over the ranks."""
    run.optimizer.zero_grad()
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        loss, n_targets = run.module(*batch, generator=run.negatives_rng)
    (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
    norm = run.comm.step(run.optimizer, run.params, run.tc.grad_clip, run.scaler)
    run.scheduler.step()
    run.step += 1
    batch_loss = float(loss.detach())
    run.since.add(batch_loss, n_targets, batch[0].shape[0], norm)
    progress.update(1)
    if run.comm.is_main:
        since = run.since
        progress.set_postfix(loss=f"{batch_loss:.3f}", refresh=False,
                             ex_s=f"{since.windows * run.comm.size / (time.perf_counter() - since.started):.0f}")


def _evaluate(run: Training, epoch: int) -> None:
    """Validate, append to the history, log, keep the best weights, decide on a plateau."""
    entry, metrics, scores, mode = _measure(run, epoch)
    chosen = scores[mode]
    _keep_best(run, entry, chosen, mode, epoch)
    _after_plateau(run, chosen)
    if run.comm.is_main:
        shown = {k: v for k, v in metrics.items() if ".user_vector_" not in k}
        modes = run.modes
        by_mode = "; " + ", ".join(f"{m} {scores[m]['ndcg']:.4f}" for m in modes) if len(modes) > 1 else ""
        print(f"step {run.step} (pass {epoch}): " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
              + f" [{mode}{by_mode}]", flush=True)
        if run.client is not None:
            log_evaluation(run.client, run.run_id, entry)
    run.since.reset()


def _measure(run: Training, epoch: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]], str]:
    """The evaluation's figures over every rank, appended to the history.

    Returns:
        (the history entry, its metrics, :func:`validation_scores` by mode, the chosen mode).
    """
    tc, comm, since, size = run.tc, run.comm, run.since, run.comm.size
    train_s = time.perf_counter() - since.started
    totals = comm.allreduce(
        torch.tensor([since.loss_sum, since.targets, since.windows, since.wait_s / max(train_s, 1e-9),
                      since.norm_sum, since.batches], dtype=torch.float64),
    )
    if not run.history and totals[2] == 0:
        raise DataQualityError(
            f"no training windows reached the {size} rank(s): is {run.train_path} empty, or split "
            "into fewer row groups than train.num_proc?"
        )
    # Every rank ranks its slice of the validation users; the sums are all-reduced, so
    # every rank sees the same figures and takes the same decisions.
    modes = run.modes
    scores = validation_scores(run.model, run.validation, tc.eval_k, comm, run.device, modes,
                               run.best_values.get("ndcg"))
    mode = best_mode(scores, modes)
    chosen = scores[mode]
    release_free_memory()
    # The largest resident set of any rank so far: flat after the first pass, or something leaks.
    peak_rss = comm.allreduce(torch.tensor([peak_rss_mb()], dtype=torch.float64), op="max")
    metrics = {
        "train_loss": float(totals[0] / max(totals[1], 1)),
        metric_key("val_ndcg", tc.eval_k): chosen["ndcg"],
        metric_key("val_recall", tc.eval_k): chosen["recall"],
        "val_users": chosen["users"],
        "examples_per_s": float(totals[2]) / max(train_s, 1e-9),
        "data_wait_share": float(totals[3]) / size,
        "grad_norm": float(totals[4] / max(totals[5], 1)),
        "lr": float(run.scheduler.get_last_lr()[0]),
        "train_s": train_s,
        "peak_rss_mb": float(peak_rss[0]),
    }
    # The noise to read a gain against (absent before the first best, or below 2 users).
    metrics.update({key: chosen[width] for key, width in (("val_ndcg_half_width", "half_width"),
                                                          ("val_gain_half_width", "gain_half_width"))
                    if not math.isnan(chosen[width])})
    if len(modes) > 1:
        metrics.update({f"{metric_key('val_ndcg', tc.eval_k)}.user_vector_{m}": scores[m]["ndcg"] for m in modes})
    entry = {"evaluation": len(run.history) + 1, "epoch": epoch, "step": run.step, **metrics}
    run.history.append(entry)
    return entry, metrics, scores, mode


def _keep_best(run: Training, entry: dict[str, Any], chosen: dict[str, Any], mode: str, epoch: int) -> None:
    """A new best (by more than ``train.min_delta``): keep its per-user values and, on rank 0,
    its weights (written to BEST_WEIGHTS); otherwise count one more evaluation without a gain."""
    best = run.best
    if chosen["ndcg"] > best["ndcg"] + run.tc.min_delta:
        best.update(evaluation=entry["evaluation"], epoch=epoch, step=run.step, ndcg=chosen["ndcg"],
                    bad_evaluations=0, user_vector=mode)
        run.best_values = {"ndcg": chosen["values"]}
        if run.comm.is_main:
            run.best_state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
            # The weights with the user-vector mode they were chosen in: what would be served.
            served_args = {**run.model_args, "user_vector": mode}
            save_weights(run.checkpoints, BEST_WEIGHTS, {"model": run.best_state, "model_args": served_args,
                                                         "config": run.cfg_dict, "best": dict(best)})
    else:
        best["bad_evaluations"] += 1


def _after_plateau(run: Training, chosen: dict[str, Any]) -> None:
    """On a plateau: wsd starts its cool-down; cosine/constant lower the learning rate, or stop
    once ``train.plateau_decays`` decays are spent."""
    tc, plateau, best, step, is_main = run.tc, run.plateau, run.best, run.step, run.comm.is_main
    plateaued = step < run.total_steps and plateau_reached(tc, best, step, chosen["ndcg"], chosen["gain_half_width"])
    if plateaued and tc.lr_schedule == "wsd":
        if plateau["cooldown_start"] < 0:
            start_cooldown(plateau, step, math.ceil(tc.cooldown_share * step), run.total_steps)
            if is_main:
                print(f"plateau at step {step}: cooling the learning rate down to {tc.min_lr_ratio} x its peak "
                      f"over {plateau['cooldown_steps']} steps (train.cooldown_share={tc.cooldown_share})",
                      flush=True)
    elif plateaued:
        if plateau["decays"] < tc.plateau_decays:
            plateau["decays"] += 1
            plateau["scale"] *= tc.plateau_factor
            for group in run.scheduler.optimizer.param_groups:  # from the next step on, not the one after
                group["lr"] *= tc.plateau_factor
            best["bad_evaluations"] = 0
            if is_main:
                print(f"plateau at step {step}: learning rate x{tc.plateau_factor} "
                      f"({plateau['decays']} of train.plateau_decays={tc.plateau_decays})", flush=True)
        else:
            run.stopped, run.stop_reason = True, (f"no gain in validation NDCG@{tc.eval_k} for "
                                                  f"{best['bad_evaluations']} evaluation(s)")


def _save_pass(run: Training, epoch: int) -> None:
    """Rank 0 writes the pass's checkpoint (every rank's RNG states and best values in it)."""
    comm, best = run.comm, run.best
    # Each rank's RNG states go into rank 0's checkpoint, so a resumed run draws the same
    # negatives and dropout masks as an uninterrupted one.
    rng_states = comm.allgather_object(rng_state(run.negatives_rng))
    # So is each rank's per-user NDCG of the best evaluation (the paired gain's interval).
    rank_best_values = comm.allgather_object(run.best_values.get("ndcg"))
    if not comm.is_main:
        return
    save_checkpoint(run.checkpoints, {
        "epoch": epoch,
        "step": run.step,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "model_args": run.model_args,
        "config": run.cfg_dict,
        "history": run.history,
        "best": dict(best),
        "plateau": dict(run.plateau),
        "stopped": run.stopped,
        "stop_reason": run.stop_reason,
        "world_size": comm.size,
        "rng": rng_states,
        "best_values": rank_best_values,
    })
    if run.stopped:
        print(f"stopped at step {run.step}: {run.stop_reason}; keeping evaluation {best['evaluation']} "
              f"(step {best['step']}, validation NDCG@{run.tc.eval_k} {best['ndcg']:.4f})", flush=True)


def _result(run: Training) -> dict[str, Any]:
    """What :func:`train_fn` returns (see there)."""
    tc, comm, best, stop_reason = run.tc, run.comm, run.best, run.stop_reason
    checksum = state_checksum(run.model.state_dict())
    result = {"rank": comm.rank, "size": comm.size, "checksum": checksum, "steps": run.step,
              "rank_checksums": comm.allgather_object(checksum)}
    if comm.is_main:
        if run.best_state is None:
            raise DataQualityError(f"training ran no step (train.max_steps={tc.max_steps}, train.epochs={tc.epochs}, "
                                   f"resumed after pass {run.resumed_from})")
        result.update(state_dict=run.best_state, model_args=run.model_args, history=run.history,
                      best_evaluation=best["evaluation"], best_epoch=best["epoch"], best_step=best["step"],
                      stopped_early=stop_reason.startswith("no gain") or run.plateau.get("cooldown_by") == "validation",
                      stop_reason=stop_reason, user_vector=best.get("user_vector", run.model_args["user_vector"]),
                      resumed_from=run.resumed_from,
                      optimizer_moments=optimizer_moments(run.optimizer, run.model) if tc.warm_optimizer else None)
    return result


def progress_bar(desc: str, initial: int, total: int, enabled: bool, stream=None):
    """tqdm over optimiser steps, on rank 0 only (``enabled``).

    Where the stream is a log rather than a terminal (Spark executors, Horovod's forwarded
    output, a redirected `make demo`) every refresh is a new line, so at most one every
    PROGRESS_LOG_INTERVAL_S there: tqdm's monitor thread would otherwise force a refresh every
    ``maxinterval`` (10 s) once its dynamic ``miniters`` exceeds 1, and a ``set_postfix`` with its
    default refresh would print at every step; the caller sets the postfix with refresh=False.
    """
    stream = stream if stream is not None else sys.stderr
    interval = 2 if stream.isatty() else PROGRESS_LOG_INTERVAL_S
    return tqdm(desc=desc, unit="step", disable=not enabled, initial=initial, total=total, file=stream,
                mininterval=interval, maxinterval=max(interval, 10), miniters=1)


def log_evaluation(client, run_id: str, entry: dict[str, float]) -> None:
    """One evaluation's metrics on the MLflow run, at its optimiser step (and its pass)."""
    step = int(entry["step"])
    for key, value in entry.items():
        if key not in ("evaluation", "step"):
            client.log_metric(run_id, key, float(value), step=step)


def _mlflow_client(tracking_uri: str | None):
    # Here, not at the top: only rank 0 logs; the other training processes, which import this
    # module to run train_fn, never load mlflow (2 s).
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri or None)
