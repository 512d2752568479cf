"""AdamW with parameter groups, and the learning-rate schedules (warmup + cosine, or WSD).

Contract:
- `param_groups(named_params, weight_decay)` splits trainable parameters into two AdamW groups:
  matrices get weight decay; norms, biases and embeddings do not.
- `make_optimizer(named_params, cfg, device)` returns torch AdamW (fused kernel where the device
  supports it).
- `lr_at(step, cfg, total_steps)` is a pure function of the step: the schedule has no state of its
  own, so resuming only needs the step number. `cfg.schedule` picks the shape after the warmup:
  "cosine" (half a cosine over every remaining step) or "wsd" (warmup-stable-decay: the peak LR
  until the last `round(decay_frac * total_steps)` steps, then a straight line down to the
  minimum, reached on the last step). A multi-phase recipe calls it with the phase's own step and
  total, so each phase has its own schedule.
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
    """Learning rate for optimizer step `step` (0-based) of a run of `total_steps`.

    Linear warmup from lr/warmup to lr keeps the first updates small while Adam's second-moment
    estimates are still noisy. Then `cfg.schedule`: the cosine spends most of the budget at high
    LR and anneals towards the end; WSD stays at the peak (so a run can be extended, or a later
    phase continue at the same LR) and anneals only in its decay window.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        return _wsd(step, cfg.lr, min_lr, total_steps, cfg.decay_frac)
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _wsd(step: int, lr: float, min_lr: float, total_steps: int, decay_frac: float) -> float:
    """Stable at `lr`, then linear decay over the last D = round(decay_frac * total) steps.

    Decay step i (1..D) has lr - (lr - min_lr) * i / D: the last step is exactly min_lr, and
    decay_frac 0 means no decay at all (a phase that a later phase will anneal)."""
    decay_steps = round(decay_frac * total_steps)
    into_decay = step - (total_steps - decay_steps) + 1  # 1 on the first decay step
    if decay_steps <= 0 or into_decay <= 0:
        return lr
    return lr - (lr - min_lr) * min(1.0, into_decay / decay_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
