"""torch.distributed under torchrun: who we are, and the few collectives the engine needs.

Run as ``torchrun --nproc_per_node N -m repro ...``: torchrun sets RANK, WORLD_SIZE
and LOCAL_RANK; every rank runs the same command, trains each run together with the
others (DistributedDataParallel), and only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


_ENV = DistEnv()


def env() -> DistEnv:
    return _ENV


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from repro.config import ConfigError

        raise ConfigError("--device cuda asked for, but no CUDA device is available; choose one of: auto, cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and _ENV.enabled:
        dev = torch.device("cuda", _ENV.local_rank)
    return dev


def init_from_env() -> DistEnv:
    """Join the process group when started by torchrun; a no-op otherwise."""
    global _ENV
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return _ENV
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    _ENV = DistEnv(rank, world, local)
    return _ENV


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _ENV.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if _ENV.enabled:
        dist.barrier()


def broadcast_object(obj):
    if not _ENV.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    if not _ENV.enabled:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model
