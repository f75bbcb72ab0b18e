# SPDX-License-Identifier: Apache-2.0
"""Multi-process training helpers (``torchrun``): process-group set-up, model wrapping (DDP, or
FSDP2 ``fully_shard`` for large models), and small collectives.

Launch::

    torchrun --nproc_per_node 8 -m samkern train ...

``torchrun`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``;
:func:`init_distributed` reads them (NCCL on CUDA, gloo on the CPU). Without them everything
here is a single-process no-op, so the same training code runs either way.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "init_distributed",
    "cleanup",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "barrier",
    "wrap_model",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_gather_object",
    "set_wrap_strategy",
]

_STRATEGY = "ddp"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(backend: Optional[str] = None, device: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """Join the process group described by the ``torchrun`` environment (no-op without it).

    Args:
        backend: "nccl" | "gloo" (default: nccl when CUDA is available and ``device`` is not
            "cpu", else gloo).
        device: "cuda" | "cpu" | None (auto).
    Returns:
        (rank, world_size, device): this process's device is ``cuda:LOCAL_RANK`` on GPUs.
    """
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(f"cuda:{local_rank()}") if use_cuda else torch.device("cpu")
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, dev if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not is_distributed():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    return rank(), world_size(), dev


def cleanup() -> None:
    """Tear the process group down. Call it after every object that holds the group (DDP's
    reducer, FSDP2's sharded parameters, the Trainer) is gone: run the training in a function
    and call this when it has returned. A DDP reducer or gloo work object that outlives the group
    is destroyed at interpreter exit, where gloo's threads can abort the process with SIGABRT
    ("terminate called without an active exception", seen once in CI)."""
    if is_distributed():
        import gc

        gc.collect()  # objects in reference cycles that still hold the group
        # every rank reaches the end before the transport goes away: a gloo rank that tears down
        # while a peer is still busy (e.g. rank 0 writing a checkpoint) can abort with SIGABRT
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def set_wrap_strategy(strategy: str) -> None:
    """``"ddp"`` (default) or ``"fsdp"`` (FSDP2 ``fully_shard``, for presets too big to replicate)."""
    global _STRATEGY
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    _STRATEGY = strategy


def wrap_model(model: nn.Module, device: torch.device, strategy: Optional[str] = None) -> nn.Module:
    """Wrap ``model`` for data-parallel training (call after choosing the trainable parameters:
    DDP registers gradient hooks on the parameters that require grad at construction).

    ``"ddp"``: DistributedDataParallel (gradients averaged over processes). ``"fsdp"``: FSDP2
    ``fully_shard`` on every Mamba-2 block / EAT block, then on the root (best effort: the
    model is changed in place and returned; parameters become DTensors; a model that is already
    sharded is returned as is, so each curriculum stage can build its own Trainer). The trainer's
    :func:`~samkern.train.trainer.save_model_weights` / :meth:`~samkern.train.trainer.Trainer.save_checkpoint`
    gather them into full tensors (every process must call them; process 0 writes).
    """
    strategy = strategy or _STRATEGY
    if not is_distributed():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=False)
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import FSDPModule, fully_shard
        except ImportError as e:  # torch < 2.6
            raise RuntimeError("FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6") from e
        if isinstance(model, FSDPModule):
            # already sharded, e.g. by the Trainer of an earlier curriculum stage: sharding again
            # would wrap DTensor shards a second time
            return model
        # shard block by block so only one block's parameters are gathered at a time
        for m in model.modules():
            if type(m).__name__ in ("Block", "MambaBlock", "EATBlock", "TransformerBlock"):
                fully_shard(m)
        fully_shard(model)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes (returns a new tensor; identity when single-process)."""
    if not is_distributed():
        return x
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_gather_object(obj: Any) -> List[Any]:
    """``obj`` of every process, in rank order (a collective; ``[obj]`` when single-process).
    Used for the per-process RNG states a checkpoint needs."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
