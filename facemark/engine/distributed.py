"""Multi-process training on PyTorch's own distributed engine (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node=4 -m facemark train CONFIG`` starts one process per GPU and sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; multi-node runs use
torchrun's own ``--nnodes/--node_rank/--rdzv_*`` options. Without those variables the engine runs
as a single process. The backend is NCCL on GPUs and gloo on CPU.

Only rank 0 logs, validates and writes checkpoints; every rank trains on its own shard of each
epoch (``DistributedSampler`` with ``set_epoch``). ``optim.batch_size`` is the GLOBAL batch: each
process takes ``batch_size / world_size`` so a recipe means the same thing on 1 or 8 GPUs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "init_distributed", "cleanup_distributed", "resolve_device", "broadcast_flag",
           "agree_on_minimum", "sum_over_ranks"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and writes checkpoints."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process for ``runtime.device`` ``name``.

    ``"auto"`` is CUDA when available, else the CPU. A CUDA device without an index is GPU
    ``local_rank`` (torchrun's one process per GPU), or GPU 0 when the process sees one GPU only
    (launchers that give each process its own ``CUDA_VISIBLE_DEVICES``). An explicit index
    (``"cuda:1"``) is taken as is by a single process; under torchrun every process would pick the
    same GPU, so it is refused unless it is the one this process would pick anyway.
    """
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device={name!r} but CUDA is not available (use runtime.device=cpu or auto)")
    visible = torch.cuda.device_count()
    own_index = 0 if visible == 1 else local_rank
    if own_index >= visible:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but this process sees {visible} GPUs (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start at most {visible} processes per machine")
    if device.index is None:
        return torch.device("cuda", own_index)
    if device.index >= visible:
        raise RuntimeError(f"runtime.device={name!r} but this process sees {visible} GPU(s) (cuda:0..cuda:{visible - 1})")
    if world_size > 1 and device.index != own_index:
        raise RuntimeError(f"runtime.device={name!r} under torchrun would put every process on GPU {device.index}; "
                           f"use runtime.device=cuda (or auto): each process then takes cuda:LOCAL_RANK")
    return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def init_distributed(device_name: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group torchrun describes in the environment (``env://``), if any.

    Single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``): nothing is initialised.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name, local_rank, world_size)
    if device.type == "cuda":
        # The current device is where kernels without an explicit device, NCCL and cuDNN's
        # handles go: set it in a single process on cuda:1 too.
        torch.cuda.set_device(device)
    if world_size <= 1:
        return DistributedContext(0, 0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            world_size=world_size,
            rank=rank,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            # NCCL binds the group to this GPU at once (no guessing from the rank; eager init).
            device_id=device if device.type == "cuda" else None,
        )
    return DistributedContext(rank, local_rank, world_size, device)


def cleanup_distributed(context: DistributedContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """True on every rank if ``flag`` is true on ANY rank (e.g. "my loss is not finite").

    Every rank must take the same branch after a collective-bearing decision, or the run hangs.
    """
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def agree_on_minimum(value: int, context: DistributedContext) -> int:
    """The smallest of the ranks' ``value`` on every rank (a decision all ranks must share)."""
    if not context.distributed:
        return value
    tensor = torch.tensor([float(value)], device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def sum_over_ranks(values: list[int], context: DistributedContext) -> list[int]:
    """Each of ``values`` summed over the ranks, on every rank (e.g. counts of a sharded job);
    a collective, so it also waits until every rank has got here."""
    if not context.distributed:
        return list(values)
    tensor = torch.tensor([float(value) for value in values], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(value) for value in tensor.tolist()]
