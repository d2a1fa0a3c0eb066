"""The data-parallel training loop: one function, run once per rank, whatever launched it.

:func:`train_fn` is what Horovod on Spark, ``horovodrun``, Spark's ``TorchDistributor`` and the
in-process launcher all run; the only difference between them is the
:class:`~recsys_spark.train.collective.Collective` it builds. Every side effect (progress,
MLflow metrics, checkpoints) happens on rank 0 only, behind one ``is_main`` flag.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import io as _bytes_io
import math
import os
import random
import resource
import socket
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import Tensor, nn
from tqdm import tqdm

from recsys_spark import io
from recsys_spark import schema
from recsys_spark.config import TRAINING_USER_VECTOR, TrainConfig, from_dict
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.metrics import batch_metrics
from recsys_spark.models import ranking
from recsys_spark.models.two_tower import TwoTowerModel
from recsys_spark.train import data
from recsys_spark.train.collective import Collective, HorovodCollective, SingleProcess, TorchCollective
from recsys_spark.train.loss import RetrievalTask, event_weight_table, popularity, resolve_loss

EVAL_BLOCK_ROWS = 256
PROGRESS_LOG_INTERVAL_S = 30
# The most memory a rank's shard of training windows may take to be shuffled fully in memory
# (train/data.py TrainWindows); a larger shard is streamed through a buffer of this size.
SHUFFLE_MEMORY_MB = 4096
# z of a two-sided 95% normal interval: the half-widths each evaluation logs.
Z95 = 1.959964
LAST_CHECKPOINT = "last.pt"
# The weights of the best evaluation so far (rank 0), rewritten at every new best.
BEST_WEIGHTS = "best.pt"
# train.mode=incremental: the parent's weights grown to this run's vocabulary (written by the
# train stage before it launches the ranks; see models/growth.py).
WARM_START = "warm_start.pt"
# Which collective each launcher's processes use ("horovod" also serves `horovodrun`).
BACKENDS = {"horovod_spark": "horovod", "torch_distributor": "torch", "local": "single"}


def make_collective(backend: str, use_gpu: bool = False, horovod_cycle_time_ms: float = 0.0) -> Collective:
    """Args: backend, "horovod", "torch" or "single"; use_gpu (torch: NCCL); horovod_cycle_time_ms
    (horovod: HOROVOD_CYCLE_TIME, 0 leaves Horovod's own). Returns: this process's Collective."""
    if backend == "horovod":
        return HorovodCollective(horovod_cycle_time_ms)
    if backend == "torch":
        return TorchCollective(use_gpu=use_gpu)
    if backend == "single":
        return SingleProcess()
    raise ValueError(f"unknown collective backend {backend!r}; expected horovod, torch or single")


def pin_cpus(local_rank: int, threads: int) -> set[int]:
    """Bind every thread of this process to ``threads`` CPUs of its own, chosen by local rank.

    Local rank r takes CPUs r*threads .. r*threads + threads - 1 (wrapping around) of the ones
    this process may run on. Threads that exist already (Horovod's background thread, gloo's
    I/O loop) are moved too; threads started later inherit the binding.

    Returns:
        The CPUs bound to (:func:`bind_threads` with the earlier affinity undoes it).
    """
    allowed = sorted(os.sched_getaffinity(0))
    start = (local_rank * threads) % len(allowed)
    chosen = {allowed[(start + i) % len(allowed)] for i in range(min(threads, len(allowed)))}
    bind_threads(chosen)
    return chosen


def bind_threads(cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of this process to ``cpus``."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that just ended, or not ours to move
            pass


def pick_device(setting: str, local_rank: int) -> torch.device:
    """``train.device``: "cpu", "cuda" (the GPU of this local rank) or "auto" (cuda when present)."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DataQualityError("train.device=cuda but torch sees no GPU on this worker")
    # One GPU per process: local rank r pins GPU r of its machine.
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def amp_settings(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed). bf16 needs no loss scaling; fp16 does."""
    if not enabled or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


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
        return _train(cfg_dict, comm, run_id, tracking_uri, on_checkpoint)
    finally:
        comm.shutdown()
        if previous_cpus is not None:
            bind_threads(previous_cpus)


def _train(cfg_dict: dict[str, Any], comm: Collective, run_id: str | None, tracking_uri: str | None,
           on_checkpoint: Callable[[int], None] | None) -> dict[str, Any]:
    cfg = from_dict(cfg_dict)
    tc = cfg.train
    rank, size, is_main = comm.rank, comm.size, comm.is_main
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

    model = TwoTowerModel(**model_args)
    checkpoints = cfg.paths.resolve("checkpoints")
    warm: dict[str, Any] = {}
    if tc.mode == "incremental":
        # Rank 0 reads the grown parent and hands it over; a resumed run overwrites it below.
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
    if is_main:
        print("recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()), flush=True)

    # batch_size is the batch over all ranks and the learning rate is not scaled by the world
    # size: 1 and N ranks take the same steps with the same rate (RESULTS.md, "The model's recipe").
    optimizer = torch.optim.AdamW(task.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if warm.get("moments"):
        restore_moments(optimizer, model, warm["moments"])
    train_path = tc.windows_path or io.feature_path(features, "train")
    windows = data.TrainWindows(train_path, rank, size, recipe["rank_batch"], SHUFFLE_MEMORY_MB)
    # Steps per pass as if the shards were even (uneven shards stop a little earlier).
    steps_per_pass = math.ceil(windows.total_rows / tc.batch_size)
    total_steps = min(tc.max_steps, tc.epochs * steps_per_pass)
    # The schedule's state: wsd's cool-down (where it starts and how long it lasts), and the
    # plateau scale of cosine/constant (1, then plateau_factor after each plateau).
    plateau = {"scale": 1.0, "decays": 0, "cooldown_start": -1, "cooldown_steps": 0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda at: lr_factor(at, tc, total_steps, plateau) * plateau["scale"]
    )
    # hvd.DistributedOptimizer (made below, after the checkpoint is restored) wraps the optimizer
    # in a new object, so the scheduler never sees its step() and warns on every epoch that it
    # runs first. It does not: the scheduler only counts steps, which stay in order.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None

    history: list[dict[str, float]] = []
    # This rank's per-user NDCG of the best evaluation so far, for the paired gain's interval.
    best_values: dict[str, np.ndarray] = {}
    best_state: dict[str, Tensor] | None = None
    best: dict[str, Any] = {"evaluation": 0, "epoch": 0, "step": 0, "ndcg": float("-inf"), "bad_evaluations": 0,
                            "user_vector": model_args["user_vector"]}
    step, first_epoch, stopped, stop_reason = 0, 1, False, ""
    resumed_from = 0
    if tc.resume:
        # Rank 0 reads the checkpoint and hands it to every rank: on a cluster only the
        # checkpoint store is shared, and every rank needs its own RNG states back.
        checkpoint = read_on_main(comm, lambda: load_checkpoint(checkpoints))
        if checkpoint is not None:
            check_resumable(checkpoint, model_args, size, checkpoints)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if scaler is not None and checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
            restore_rng(checkpoint["rng"][rank], negatives_rng)
            if checkpoint.get("best_values") and checkpoint["best_values"][rank] is not None:
                best_values = {"ndcg": checkpoint["best_values"][rank]}
            history = list(checkpoint["history"])
            step, resumed_from = int(checkpoint["step"]), int(checkpoint["epoch"])
            first_epoch = resumed_from + 1
            best = dict(checkpoint["best"])
            plateau.update(checkpoint.get("plateau", {}))
            stopped, stop_reason = bool(checkpoint.get("stopped", False)), checkpoint.get("stop_reason", "")
            if is_main and best["evaluation"]:
                best_state = read_checkpoint(checkpoints, BEST_WEIGHTS)["model"]
            if is_main:
                print(f"resuming after epoch {resumed_from} from {checkpoints}/{LAST_CHECKPOINT}", flush=True)
        elif is_main:
            print(f"train.resume: no checkpoint under {checkpoints}; starting from scratch", flush=True)
    module, optimizer = comm.distribute(task, optimizer, device)

    client = _mlflow_client(tracking_uri) if is_main and run_id else None
    if client is not None:
        for past in history:  # a resumed run's curve starts at its first evaluation, like an uninterrupted one
            log_evaluation(client, run_id, past)
    params = [p for p in task.parameters() if p.requires_grad]

    # What the steps since the last evaluation did: summed on every rank, all-reduced at the next.
    since = Accumulated()
    # Under user_vector=auto every evaluation ranks the validation users in every mode and keeps
    # the best (mode, step): the checkpoint is chosen on the vector that will be served.
    modes = ranking.USER_VECTORS if tc.user_vector == "auto" else (tc.user_vector,)

    def evaluate(epoch: int) -> None:
        """Validate, append to the history, log, keep the best weights, decide on a plateau."""
        nonlocal best_state, best_values, stopped, stop_reason
        train_s = time.perf_counter() - since.started
        totals = comm.allreduce(
            torch.tensor([since.loss_sum, since.targets, since.windows, since.wait_s / max(train_s, 1e-9),
                          since.norm_sum, since.batches], dtype=torch.float64),
        )
        if not history and totals[2] == 0:
            raise DataQualityError(
                f"no training windows reached the {size} rank(s): is {train_path} empty, or split "
                "into fewer row groups than train.num_proc?"
            )
        # Every rank ranks its slice of the validation users; the sums are all-reduced, so
        # every rank sees the same figures and takes the same decisions.
        scores = validation_scores(model, validation, tc.eval_k, comm, device, modes,
                                   best_values.get("ndcg"))
        mode = max(modes, key=lambda m: scores[m]["ndcg"])  # ties: the first of USER_VECTORS
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
            "lr": float(scheduler.get_last_lr()[0]),
            "train_s": train_s,
            "peak_rss_mb": float(peak_rss[0]),
        }
        # The noise to read a gain against (absent before the first best, or below 2 users).
        metrics.update({key: chosen[width] for key, width in (("val_ndcg_half_width", "half_width"),
                                                              ("val_gain_half_width", "gain_half_width"))
                        if not math.isnan(chosen[width])})
        if len(modes) > 1:
            metrics.update({f"{metric_key('val_ndcg', tc.eval_k)}.user_vector_{m}": scores[m]["ndcg"] for m in modes})
        entry = {"evaluation": len(history) + 1, "epoch": epoch, "step": step, **metrics}
        history.append(entry)
        if chosen["ndcg"] > best["ndcg"] + tc.min_delta:
            best.update(evaluation=entry["evaluation"], epoch=epoch, step=step, ndcg=chosen["ndcg"],
                        bad_evaluations=0, user_vector=mode)
            best_values = {"ndcg": chosen["values"]}
            if is_main:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                # The weights with the user-vector mode they were chosen in: what would be served.
                served_args = {**model_args, "user_vector": mode}
                save_weights(checkpoints, BEST_WEIGHTS, {"model": best_state, "model_args": served_args,
                                                         "config": cfg_dict, "best": dict(best)})
        else:
            best["bad_evaluations"] += 1
        plateaued = step < total_steps and plateau_reached(tc, best, step, chosen["ndcg"], chosen["gain_half_width"])
        if plateaued and tc.lr_schedule == "wsd":
            if plateau["cooldown_start"] < 0:
                start_cooldown(plateau, step, math.ceil(tc.cooldown_share * step), total_steps)
                if is_main:
                    print(f"plateau at step {step}: cooling the learning rate down to {tc.min_lr_ratio} x its peak "
                          f"over {plateau['cooldown_steps']} steps (train.cooldown_share={tc.cooldown_share})",
                          flush=True)
        elif plateaued:
            if plateau["decays"] < tc.plateau_decays:
                plateau["decays"] += 1
                plateau["scale"] *= tc.plateau_factor
                for group in scheduler.optimizer.param_groups:  # from the next step on, not the one after
                    group["lr"] *= tc.plateau_factor
                best["bad_evaluations"] = 0
                if is_main:
                    print(f"plateau at step {step}: learning rate x{tc.plateau_factor} "
                          f"({plateau['decays']} of train.plateau_decays={tc.plateau_decays})", flush=True)
            else:
                stopped, stop_reason = True, (f"no gain in validation NDCG@{tc.eval_k} for "
                                              f"{best['bad_evaluations']} evaluation(s)")
        if is_main:
            shown = {k: v for k, v in metrics.items() if ".user_vector_" not in k}
            by_mode = "; " + ", ".join(f"{m} {scores[m]['ndcg']:.4f}" for m in modes) if len(modes) > 1 else ""
            print(f"step {step} (pass {epoch}): " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items())
                  + f" [{mode}{by_mode}]", flush=True)
            if client is not None:
                log_evaluation(client, run_id, entry)
        since.reset()

    for epoch in range(first_epoch, tc.epochs + 1):
        if stopped or step >= tc.max_steps:
            break
        module.train()
        since.reset()
        progress = progress_bar(f"pass {epoch}", step, total_steps, enabled=is_main)
        with windows.pass_batches(seed=tc.seed * 1000 + epoch + 7919 * rank) as batches:
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
            while step < tc.max_steps and not stopped:
                unread = False
                if int(everyone_has().item()) != 1:
                    break
                batch = tuple(t.to(device, non_blocking=True) for t in upcoming)
                upcoming, everyone_has = fetch()
                unread = True
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, n_targets = module(*batch, generator=negatives_rng)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                norm = comm.step(optimizer, params, tc.grad_clip, scaler)
                scheduler.step()
                step += 1
                batch_loss = float(loss.detach())
                since.add(batch_loss, n_targets, batch[0].shape[0], norm)
                progress.update(1)
                if is_main:
                    progress.set_postfix(loss=f"{batch_loss:.3f}", refresh=False,
                                         ex_s=f"{since.windows * size / (time.perf_counter() - since.started):.0f}")
                if tc.lr_schedule == "wsd" and budget_cooldown(plateau, step, tc.cooldown_share, total_steps) and is_main:
                    print(f"step {step}: the last {plateau['cooldown_steps']} steps of the budget cool the learning "
                          f"rate down (train.cooldown_share={tc.cooldown_share})", flush=True)
                if step < tc.max_steps and cooldown_done(plateau, step):
                    stopped, stop_reason = True, f"the learning rate's cool-down ended at step {step}"
                elif tc.eval_every_steps and step % tc.eval_every_steps == 0 and step < tc.max_steps:
                    evaluate(epoch)
            if unread:
                everyone_has()
        progress.close()
        if since.batches or not history:
            evaluate(epoch)
        if not stopped and step >= tc.max_steps:
            stopped, stop_reason = True, f"reached train.max_steps={tc.max_steps}"

        # Each rank's RNG states go into rank 0's checkpoint, so a resumed run draws the same
        # negatives and dropout masks as an uninterrupted one.
        rng_states = comm.allgather_object(rng_state(negatives_rng))
        # So is each rank's per-user NDCG of the best evaluation (the paired gain's interval).
        rank_best_values = comm.allgather_object(best_values.get("ndcg"))
        if is_main:
            save_checkpoint(checkpoints, {
                "epoch": epoch,
                "step": step,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "model_args": model_args,
                "config": cfg_dict,
                "history": history,
                "best": dict(best),
                "plateau": dict(plateau),
                "stopped": stopped,
                "stop_reason": stop_reason,
                "world_size": size,
                "rng": rng_states,
                "best_values": rank_best_values,
            })
            if stopped:
                print(f"stopped at step {step}: {stop_reason}; keeping evaluation {best['evaluation']} "
                      f"(step {best['step']}, validation NDCG@{tc.eval_k} {best['ndcg']:.4f})", flush=True)
        if on_checkpoint is not None:
            on_checkpoint(epoch)

    checksum = state_checksum(model.state_dict())
    result = {"rank": rank, "size": size, "checksum": checksum, "steps": step,
              "rank_checksums": comm.allgather_object(checksum)}
    if is_main:
        if best_state is None:
            raise DataQualityError(f"training ran no step (train.max_steps={tc.max_steps}, train.epochs={tc.epochs}, "
                                   f"resumed after pass {resumed_from})")
        result.update(state_dict=best_state, model_args=model_args, history=history,
                      best_evaluation=best["evaluation"], best_epoch=best["epoch"], best_step=best["step"],
                      stopped_early=stop_reason.startswith("no gain") or plateau.get("cooldown_by") == "validation",
                      stop_reason=stop_reason, user_vector=best.get("user_vector", model_args["user_vector"]),
                      resumed_from=resumed_from,
                      optimizer_moments=optimizer_moments(optimizer, model) if tc.warm_optimizer else None)
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


def optimizer_moments(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, dict[str, Any]]:
    """AdamW's state of each model parameter (by state-dict key, CPU copies) after the last
    step: what an incremental child continues from (``train.warm_optimizer``)."""
    moments = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param)
        if state and "exp_avg" in state:
            moments[name] = {"step": float(state["step"]), "exp_avg": state["exp_avg"].detach().cpu().clone(),
                             "exp_avg_sq": state["exp_avg_sq"].detach().cpu().clone()}
    return moments


def restore_moments(optimizer: torch.optim.Optimizer, model: nn.Module, moments: dict[str, dict[str, Any]]) -> int:
    """Load :func:`optimizer_moments` (grown by ``models.growth.grow_moments``) into a fresh
    AdamW over ``model``'s parameters; a parameter without moments of its shape starts fresh.

    Returns:
        how many parameters got their moments back.
    """
    restored = 0
    for name, param in model.named_parameters():
        entry = moments.get(name)
        if entry is None or entry["exp_avg"].shape != param.shape:
            continue
        optimizer.state[param] = {
            "step": torch.tensor(float(entry["step"])),
            "exp_avg": entry["exp_avg"].to(param.device, param.dtype).clone(),
            "exp_avg_sq": entry["exp_avg_sq"].to(param.device, param.dtype).clone(),
        }
        restored += 1
    return restored


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


def log_evaluation(client, run_id: str, entry: dict[str, float]) -> None:
    """One evaluation's metrics on the MLflow run, at its optimiser step (and its pass)."""
    step = int(entry["step"])
    for key, value in entry.items():
        if key not in ("evaluation", "step"):
            client.log_metric(run_id, key, float(value), step=step)


# Allocations from this size up get their own mmap and go back to the OS when freed.
MMAP_THRESHOLD_BYTES = 4 << 20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def lr_factor(step: int, tc: TrainConfig, total_steps: int, state: dict[str, Any] | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the peak.

    A linear warm-up over ``tc.warmup_steps``; then
      "constant": 1;
      "cosine": a half cosine from 1 down to ``tc.min_lr_ratio`` at ``total_steps`` (it stays
        there if more steps run);
      "wsd": 1 until the cool-down starts (``state["cooldown_start"]``, set by a plateau or the
        budget: :func:`start_cooldown`), then linear down to ``tc.min_lr_ratio`` over
        ``state["cooldown_steps"]`` steps.
    """
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return 1.0
    if tc.lr_schedule == "wsd":
        start = -1 if state is None else state["cooldown_start"]
        if start < 0 or step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, state["cooldown_steps"]))
        return 1.0 - (1.0 - tc.min_lr_ratio) * progress
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    return tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def plateau_reached(tc: TrainConfig, best: dict[str, Any], step: int, ndcg: float, gain_half_width: float) -> bool:
    """Whether validation has plateaued: ``tc.patience`` evaluations without a new best, and either
    ``tc.patience_steps`` steps since the best or this evaluation's NDCG below the best by more than
    the 95% half-width of their paired difference (a decline that is not noise: the model
    overfits, and waiting longer only wastes steps). A nan half-width never counts as a decline."""
    if tc.patience <= 0 or best["bad_evaluations"] < tc.patience:
        return False
    return step - best["step"] >= tc.patience_steps or ndcg < best["ndcg"] - gain_half_width


def start_cooldown(state: dict[str, Any], step: int, length: int, total_steps: int, by: str = "validation") -> None:
    """Start wsd's cool-down at ``step`` for ``length`` steps, never past ``total_steps``."""
    state["cooldown_start"] = step
    state["cooldown_steps"] = max(0, min(length, total_steps - step))
    state["cooldown_by"] = by


def budget_cooldown(state: dict[str, Any], step: int, share: float, total_steps: int) -> bool:
    """Start the cool-down when the budget's last ``share`` begins and none has started; True if it did."""
    length = math.ceil(share * total_steps)
    if state["cooldown_start"] >= 0 or step < total_steps - length:
        return False
    start_cooldown(state, step, total_steps - step, total_steps, by="budget")
    return True


def cooldown_done(state: dict[str, Any], step: int) -> bool:
    """Whether a cool-down has started and run its course by ``step``."""
    return state["cooldown_start"] >= 0 and step >= state["cooldown_start"] + state["cooldown_steps"]


def resolve_recipe(tc: TrainConfig, num_items: int, size: int) -> dict[str, Any]:
    """What the ``auto`` settings become on this catalogue and this world size.

    Returns:
        {"loss": "full" | "sampled", "target_horizon": int, "rank_batch": windows per rank and step}.

    Raises:
        InputError: ``train.batch_size`` is not a multiple of the world size.
    """
    if tc.batch_size % size:
        raise InputError(f"train.batch_size ({tc.batch_size}) is the batch over all ranks: it must be a multiple of "
                         f"the {size} training processes")
    return {"loss": resolve_loss(tc.loss, num_items, tc.full_softmax_max_items),
            "target_horizon": tc.target_horizon, "rank_batch": tc.batch_size // size}


def _glibc():
    """The C library's handle when it is glibc (mallopt, malloc_trim), else None (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_heap_growth() -> None:
    """Fix glibc's mmap threshold so the large, short-lived tensors of a step never stay on the heap.

    By default glibc raises the threshold (up to 32 MiB) each time a large block is freed, after
    which the per-step logits and their gradients are carved from the heap, fragment it, and the
    peak resident set creeps up epoch after epoch (+40-60 MiB over 3 epochs in
    benchmarks/train_bench.py); with a fixed threshold it stays flat. No-op off glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the OS (glibc's malloc_trim), once
    per epoch: what the epoch's reader and validation freed does not stay resident. No-op off glibc.
    """
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rng_state(negatives_rng: torch.Generator) -> dict[str, Any]:
    """Every random source of this rank: python, numpy, torch (CPU and CUDA), the negatives."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "negatives": negatives_rng.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any], negatives_rng: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    negatives_rng.set_state(state["negatives"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def read_on_main(comm: Collective, read: Callable[[], Any]) -> Any:
    """``read()`` on rank 0, its value on every rank.

    A read that fails on rank 0 fails every rank (rank 0 with its own error, the others with its
    message) instead of leaving them waiting in a broadcast rank 0 never joins.
    """
    outcome: tuple[bool, Any] = (True, None)
    if comm.is_main:
        try:
            outcome = (True, read())
        except Exception as exc:  # every rank must reach the broadcast below
            comm.broadcast_object((False, f"{type(exc).__name__}: {exc}"))
            raise
    ok, value = comm.broadcast_object(outcome)
    if not ok:
        raise InputError(f"rank 0 could not read its input: {value}")
    return value


def check_resumable(checkpoint: dict[str, Any], model_args: dict[str, Any], size: int, directory: str) -> None:
    """Raise InputError when a checkpoint cannot continue this run (other model or world size)."""
    if checkpoint.get("model_args") != model_args:
        raise InputError(
            f"train.resume: the checkpoint in {directory} was made for a different model "
            f"({checkpoint.get('model_args')} vs {model_args}); move it away or set train.resume=false"
        )
    if int(checkpoint.get("world_size", size)) != size:
        raise InputError(
            f"train.resume: the checkpoint in {directory} was made by {checkpoint['world_size']} rank(s), "
            f"this run has {size}; resume with train.num_proc={checkpoint['world_size']}"
        )


def metric_key(name: str, k: int) -> str:
    """``val_ndcg_at_10``: MLflow metric names may not contain ``@``."""
    return f"{name}_at_{k}"


def model_args_from(metadata: dict[str, Any], tc: TrainConfig) -> dict[str, Any]:
    """The TwoTowerModel constructor arguments from features/metadata.json and the train config."""
    missing = [k for k in ("num_items", "num_categories", "num_brands", "num_price_buckets", "max_seq_len")
               if k not in metadata]
    if missing:
        raise DataQualityError(f"features metadata.json lacks {', '.join(missing)}")
    return {
        "num_items": int(metadata["num_items"]),
        "num_categories": int(metadata["num_categories"]),
        "num_brands": int(metadata["num_brands"]),
        "num_price_buckets": int(metadata["num_price_buckets"]),
        "num_event_codes": int(metadata.get("num_event_codes", schema.NUM_EVENT_CODES)),
        "num_gap_buckets": int(metadata.get("num_gap_buckets", schema.NUM_GAP_BUCKETS)),
        "max_seq_len": int(metadata["max_seq_len"]),
        "dim": tc.embedding_dim,
        "num_layers": tc.num_layers,
        "num_heads": tc.num_heads,
        "dropout": tc.dropout,
        "use_user_features": tc.user_features,
        "use_interest_pooling": tc.interest_pooling,
        "user_vector": TRAINING_USER_VECTOR if tc.user_vector == "auto" else tc.user_vector,
    }


@torch.no_grad()
def validation_lists(model: TwoTowerModel, rows: data.EvalRows, k: int, device: torch.device | None = None,
                     mode: str | None = None) -> np.ndarray:
    """Every row's top k through ``models.ranking`` (the path evaluation and scoring take): all
    items ranked, pad, OOV and the row's seen items excluded.

    Args:
        device: where the model lives (CPU when None); scores are computed there.
        mode: a ``ranking.USER_VECTORS`` entry, or None for the model's own.

    Returns:
        int64 [R, k] item indices, best first, schema.EMPTY_SLOT in empty slots.
    """
    was_training = model.training
    model.eval()
    item_vecs = model.item_vectors()
    top, _ = ranking.rank_histories(model, [rows.hist_items, rows.hist_events, rows.hist_gaps], item_vecs, k,
                                    ranking.pairs_of(rows.seen_items), ranking.blocked_items(item_vecs.shape[0]),
                                    EVAL_BLOCK_ROWS, mode, device)
    model.train(was_training)
    return top


def ranking_values(model: TwoTowerModel, rows: data.EvalRows, k: int, device: torch.device | None = None,
                   mode: str | None = None) -> dict[str, np.ndarray]:
    """Per-user NDCG@k and Recall@k of :func:`validation_lists`, for the rows with a target.

    Returns:
        {"ndcg": float64 [R'], "recall": float64 [R']}, R' the rows with at least one target.
    """
    counted = np.flatnonzero([len(t) > 0 for t in rows.target_items])
    if len(counted) == 0:
        return {"ndcg": np.zeros(0), "recall": np.zeros(0)}
    # Only the rows with a target are ranked: the others would be ranked for nothing.
    targets = [rows.target_items[i] for i in counted]
    kept = data.EvalRows(rows.hist_items[counted], rows.hist_events[counted], rows.hist_gaps[counted],
                         [rows.seen_items[i] for i in counted], targets)
    per_user = batch_metrics(validation_lists(model, kept, k, device, mode), targets, [k])
    return {"ndcg": np.asarray(per_user[f"ndcg@{k}"], dtype=np.float64),
            "recall": np.asarray(per_user[f"recall@{k}"], dtype=np.float64)}


def validation_scores(model: TwoTowerModel, rows: data.EvalRows, k: int, comm: Collective,
                      device: torch.device | None, modes: tuple[str, ...],
                      best_ndcg: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Validation NDCG@k and Recall@k over every rank's rows, in each user-vector mode.

    Args:
        best_ndcg: this rank's per-user NDCG of the best evaluation so far (same rows, same
            order), for the interval of the paired gain; None before the first.

    Returns:
        {mode: {"ndcg", "recall": means over all ranks' users; "half_width": the 95% normal
        half-width of the NDCG mean; "gain_half_width": that of the mean paired difference to
        ``best_ndcg`` (nan without one); "users": how many; "values": this rank's per-user NDCG}}.
    """
    values = {mode: ranking_values(model, rows, k, device, mode) for mode in modes}
    sums = []
    for mode in modes:
        ndcg = values[mode]["ndcg"]
        gain = ndcg - best_ndcg if best_ndcg is not None and len(best_ndcg) == len(ndcg) else np.zeros(0)
        sums += [ndcg.sum(), (ndcg ** 2).sum(), values[mode]["recall"].sum(), len(ndcg),
                 gain.sum(), (gain ** 2).sum(), len(gain)]
    totals = comm.allreduce(torch.tensor(sums, dtype=torch.float64)).numpy().reshape(len(modes), 7)
    out = {}
    for mode, (s, s2, r, n, g, g2, gn) in zip(modes, totals):
        out[mode] = {"ndcg": s / n if n else 0.0, "recall": r / n if n else 0.0, "users": int(n),
                     "half_width": half_width(s, s2, n), "gain_half_width": half_width(g, g2, gn),
                     "values": values[mode]["ndcg"]}
    return out


def half_width(total: float, squares: float, n: float) -> float:
    """Z95 x the standard error of a mean from its sum and sum of squares (nan below 2 values)."""
    if n < 2:
        return float("nan")
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    return float(Z95 * math.sqrt(variance / n))


def state_checksum(state: dict[str, Tensor]) -> str:
    """sha256 over every tensor's bytes, in key order: equal weights give equal checksums."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def save_weights(directory: str, name: str, payload: dict[str, Any]) -> None:
    """``torch.save(payload)`` to ``<directory>/<name>`` (written atomically, like checkpoints)."""
    buffer = _bytes_io.BytesIO()
    torch.save(payload, buffer)
    _write_bytes(directory, name, buffer.getvalue())


def save_checkpoint(directory: str, checkpoint: dict[str, Any]) -> str:
    """``torch.save`` to ``<directory>/epoch_<n>.pt`` and ``last.pt`` (local path or URI).

    Each file is written under a temporary name and then renamed, so a run killed while
    saving leaves the previous ``last.pt`` intact rather than a truncated one.

    Returns:
        the path of the epoch's file.
    """
    buffer = _bytes_io.BytesIO()
    torch.save(checkpoint, buffer)
    written = [_write_bytes(directory, name, buffer.getvalue())
               for name in (epoch_file(checkpoint["epoch"]), LAST_CHECKPOINT)]
    return written[0]


def _write_bytes(directory: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``<directory>/<name>`` through a ``.partial`` file and a rename."""
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(directory))
    filesystem.create_dir(inner, recursive=True)
    path = inner.rstrip("/") + "/" + name
    partial = path + ".partial"
    with filesystem.open_output_stream(partial) as out:
        out.write(data)
    filesystem.move(partial, path)
    return path


def read_checkpoint(directory: str, name: str = LAST_CHECKPOINT) -> dict[str, Any]:
    """Load ``<directory>/<name>`` (CPU tensors).

    Raises:
        InputError: the file is missing or unreadable.
    """
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(directory))
    path = inner.rstrip("/") + "/" + name
    try:
        with filesystem.open_input_stream(path) as stream:
            payload = stream.read()
        # weights_only=False: the checkpoint holds RNG states (tuples, numpy arrays) we wrote.
        return torch.load(_bytes_io.BytesIO(payload), map_location="cpu", weights_only=False)
    except (FileNotFoundError, OSError, RuntimeError, EOFError) as exc:
        raise InputError(f"checkpoint {directory}/{name} cannot be read: {exc}") from None


def load_checkpoint(directory: str) -> dict[str, Any] | None:
    """The latest checkpoint under ``directory``, or None when there is none."""
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(directory))
    info = filesystem.get_file_info(inner.rstrip("/") + "/" + LAST_CHECKPOINT)
    if info.type == pafs.FileType.NotFound:
        return None
    return read_checkpoint(directory)


def _mlflow_client(tracking_uri: str | None):
    # Here, not at the top: only rank 0 logs; the other training processes, which import this
    # module to run train_fn, never load mlflow (2 s).
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri or None)
