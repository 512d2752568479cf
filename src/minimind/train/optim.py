"""AdamW with parameter groups, and the warmup + cosine learning-rate schedule.

Contract:
- `param_groups(named_params, weight_decay)` splits trainable parameters into two AdamW groups:
  matrices get weight decay; norms, biases and embeddings do not.
- `make_optimizer(named_params, cfg, device)` returns torch AdamW (fused kernel where the device
  supports it).
- `lr_at(step, cfg, total_steps)` is a pure function of the step: the schedule has no state of its
  own, so resuming only needs the step number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import TrainConfig


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices and everything else.

    Weight decay pulls weights towards zero. That is a useful prior on large matrices, but on a
    norm's gain it fights the scale the norm is meant to learn, and on embeddings it shrinks the
    rows of rare tokens (which get few gradient updates) towards zero.
    """
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embed" in name or name.endswith("norm.weight"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(named_params: Iterable[tuple[str, nn.Parameter]], cfg: TrainConfig,
                   device: torch.device) -> torch.optim.AdamW:
    groups = param_groups(named_params, cfg.weight_decay)
    if not groups:
        raise ValueError("no trainable parameters")
    # The fused kernel updates every parameter in one launch (CUDA) or one vectorised loop (CPU).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup from lr/warmup to lr, then half a cosine from lr down to lr * min_lr_ratio at
    the last step. Warmup keeps the first updates small while Adam's second-moment estimates are
    still noisy; the cosine spends most of the budget at high LR and anneals at the end.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
