"""torch.distributed under torchrun: who we are, and the few collectives the engine needs.

Run as ``torchrun --nproc_per_node N -m repro ...``: every rank runs the same command,
trains each run together with the others (DistributedDataParallel), and only rank 0
writes files and holds the run's lock.  The batch / learning-rate rule: a run's batch
size is the *global* batch and its learning rate the one for that batch; each of the N
ranks takes ``batch_size / N`` images of a disjoint shard (:func:`per_rank_batch`), DDP
averages the gradients, and the learning rate is used unchanged.  Backend: NCCL with CUDA,
gloo otherwise (``REPRO_DIST_BACKEND``); timeout ``REPRO_DIST_TIMEOUT_MIN`` minutes.
docs/scaling.md describes it in full.
"""
from __future__ import annotations

import atexit
import datetime
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


def per_rank_batch(global_batch: int, world: int | None = None) -> int:
    """The per-process batch under the rule above: the global batch split evenly over the ranks."""
    world = _ENV.world if world is None else world
    if global_batch % world:
        from repro.config import ConfigError

        raise ConfigError(f"the global batch {global_batch} does not split evenly over {world} processes; "
                          f"pass --batch-size with a multiple of {world} (the learning rate is not rescaled)")
    return global_batch // world


def init_from_env() -> DistEnv:
    """Join the process group when started by torchrun; a no-op otherwise."""
    global _ENV
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return _ENV
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = os.environ.get("REPRO_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(minutes=float(os.environ.get("REPRO_DIST_TIMEOUT_MIN", "30")))
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            from repro.config import ConfigError

            raise ConfigError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible): "
                              f"use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=timeout)
    _ENV = DistEnv(rank, world, local)
    atexit.register(shutdown)
    return _ENV


def shutdown() -> None:
    """Leave the process group (at exit); a no-op when not distributed."""
    global _ENV
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _ENV = DistEnv()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _ENV.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if _ENV.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
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


def convert_sync_bn(model: torch.nn.Module) -> torch.nn.Module:
    """``SyncBatchNorm.convert_sync_batchnorm`` that keeps modules frozen by ``freeze_except``
    frozen: their pinned ``train`` (always eval mode) moves to the replacing SyncBatchNorm."""
    pinned = {id(m): m.__dict__["train"] for m in model.modules() if "train" in m.__dict__}

    def convert(m: torch.nn.Module) -> torch.nn.Module:
        out = torch.nn.SyncBatchNorm.convert_sync_batchnorm(m) if isinstance(
            m, torch.nn.modules.batchnorm._BatchNorm) else m
        if out is not m and id(m) in pinned:
            out.train = (lambda self, mode=True: torch.nn.Module.train(self, False)).__get__(out)
            out.train(False)
        for name, child in list(m.named_children()):
            setattr(out, name, convert(child))
        return out

    return convert(model)


def wrap_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` under torchrun (the model itself otherwise).

    Only parameters that require gradients at this point are synchronised (call it after
    freezing).  ``sync_bn`` replaces BatchNorm by SyncBatchNorm (statistics over the
    global batch); torch supports that on CUDA (NCCL) only.
    """
    if not _ENV.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            from repro.config import ConfigError

            raise ConfigError("--sync-bn needs CUDA devices (NCCL): torch's SyncBatchNorm refuses CPU modules; "
                              "drop --sync-bn on CPU")
        model = convert_sync_bn(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside ``torch.compile`` and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
