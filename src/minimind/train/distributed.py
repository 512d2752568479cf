"""Process-group setup from torchrun's environment, and the DDP / FSDP2 wrappers.

Contract:
- `init_distributed(device_pref)` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `torchrun`, also for
  multi-node runs) and returns a `Dist` describing this process; without them it is a single
  process and no process group is created. Backend: NCCL on CUDA, gloo on CPU.
- `wrap_model(model, dist, fsdp, mp_dtype)` returns the module to train: the model itself (one
  process), `DistributedDataParallel`, or the model sharded in place with FSDP2 `fully_shard`
  (one shard group per transformer block plus the root), with a MixedPrecisionPolicy on GPU.
- Helpers: `all_reduce_sum`, `all_gather_objects`, `barrier`, `cleanup`.

Only rank 0 logs and writes files; every rank runs the same steps in lockstep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn

from ..errors import UserError
from .config import check_device_name


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """The device `pref` names (see `config.check_device_name`), or a UserError if it is absent here."""
    check_device_name(pref)
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {pref}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {pref}: MPS is not available on this machine")
    return dev


def init_distributed(device_pref: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=pick_device(device_pref))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local, device=device)


def wrap_model(model: nn.Module, dist: Dist, fsdp: bool, mp_dtype: torch.dtype | None) -> nn.Module:
    if fsdp and not dist.enabled:
        raise UserError("--fsdp needs several processes: launch with `torchrun --nproc_per_node N -m minimind ...`")
    if not dist.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Parameters are stored (and optimised) in fp32 shards; each block all-gathers them in
        # mp_dtype for compute and reduces gradients in fp32, which keeps small updates exact.
        policy = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32) if mp_dtype else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)  # root: embeddings, final norm, (tied) head
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def all_gather_objects(obj, dist: Dist) -> list:
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def barrier(dist: Dist) -> None:
    if dist.enabled:
        td.barrier()


def cleanup(dist: Dist) -> None:
    if dist.enabled and td.is_initialized():
        td.destroy_process_group()
