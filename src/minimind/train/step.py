"""One optimizer step of the training loop: accumulate the micro-batches' gradients, then update.

Contract:
- `accumulate(trainer, it) -> (loss, metrics, tokens)` draws `grad_accum` micro-batches from `it`,
  runs forward + backward on each (gradient sync only after the last under DDP/FSDP) and returns
  the global batch's mean loss as a Python float (the step's one host sync: the NaN check needs it
  before the optimizer step), the stage's metrics averaged over micro-batches (still tensors: read
  when logged) and the tokens trained on by every rank together.
- `update(trainer) -> grad_norm | None` clips, steps the optimizer (through the grad scaler if
  any) and zeroes the gradients; the grad norm stays a tensor (no host sync per step).

Both take the `Trainer` whose state they use (model, wrapped model, stage, context, optimizer,
scaler, process group), so the loop in `trainer.py` reads as the sequence of its phases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from . import distributed as D

if TYPE_CHECKING:
    from .trainer import Trainer


def _weights(trainer: Trainer, micro: list[Any]) -> tuple[list[float], float]:
    """Each micro-batch's loss weight and their sum over the whole global batch (all ranks).

    Normalising by the loss tokens of the whole global batch makes k micro-batches of b (or N
    ranks) give exactly the gradient of one batch of k*b, even when SFT masks differ per row."""
    dist = trainer.dist
    weights = [trainer.stage.batch_weight(b) for b in micro]
    global_w = sum(weights)  # host numbers (CPU batches): no device sync on one process
    if dist.enabled:
        global_w = float(D.all_reduce_sum(torch.tensor(global_w, dtype=torch.float64, device=trainer.device), dist))
    if global_w == 0:
        weights, global_w = [1.0] * len(micro), float(len(micro) * dist.world_size)
    return weights, global_w


def _grad_sync(trainer: Trainer, last: bool) -> Any:
    """Context for one micro-batch's backward: gradients are all-reduced once, after the last."""
    dist = trainer.dist
    if dist.enabled and not last:
        if trainer.cfg.fsdp:
            trainer.model.set_requires_gradient_sync(False)
        elif hasattr(trainer.train_model, "no_sync"):
            return trainer.train_model.no_sync()
    elif dist.enabled and trainer.cfg.fsdp:
        trainer.model.set_requires_gradient_sync(True)
    return contextlib.nullcontext()


def accumulate(trainer: Trainer, it: Iterator[Any]) -> tuple[float, dict[str, Any], int]:
    stage, dist, ctx, scaler = trainer.stage, trainer.dist, trainer.ctx, trainer.scaler
    micro = [next(it) for _ in range(trainer.cfg.grad_accum)]
    weights, global_w = _weights(trainer, micro)
    loss_sum = torch.zeros((), dtype=torch.float64, device=trainer.device)
    metrics: dict[str, Any] = {}  # tensors stay on the device until they are logged
    tokens = 0
    for i, (batch, w) in enumerate(zip(micro, weights)):
        with _grad_sync(trainer, last=i == len(micro) - 1):
            with ctx.autocast():
                loss, m = stage.loss(trainer.train_model, batch, ctx)
            # DDP/FSDP average gradients over ranks, hence the world_size factor.
            scaled = loss * (w * dist.world_size / global_w)
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += loss.detach().double() * w
        for k, v in m.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            metrics[k] = metrics.get(k, 0.0) + v / len(micro)
        tokens += stage.batch_tokens(batch)
    loss_value = float(D.all_reduce_sum(loss_sum, dist)) / global_w
    return loss_value, metrics, tokens * dist.world_size


def update(trainer: Trainer) -> torch.Tensor | None:
    optimizer, scaler = trainer.optimizer, trainer.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if trainer.cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in trainer.params], trainer.cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
