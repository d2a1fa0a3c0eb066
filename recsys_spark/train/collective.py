"""The few collective operations the training loop needs, behind one small interface.

The training function (:func:`recsys_spark.train.loop.train_fn`) is the same whichever
engine runs it; only a :class:`Collective` changes:

* :class:`HorovodCollective`: Horovod on gloo (or NCCL), under ``horovod.spark.run`` or
  ``horovodrun``; gradients are averaged by ``hvd.DistributedOptimizer``.
* :class:`TorchCollective`: ``torch.distributed`` (gloo on CPU, NCCL on GPU), as started by
  Spark's ``TorchDistributor`` or ``torchrun``; gradients are averaged by
  ``DistributedDataParallel`` during ``backward``.
* :class:`SingleProcess`: one process, no communication.

Each offers: rank / size / local_rank, ``allreduce`` (sum, min or max of a small CPU tensor)
and ``allreduce_async`` (the same, started now and waited for later), ``broadcast_object``,
``allgather_object``, ``distribute`` (wrap the module and optimizer, and make every rank start
from rank 0's weights) and ``step`` (average the gradients, clip them, apply the update).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

Op = Literal["sum", "min", "max"]


class Collective(ABC):
    """One rank's view of the data-parallel job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    name: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def allreduce(self, tensor: Tensor, op: Op = "sum") -> Tensor:
        """Args: tensor, a small CPU tensor. Returns: its element-wise sum (min, max) over ranks."""

    def allreduce_async(self, tensor: Tensor, op: Op = "sum") -> Callable[[], Tensor]:
        """Start :meth:`allreduce`; the returned function waits for it and returns the result.

        Every rank must start the same allreduces in the same order, as for :meth:`allreduce`.
        """
        result = self.allreduce(tensor, op)
        return lambda: result

    @abstractmethod
    def broadcast_object(self, obj: Any) -> Any:
        """Returns: rank 0's ``obj`` on every rank (a picklable value)."""

    @abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Returns: every rank's ``obj``, in rank order."""

    def distribute(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                   device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap for data parallelism; afterwards every rank holds rank 0's weights and optimizer state.

        Returns:
            (the module to call forward on, the optimizer to step).
        """
        return module, optimizer

    def step(self, optimizer: torch.optim.Optimizer, params: list[Tensor], max_norm: float,
             scaler: "torch.amp.GradScaler | None" = None) -> float:
        """Average the gradients over ranks, clip their global norm to ``max_norm``, update.

        Clipping must see the averaged gradient (not each rank's own), or ranks would clip
        differently and drift apart.

        Returns:
            the gradient norm before clipping (inf/NaN when an fp16 step overflowed).
        """
        return clip_and_step(optimizer, params, max_norm, scaler)

    def shutdown(self) -> None:
        """Release the communication backend (a no-op where the launcher owns it)."""


class SingleProcess(Collective):
    """Size 1: every collective is the identity."""

    def allreduce(self, tensor: Tensor, op: Op = "sum") -> Tensor:
        return tensor.clone()

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]


class HorovodCollective(Collective):
    """Horovod: ``hvd.init()`` here; ``hvd.DistributedOptimizer`` averages the gradients."""

    name = "horovod"

    def __init__(self, cycle_time_ms: float = 0.0) -> None:
        """Args: cycle_time_ms, HOROVOD_CYCLE_TIME for this process (0: leave Horovod's own)."""
        self.hvd = hvd = init_horovod(cycle_time_ms)
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self._calls = 0

    def _name(self, what: str) -> str:
        # Horovod matches collectives across ranks by name; a counter keeps them distinct.
        self._calls += 1
        return f"{what}.{self._calls}"

    def allreduce(self, tensor: Tensor, op: Op = "sum") -> Tensor:
        return self.hvd.allreduce(tensor, op=self._op(op), name=self._name("allreduce"))

    def allreduce_async(self, tensor: Tensor, op: Op = "sum") -> Callable[[], Tensor]:
        handle = self.hvd.allreduce_async(tensor, op=self._op(op), name=self._name("allreduce"))
        return lambda: self.hvd.synchronize(handle)

    def _op(self, op: Op) -> Any:
        return {"sum": self.hvd.Sum, "min": self.hvd.Min, "max": self.hvd.Max}[op]

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0, name=self._name("broadcast"))

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.hvd.allgather_object(obj, name=self._name("allgather"))

    def distribute(self, module, optimizer, device):
        hvd = self.hvd
        inner = optimizer
        optimizer = hvd.DistributedOptimizer(inner, named_parameters=module.named_parameters())
        # The wrapper is a new optimizer over the same parameter groups with an empty state of its
        # own: a resumed run's restored moments would be lost, and Horovod would take a
        # zero-gradient step to make new ones. It shares the restored state instead.
        optimizer.state = inner.state
        hvd.broadcast_parameters(module.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return module, optimizer

    def step(self, optimizer, params, max_norm, scaler=None):
        # Finish the gradient allreduce first, so clipping sees the averaged gradient; then
        # step without a second allreduce.
        optimizer.synchronize()
        with optimizer.skip_synchronize():
            return clip_and_step(optimizer, params, max_norm, scaler)

    def shutdown(self) -> None:
        self.hvd.shutdown()


def init_horovod(cycle_time_ms: float = 0.0) -> Any:
    """``hvd.init()`` with HOROVOD_CYCLE_TIME = ``cycle_time_ms`` (0: Horovod's own setting).

    The background thread reads its settings when the first ``hvd.init()`` of the process
    starts it; later calls change nothing.

    Returns:
        the ``horovod.torch`` module.
    """
    # Here, not at the top: horovod (2 s) serves the Horovod collective alone; the local and
    # torch.distributed ranks never load it.
    import horovod.torch as hvd

    drop_unparsable_horovod_settings()
    if cycle_time_ms > 0:
        os.environ["HOROVOD_CYCLE_TIME"] = str(cycle_time_ms)
    hvd.init()
    return hvd


def drop_unparsable_horovod_settings() -> list[str]:
    """Remove HOROVOD_CYCLE_TIME and HOROVOD_CACHE_CAPACITY from the environment when they are
    not numbers, so that Horovod's defaults apply; call before ``hvd.init()``.

    ``horovod.run()`` (Horovod 0.28.1) exports both as "(None,)": its argument defaults end in a
    stray comma. The C++ core reads that as 0, which means a background loop that never sleeps
    between cycles and no response cache. With one CPU per rank that loop took half the CPU
    of a lone rank and about 12% of each of two ranks. ``horovod.spark.run`` and ``horovodrun``
    do not export them.

    Returns:
        the names removed.
    """
    removed = []
    for name in ("HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY"):
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            float(value)
        except ValueError:
            del os.environ[name]
            removed.append(name)
    return removed


class TorchCollective(Collective):
    """``torch.distributed``: joins the process group the launcher described in the environment.

    TorchDistributor and torchrun set MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE and
    LOCAL_RANK; the backend is NCCL on GPU and gloo otherwise.
    """

    name = "torch_distributed"

    def __init__(self, use_gpu: bool = False) -> None:
        self.dist = dist
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            dist.init_process_group(backend="nccl" if use_gpu else "gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        # Small control messages (batch counts, metric sums) always travel on a gloo group,
        # on the CPU, whatever backend carries the gradients.
        self._cpu_group = dist.new_group(backend="gloo") if use_gpu else None

    def allreduce(self, tensor: Tensor, op: Op = "sum") -> Tensor:
        return self.allreduce_async(tensor, op)()

    def allreduce_async(self, tensor: Tensor, op: Op = "sum") -> Callable[[], Tensor]:
        out = tensor.detach().clone()
        reduce_op = {"sum": self.dist.ReduceOp.SUM, "min": self.dist.ReduceOp.MIN, "max": self.dist.ReduceOp.MAX}[op]
        work = self.dist.all_reduce(out, op=reduce_op, group=self._cpu_group, async_op=True)

        def wait() -> Tensor:
            work.wait()
            return out

        return wait

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, group=self._cpu_group)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj, group=self._cpu_group)
        return out

    def distribute(self, module, optimizer, device):
        # DDP broadcasts rank 0's parameters and buffers when it wraps the module; the
        # optimizer holds no state yet, or rank 0's restored state is loaded on every rank.
        wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        return wrapped, optimizer

    def shutdown(self) -> None:
        if self._owns_group and self.dist.is_initialized():
            self.dist.destroy_process_group()


def clip_and_step(optimizer: torch.optim.Optimizer, params: list[Tensor], max_norm: float,
                  scaler: "torch.amp.GradScaler | None") -> float:
    """Unscale (AMP), clip the gradients' global norm to ``max_norm`` (0: no clipping), update;
    the norm before clipping."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif max_norm == 0:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    else:
        raise ValueError(f"train.grad_clip must be >= 0 (0 = no clipping), got {max_norm}")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(norm)
