"""Proximal Policy Optimisation (`minimind ppo`): RL with a learned value baseline and GAE.

Same data, rollouts and rewards as GRPO (this stage subclasses it: `--group-size` completions
per prompt from the inference engine, scored by `--rewards`), but the advantage of each token
comes from a learned value function instead of the group mean:
1. rollout: sample, score; then one no-grad forward of the policy (old log-probs and values)
   and of the frozen `--init` reference; per-token reward = -beta * (log pi_old - log ref) on
   every completion token (the classic KL penalty inside the reward) plus the sequence reward on
   its last token; `losses.gae` turns rewards and values into advantages (whitened over the
   batch's tokens with --whiten-advantages) and value targets (returns);
2. loss = `losses.ppo_policy_loss` (clipped ratio against the rollout's log-probs) +
   vf_coef * `losses.ppo_value_loss` (clipped against the rollout's values).

The value function is a linear head (hidden -> 1, zero-initialised, so it starts at V = 0) on
the policy's final hidden states, not a separate critic: a critic initialised from the policy
would double the weights, the optimizer state and the forward passes for a model this small,
while a head shares the features the policy already computes. Its weights live beside the
policy's, in `value_head.safetensors` of each checkpoint (model.safetensors stays a plain model
that chat/serve/export load). The head reads the final hidden states through a forward hook on
the model's last norm, so the model code is untouched, and reads them detached: it is a linear
probe of the policy's features, so the value loss never pulls on the policy's weights (with one
shared learning rate, `--value-scale` lets the head learn faster than the policy moves). As in GRPO there is one update per batch
of rollouts, so the ratio starts at 1; the clipping bounds updates if that changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoint import atomic_write, load_weights, read_safetensors, write_safetensors
from ...config import IGNORE_INDEX
from ...errors import UserError
from ...locator import WEIGHTS_NAME, CheckpointError
from ..config import knob
from ..losses import gae, masked_mean, ppo_policy_loss, ppo_value_loss
from .base import TrainContext
from .grpo import GRPOConfig, GRPOStage

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_PREFIX = "value_head."


@dataclass
class PPOConfig(GRPOConfig):
    group_size: int = knob(2, "completions sampled per prompt (each its own sample; no group baseline)")
    gamma: float = knob(1.0, "discount of GAE")
    lam: float = knob(0.95, "lambda of GAE (1: Monte Carlo returns, 0: one-step TD)")
    vf_coef: float = knob(0.5, "weight of the value loss")
    value_clip: float = knob(0.2, "clip range of the value update around the rollout's values")
    value_scale: float = knob(10.0, "the value head's output is multiplied by this: Adam moves each weight by about "
                                    "--lr a step, so it is the head's learning-rate multiplier (one --lr trains both)")
    whiten_advantages: bool = knob(True, "normalise advantages to mean 0, std 1 over the batch's tokens")
    beta_kl: float = knob(0.04, "weight of the per-token KL penalty to the --init model inside the reward")

    def validate(self) -> None:
        super().validate()
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise UserError(f"--gamma and --lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.vf_coef < 0 or self.value_clip <= 0 or self.value_scale <= 0:
            raise UserError("--vf-coef must be >= 0, --value-clip and --value-scale > 0")


class PPOStage(GRPOStage):
    name = "ppo"
    help = "RL with a value head, GAE and clipped policy/value losses (samples with the inference engine); needs --init"
    order = 62
    config_class = PPOConfig

    def __init__(self, config: PPOConfig) -> None:
        super().__init__(config)
        self._hidden: torch.Tensor | None = None  # the last forward's final hidden states

    # (a) the value head trains with the policy -------------------------------------------------

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        head = nn.Linear(model.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        model.value_head = head.to(next(model.parameters()).device)

        def capture(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            self._hidden = out

        model.norm.register_forward_hook(capture)
        return model

    def _values(self, model: nn.Module, positions: int) -> torch.Tensor:
        """V(s_t) [B, positions] for the last `positions` + 1 hidden states of the last forward
        (the state at t predicts token t+1, as the log-probs do)."""
        h = self._hidden[:, -(positions + 1):][:, :-1].detach()
        return self.config.value_scale * model.value_head(h).squeeze(-1).float()

    # (b) rollouts with old log-probs, values and GAE -------------------------------------------

    def rollout(self, raw: dict[str, Any], ctx: TrainContext, count: int) -> dict[str, Any]:
        cfg = self.config
        batch = super().rollout(raw, ctx, count)
        ids, labels = batch["input_ids"].to(ctx.device), batch["labels"].to(ctx.device)
        mask = labels[:, 1:] != IGNORE_INDEX
        with torch.no_grad(), ctx.autocast():
            old = ctx.model(ids, labels=labels).token_logps.float()
            values = self._values(ctx.model, old.shape[1])
            ref = ctx.extra["ref"](ids, labels=labels).token_logps.float() if "ref" in ctx.extra else None
        kl = (old - ref) * mask if ref is not None else torch.zeros_like(old)
        rewards = -cfg.beta_kl * kl
        last = (mask.long() * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(1)
        rewards[torch.arange(len(last), device=mask.device), last] += batch["rewards"].to(ctx.device)
        adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            mean = masked_mean(adv, mask)
            std = masked_mean((adv - mean) ** 2, mask).sqrt()
            adv = ((adv - mean) / (std + 1e-8)) * mask
        batch["metrics"].update(kl=float(masked_mean(kl, mask)), value=float(masked_mean(values, mask)),
                                **{"return": float(masked_mean(returns, mask))})
        batch.update(advantages=adv.cpu(), returns=returns.cpu(), old_values=values.cpu(), old_logps=old.cpu())
        return batch

    # (c) the loss ------------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        c = self.completion_forward(model, batch, ctx)  # as GRPO, with the MoE balance loss in c.aux
        values = self._values(ctx.model, c.keep - 1)

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[:, -(c.keep - 1):].to(ctx.device, non_blocking=True)

        policy, pm = ppo_policy_loss(c.logps, crop(batch["old_logps"]), crop(batch["advantages"]), c.mask, cfg.clip_eps)
        value, vm = ppo_value_loss(values, crop(batch["old_values"]), crop(batch["returns"]), c.mask, cfg.value_clip)
        loss = policy + cfg.vf_coef * value + c.aux
        return loss, {**batch["metrics"], **pm, **vm, **c.metrics, "policy_loss": policy.detach(),
                      "value_loss": value.detach()}

    # (e) the value head is saved beside the policy ---------------------------------------------

    def save_weights(self, model: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path,
                     ctx: TrainContext) -> None:
        head = {k: v for k, v in state_dict.items() if k.startswith(VALUE_PREFIX)}
        super().save_weights(model, {k: v for k, v in state_dict.items() if k not in head}, folder, ctx)
        atomic_write(Path(folder) / VALUE_HEAD_FILE, lambda p: write_safetensors(head, p))

    def load_weights(self, model: nn.Module, folder: Path, ctx: TrainContext) -> None:
        paths = [Path(folder) / WEIGHTS_NAME, Path(folder) / VALUE_HEAD_FILE]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise CheckpointError(f"{folder}: {', '.join(missing)} missing")
        load_weights(model, {**read_safetensors(paths[0]), **read_safetensors(paths[1])}, source=str(folder))


STAGE = PPOStage
