"""Direct Preference Optimisation (`minimind dpo`): learn from chosen/rejected answer pairs.

What this stage supplies to the one loop:
(b) batches: the `dpo` loader, {chosen,rejected}_{input_ids,labels} [B, T] with labels
    IGNORE_INDEX outside the assistant answer, so log-probs cover only what the assistant said;
(c) loss: one forward over [chosen; rejected] stacked to [2B, T] (one pass instead of two),
    summed answer log-probs per sequence, then `losses.dpo_loss` against the frozen reference
    (plus the MoE balance loss of the policy's forward, `base.forward_with_aux`);
(d) extra models: the reference is a frozen copy of the `--init` checkpoint (reloaded from disk,
    so a resumed run still compares against the starting point, not against resumed weights).

The reference's log-probs are computed under no_grad in the same step: for our model sizes that
costs one extra forward and no memory for activations, so there is no precompute pass.
Logged: rewards/chosen, rewards/rejected, rewards/accuracy (chosen reward > rejected reward) and
rewards/margin. With `--dpo-loss ipo` the log-probs are averaged over answer tokens first, as
the IPO authors do, so beta means the same thing whatever the answer lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import load_model
from ...config import IGNORE_INDEX
from ...errors import UserError
from ..config import knob
from ..losses import dpo_loss
from .base import TrainContext, forward_with_aux, with_defaults
from .sft import SFTConfig, SFTStage


@dataclass
@with_defaults(lr=1e-6)  # DPO moves far with tiny steps
class DPOConfig(SFTConfig):
    batch_size: int = knob(8, "preference pairs per micro-batch")
    beta: float = knob(0.1, "DPO temperature: how far the policy may drift from the reference")
    label_smoothing: float = knob(0.0, "assumed fraction of flipped preference labels (conservative DPO)")
    dpo_loss: str = knob("sigmoid", "sigmoid (DPO) | ipo")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise UserError(f"--beta must be positive, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.dpo_loss not in ("sigmoid", "ipo"):
            raise UserError(f"--dpo-loss must be sigmoid or ipo, got {self.dpo_loss!r}")


def load_frozen(path: str | Path) -> nn.Module:
    """A model from a checkpoint / run dir / HF folder, for use as a frozen reference or teacher."""
    return load_model(path).eval().requires_grad_(False)


class DPOStage(SFTStage):
    name = "dpo"
    help = "preference optimisation on chosen/rejected pairs against a frozen reference; needs --init"
    order = 40
    config_class = DPOConfig
    data_kind = "dpo"
    requires_init = True

    def extra_models(self, ctx: TrainContext) -> dict[str, nn.Module]:
        return {"ref": load_frozen(ctx.init_path)}

    def batch_weight(self, batch: dict[str, Any]) -> float:
        return float(batch["chosen_input_ids"].shape[0])  # the loss is a mean over pairs

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["chosen_input_ids"].numel() + batch["rejected_input_ids"].numel())

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        labels_cpu = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]).to(ctx.device, non_blocking=True)
        labels = labels_cpu.to(ctx.device, non_blocking=True)
        answer_len = (labels_cpu[:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1).to(ctx.device, non_blocking=True)
        n_pairs = batch["chosen_input_ids"].shape[0]

        def seq_logps(token_logps: torch.Tensor) -> torch.Tensor:
            seq = token_logps.sum(-1)  # per-token log-probs from chunked logits (model/lm_loss.py)
            return seq / answer_len if cfg.dpo_loss == "ipo" else seq  # IPO: mean over answer tokens

        f = forward_with_aux(model, ids, ctx, labels=labels)
        policy = seq_logps(f.out.token_logps)
        with torch.no_grad():
            ref = seq_logps(ctx.extra["ref"](ids, labels=labels).token_logps)
        loss, metrics = dpo_loss(policy[:n_pairs], policy[n_pairs:], ref[:n_pairs], ref[n_pairs:],
                                 cfg.beta, cfg.label_smoothing, cfg.dpo_loss)
        return loss + f.aux, {**metrics, **f.metrics}


STAGE = DPOStage
