"""Process-group setup from torchrun's environment, and the DDP / FSDP2 wrappers.

Contract:
- `init_distributed(device_pref)` reads RANK / WORLD_SIZE / LOCAL_RANK (set by `torchrun`, also for
  multi-node runs) and returns a `Dist` describing this process; without them it is a single
  process and no process group is created. Backend: NCCL on CUDA, gloo on CPU.
- `wrap_model(model, dist, fsdp)` returns the module to train: the model itself (one process),
  `DistributedDataParallel` (no buffer broadcast), or the model sharded in place with FSDP2
  `fully_shard` (one shard group per transformer block plus the root). Both keep fp32 weights and
  leave bf16/fp16 to the trainer's autocast, so DDP and FSDP compute the same numbers.
- `--device cuda:N` is refused under torchrun (each rank takes cuda:LOCAL_RANK); a single process
  on CUDA calls `torch.cuda.set_device` on the device it picked.
- Helpers: `all_reduce_sum`, `all_gather_objects`, `barrier`, `cleanup`.

Only rank 0 logs and writes files; every rank runs the same steps in lockstep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..devices import pick_device
from ..errors import UserError


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


def init_distributed(device_pref: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = pick_device(device_pref)
        if device.type == "cuda":  # so kernels, NCCL-free collectives and empty_cache use this GPU too
            torch.cuda.set_device(device)
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref.startswith("cuda:"):
        # Every rank would land on that one GPU. torchrun gives each process its own: LOCAL_RANK.
        raise UserError(f"--device {device_pref}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
                        "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    device = pick_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local, device=device)


def wrap_model(model: nn.Module, dist: Dist, fsdp: bool) -> nn.Module:
    if fsdp and not dist.enabled:
        raise UserError("--fsdp needs several processes: launch with `torchrun --nproc_per_node N -m minimind ...`")
    if not dist.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # multi-process runs only: heavy

        # Parameters are stored (and optimised) in fp32 shards and all-gathered in fp32; the
        # trainer's autocast then rounds matmul inputs to bf16/fp16 exactly as it does under DDP.
        # (Gathering in bf16 would halve the traffic but also round the embeddings, the norm
        # weights and the router: the residual stream would be bf16, unlike every other path.)
        policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)  # root: embeddings, final norm, (tied) head
        return model
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    # broadcast_buffers=False: the only buffers are the RoPE tables, identical on every rank by
    # construction; broadcasting them from rank 0 before every forward is pure traffic.
    return DDP(model, device_ids=ids, broadcast_buffers=False)


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
