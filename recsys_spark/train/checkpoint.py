"""Checkpoints: what a rank saves after each pass and reads back to resume, warm-start or serve.

A checkpoint holds the weights, the model's constructor arguments (:func:`model_args_from`), the
optimiser, scheduler and scaler states, every rank's random states and the run's progress, so a
resumed run continues exactly as an uninterrupted one. Files are written atomically (a
``.partial`` file, then a rename), locally or under a URI.
"""

from __future__ import annotations

import hashlib
import io as _bytes_io
import random
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import Tensor, nn

from recsys_spark import io, schema
from recsys_spark.config import TRAINING_USER_VECTOR, TrainConfig
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.train.collective import Collective

LAST_CHECKPOINT = "last.pt"
# The weights of the best evaluation so far (rank 0), rewritten at every new best.
BEST_WEIGHTS = "best.pt"
# train.mode=incremental: the parent's weights grown to this run's vocabulary (written by the
# train stage before it launches the ranks; see models/growth.py).
WARM_START = "warm_start.pt"


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
