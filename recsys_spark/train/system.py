"""The training process's own set-up: its collective, threads and CPUs, device, mixed precision and heap.

:func:`~recsys_spark.train.loop.train_fn` calls these once per rank, before and after the loop.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys

import torch

from recsys_spark.errors import DataQualityError
from recsys_spark.train.collective import Collective, HorovodCollective, SingleProcess, TorchCollective

# Which collective each launcher's processes use ("horovod" also serves `horovodrun`).
BACKENDS = {"horovod_spark": "horovod", "torch_distributor": "torch", "local": "single"}
# Allocations from this size up get their own mmap and go back to the OS when freed.
MMAP_THRESHOLD_BYTES = 4 << 20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


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
