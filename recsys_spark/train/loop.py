"""The data-parallel training loop, run once per Horovod rank (in a Spark task or in-process).

Every side effect (progress bar, MLflow metrics, checkpoints) happens on rank 0 only,
behind one ``is_main`` flag.
"""

from __future__ import annotations

import hashlib
import io as _bytes_io
import random
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys_spark import io
from recsys_spark import schema as S
from recsys_spark.config import TrainConfig, from_dict
from recsys_spark.errors import DataQualityError
from recsys_spark.models.two_tower import TwoTowerModel
from recsys_spark.train import data
from recsys_spark.train.loss import RetrievalTask, event_weight_table, popularity

EVAL_BLOCK_ROWS = 256
SHUFFLE_BUFFER_BATCHES = 4


def train_fn(cfg_dict: dict[str, Any], run_id: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """Train the two-tower model on this rank's shard; rank 0 returns the best weights.

    Args:
        cfg_dict: the resolved config, ``Config.to_dict()`` (plain data, so it pickles to tasks).
        run_id: the MLflow run that rank 0 logs per-epoch metrics to; None logs nothing.
        tracking_uri: the MLflow store of ``run_id``.

    Returns:
        rank 0: {"state_dict": best weights (CPU tensors), "model_args", "history" (one dict
        per epoch), "best_epoch", "rank", "checksum", "steps"}; other ranks: {"rank",
        "checksum" (sha256 of the final weights), "steps"}.
    """
    import horovod.torch as hvd
    from tqdm import tqdm

    cfg = from_dict(cfg_dict)
    tc = cfg.train
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    is_main = rank == 0
    torch.set_num_threads(tc.threads_per_proc)
    random.seed(tc.seed + rank)
    np.random.seed(tc.seed + rank)
    torch.manual_seed(tc.seed)  # the same initial weights everywhere (rank 0's are broadcast anyway)
    negatives_rng = torch.Generator().manual_seed(tc.seed + 1000 * (rank + 1))

    features = cfg.paths.resolve("features")
    metadata = data.read_metadata(features)
    item_vocab = data.read_item_vocab(io.feature_path(features, "item_vocab"))
    validation = data.read_eval_rows(io.feature_path(features, "validation"), rank, size)
    model_args = model_args_from(metadata, tc)
    item_features = data.item_feature_arrays(item_vocab, model_args["num_items"])

    model = TwoTowerModel(**model_args)
    model.set_item_features(
        torch.from_numpy(item_features[S.CATEGORY_IDX]),
        torch.from_numpy(item_features[S.BRAND_IDX]),
        torch.from_numpy(item_features[S.PRICE_BUCKET]),
    )
    task = RetrievalTask(
        model,
        item_prob=popularity(torch.from_numpy(item_features[S.TRAIN_COUNT])),
        event_weights=event_weight_table(tc.event_weights),
        uniform_negatives=tc.uniform_negatives,
        target_horizon=tc.target_horizon,
        skip_seen_targets=tc.skip_seen_targets,
    )

    # The effective batch is size x batch_size windows, so the learning rate grows with the
    # world size; the linear warm-up keeps the first large steps from diverging.
    peak_lr = tc.lr * size
    optimizer = torch.optim.AdamW(task.parameters(), lr=peak_lr, weight_decay=tc.weight_decay)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=task.named_parameters())
    hvd.broadcast_parameters(task.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    client = _mlflow_client(tracking_uri) if is_main and run_id else None
    train_path = io.feature_path(features, "train")
    history: list[dict[str, float]] = []
    best_state: dict[str, Tensor] | None = None
    best_epoch, best_ndcg, step = 0, float("-inf"), 0

    for epoch in range(1, tc.epochs + 1):
        task.train()
        loss_sum, targets_sum, windows, wait_s = 0.0, 0, 0, 0.0
        started = time.perf_counter()
        progress = tqdm(desc=f"epoch {epoch}/{tc.epochs}", unit="batch", disable=not is_main, mininterval=2)
        with data.train_batches(
            train_path, rank, size, tc.batch_size, seed=tc.seed * 1000 + epoch,
            shuffle_buffer=SHUFFLE_BUFFER_BATCHES * tc.batch_size,
        ) as batches:
            while True:
                fetch_start = time.perf_counter()
                batch = next(batches, None)
                wait_s += time.perf_counter() - fetch_start
                # Shards hold different numbers of batches. Every rank must join every
                # allreduce or the job hangs, so all ranks stop as soon as one runs out.
                have = hvd.allreduce(torch.tensor([int(batch is not None)]), op=hvd.Min, name="have_batch")
                if int(have.item()) == 0:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = peak_lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
                optimizer.zero_grad()
                loss, n_targets = task(*batch, generator=negatives_rng)
                loss.backward()
                # Clip the averaged gradient, not each rank's own: synchronize first, then
                # step without a second allreduce.
                optimizer.synchronize()
                torch.nn.utils.clip_grad_norm_(task.parameters(), tc.grad_clip)
                with optimizer.skip_synchronize():
                    optimizer.step()
                step += 1
                batch_loss = float(loss.detach())
                loss_sum += batch_loss * n_targets
                targets_sum += n_targets
                windows += batch[0].shape[0]
                progress.update(1)
                if is_main:
                    progress.set_postfix(loss=f"{batch_loss:.3f}",
                                         ex_s=f"{windows * size / (time.perf_counter() - started):.0f}")
        progress.close()
        train_s = time.perf_counter() - started
        totals = hvd.allreduce(
            torch.tensor([loss_sum, targets_sum, windows, wait_s / max(train_s, 1e-9)], dtype=torch.float64),
            op=hvd.Sum, name="epoch_totals",
        )
        if epoch == 1 and totals[2] == 0:
            raise DataQualityError(
                f"no training windows reached the {size} rank(s): is {train_path} empty, or split "
                "into fewer row groups than train.num_proc?"
            )

        ndcg, recall = validation_metrics(model, validation, tc.eval_k, hvd)
        metrics = {
            "train_loss": float(totals[0] / max(totals[1], 1)),
            metric_key("val_ndcg", tc.eval_k): ndcg,
            metric_key("val_recall", tc.eval_k): recall,
            "examples_per_s": float(totals[2]) / max(train_s, 1e-9),
            "data_wait_share": float(totals[3]) / size,
            "steps": float(step),
        }
        history.append({"epoch": epoch, **metrics})
        if ndcg >= best_ndcg:  # ties go to the later epoch, which has seen more data
            best_ndcg, best_epoch = ndcg, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if is_main else None

        if is_main:
            print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
            if client is not None:
                for key, value in metrics.items():
                    client.log_metric(run_id, key, value, step=epoch)
            save_checkpoint(
                cfg.paths.resolve("checkpoints"),
                {
                    "epoch": epoch,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "model_args": model_args,
                    "config": cfg_dict,
                    "history": history,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "numpy": np.random.get_state(),
                        "python": random.getstate(),
                        "negatives": negatives_rng.get_state(),
                    },
                },
            )

    result = {"rank": rank, "checksum": state_checksum(model.state_dict()), "steps": step}
    if is_main:
        result.update(state_dict=best_state, model_args=model_args, history=history, best_epoch=best_epoch)
    return result


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
        "num_event_codes": int(metadata.get("num_event_codes", S.NUM_EVENT_CODES)),
        "num_gap_buckets": int(metadata.get("num_gap_buckets", S.NUM_GAP_BUCKETS)),
        "max_seq_len": int(metadata["max_seq_len"]),
        "dim": tc.embedding_dim,
        "num_layers": tc.num_layers,
        "num_heads": tc.num_heads,
        "dropout": tc.dropout,
    }


@torch.no_grad()
def ranking_sums(model: TwoTowerModel, rows: data.EvalRows, k: int) -> tuple[float, float, int]:
    """Full-ranking NDCG@k and Recall@k summed over rows with at least one target.

    Every item is scored; pad, OOV and the row's seen items are excluded. Relevance is binary;
    NDCG's ideal DCG covers min(k, |targets|) positions, Recall@k = hits / |targets|.

    Returns:
        (sum of NDCG@k, sum of Recall@k, number of rows counted).
    """
    was_training = model.training
    model.eval()
    item_vecs = model.item_vectors()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg_sum, recall_sum, counted = 0.0, 0.0, 0
    for start in range(0, len(rows), EVAL_BLOCK_ROWS):
        end = min(start + EVAL_BLOCK_ROWS, len(rows))
        user_vecs = model.user_vectors(
            torch.from_numpy(rows.hist_items[start:end]),
            torch.from_numpy(rows.hist_events[start:end]),
            torch.from_numpy(rows.hist_gaps[start:end]),
        )
        scores = user_vecs @ item_vecs.T
        scores[:, : S.FIRST_ITEM_INDEX] = float("-inf")
        for i, seen in enumerate(rows.seen_items[start:end]):
            scores[i, torch.from_numpy(seen[(seen >= 0) & (seen < scores.shape[1])])] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.numpy()
        for i, targets in enumerate(rows.target_items[start:end]):
            if len(targets) == 0:
                continue
            hits = np.isin(top[i], targets)
            ideal = discounts[: min(k, len(targets))].sum()
            ndcg_sum += float((hits * discounts[: len(hits)]).sum() / ideal)
            recall_sum += float(hits.sum() / len(targets))
            counted += 1
    model.train(was_training)
    return ndcg_sum, recall_sum, counted


def validation_metrics(model: TwoTowerModel, rows: data.EvalRows, k: int, hvd: Any) -> tuple[float, float]:
    """Mean NDCG@k and Recall@k over every rank's validation rows (0.0 when there are none)."""
    ndcg_sum, recall_sum, counted = ranking_sums(model, rows, k)
    totals = hvd.allreduce(torch.tensor([ndcg_sum, recall_sum, counted], dtype=torch.float64),
                           op=hvd.Sum, name="validation_sums")
    n = float(totals[2])
    return (float(totals[0]) / n, float(totals[1]) / n) if n > 0 else (0.0, 0.0)


def state_checksum(state: dict[str, Tensor]) -> str:
    """sha256 over every tensor's bytes, in key order: equal weights give equal checksums."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(directory: str, checkpoint: dict[str, Any]) -> str:
    """``torch.save`` to ``<directory>/epoch_<n>.pt`` and ``last.pt`` (local path or URI).

    Returns:
        the path of the epoch's file.
    """
    import pyarrow.fs as pafs

    buffer = _bytes_io.BytesIO()
    torch.save(checkpoint, buffer)
    filesystem, inner = pafs.FileSystem.from_uri(io.local_uri(directory))
    filesystem.create_dir(inner, recursive=True)
    written = ""
    for name in (f"epoch_{checkpoint['epoch']:03d}.pt", "last.pt"):
        path = inner.rstrip("/") + "/" + name
        with filesystem.open_output_stream(path) as out:
            out.write(buffer.getvalue())
        written = written or path
    return written


def _mlflow_client(tracking_uri: str | None):
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri or None)
