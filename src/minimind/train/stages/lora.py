"""LoRA fine-tuning (`minimind lora`): SFT data, but only low-rank adapters train.

(a) parameters: `prepare_model` attaches adapters to the Linear layers matching `--lora-targets`
    and freezes everything else, so the optimizer holds only the adapters;
(e) saving: checkpoints hold only `adapter.safetensors` + `adapter_config.json` (which names the
    base checkpoint), a few hundred KB instead of the whole model; at the end of the run the
    merged model (base + adapter folded in) is written to `RUN_DIR/merged/`, a normal checkpoint
    that `chat`, `generate`, `serve` and `export` load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...checkpoint import copy_tokenizer, model_state_dict, save_model
from ..config import knob
from ..lora import add_lora, base_state_dict, freeze_base, load_adapter, load_lora_model, save_adapter
from .base import TrainContext, with_defaults
from .sft import SFTConfig, SFTStage


@dataclass
@with_defaults(lr=1e-4, weight_decay=0.0)  # no weight decay on the adapters
class LoRAConfig(SFTConfig):
    lora_rank: int = knob(8, "adapter rank r")
    lora_alpha: float = knob(16.0, "adapter scale alpha (the update is multiplied by alpha / r)")
    lora_dropout: float = knob(0.0, "dropout on the adapter input")
    lora_targets: str = knob("*_proj", "comma-separated fnmatch patterns of Linear layer names to adapt")


class LoRAStage(SFTStage):
    name = "lora"
    help = "LoRA fine-tuning on conversations: only small adapters train and are saved; needs --init"
    order = 30
    config_class = LoRAConfig

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        cfg = self.config
        add_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        freeze_base(model)
        return model

    def _adapter_config(self, ctx: TrainContext) -> dict:
        cfg = self.config
        base = str(ctx.init_path.resolve()) if ctx.init_path is not None else None
        return {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                "targets": cfg.lora_targets, "base": base}

    def save_weights(self, model: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path,
                     ctx: TrainContext) -> None:
        save_adapter(state_dict, folder, self._adapter_config(ctx))
        if ctx.tokenizer is not None:
            copy_tokenizer(ctx.tokenizer.path, folder)

    def load_weights(self, model: nn.Module, folder: Path, ctx: TrainContext) -> None:
        load_adapter(model, folder)

    def on_train_end(self, model: nn.Module, ctx: TrainContext) -> None:
        if ctx.init_path is None or ctx.run_dir is None:
            return
        merged = load_lora_model(ctx.run_dir, base=ctx.init_path, merge=True)  # the run's latest adapter
        tok_dir = getattr(ctx.tokenizer, "path", None)
        save_model(merged, ctx.run_dir / "merged", tokenizer_dir=tok_dir,
                   state_dict=base_state_dict(model_state_dict(merged)))


STAGE = LoRAStage
