"""LoRA: low-rank adapters on chosen Linear layers (our own, no peft).

A frozen Linear computes y = W x. LoRA adds a trainable low-rank update:

    y = W x + (alpha / r) * B A dropout(x)       A: [r, in], B: [out, r], r << min(in, out)

B starts at zero, so training starts exactly from the base model; only A and B (a few % of the
weights) receive gradients and optimizer state.

Contract:
- `add_lora(model, targets, rank, alpha, dropout)` attaches a `LoRAAdapter` as `<linear>.lora` to
  every `nn.Linear` whose module name matches one of the comma-separated fnmatch patterns (default
  `*_proj`: all attention and MLP projections), via a forward hook. The base parameter names are
  unchanged, so a base checkpoint still loads; adapter names contain `.lora.`.
- `freeze_base(model)` leaves only adapter parameters trainable.
- `adapter_state_dict(sd)` filters a state dict to adapter tensors. `save_adapter` /
  `load_adapter` write and read `adapter.safetensors` + `adapter_config.json` (the adapter
  folder's layout, and how a run directory leads to it, is `minimind.locator`'s).
- `merge_lora(model)` folds B A * scale into W (then the adapter is skipped);
  `unmerge_lora(model)` subtracts it again. A merged model's output equals base + adapter.
- `LoRAAdapter.head_operands(x, W)` writes the adapted Linear as one matmul, so a LoRA `lm_head`
  keeps the model's chunked loss (no [N, V] logits; `MiniMindLM.head_operands` calls it).
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .. import load_model
from ..checkpoint import atomic_write, read_safetensors
from ..locator import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CheckpointError, adapter_base, adapter_folder,
                       read_adapter_config)


class LoRAAdapter(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        # Same init as nn.Linear for A; B = 0 makes the initial update exactly zero.
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The full-rank update scale * B @ A, shaped like the base weight [out, in]."""
        return (self.B @ self.A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.A.t().to(x.dtype)) @ self.B.t().to(x.dtype) * self.scale

    def head_operands(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x', W') with x' @ W'^T == x @ W^T + this adapter's output: the wrapped Linear as one matmul.

        W x + s B A drop(x) = [W | B] [x ; s A drop(x)]: append the r adapter activations to the
        input and B's r columns to the weight. The model's chunked loss (`model.lm_loss`) then never
        builds [N, V] logits for a LoRA head, dropout included; A gets its gradient through x', B
        through W' (no V x h merged copy of W + s B A needed, only the r extra columns)."""
        if self.merged:
            return x, weight
        low_rank = (self.dropout(x) @ self.A.t().to(x.dtype)) * self.scale  # [N, r]
        return torch.cat([x, low_rank], dim=-1), torch.cat([weight, self.B.to(weight.dtype)], dim=-1)


def _hook(module: nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    adapter: LoRAAdapter = module.lora
    if adapter.merged:
        return output
    return output + adapter(inputs[0])


def lora_target_names(model: nn.Module, targets: str) -> list[str]:
    patterns = [p.strip() for p in targets.split(",") if p.strip()]
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def add_lora(model: nn.Module, targets: str = "*_proj", rank: int = 8, alpha: float = 16.0,
             dropout: float = 0.0) -> list[str]:
    """Attach adapters in place; return the wrapped module names."""
    names = lora_target_names(model, targets)
    if not names:
        raise ValueError(f"LoRA targets {targets!r} match no Linear layer of the model")
    for name in names:
        linear = model.get_submodule(name)
        if hasattr(linear, "lora"):
            raise ValueError(f"{name} already has a LoRA adapter")
        adapter = LoRAAdapter(linear.in_features, linear.out_features, rank, alpha, dropout)
        adapter.to(device=linear.weight.device, dtype=linear.weight.dtype)
        linear.lora = adapter  # registers the submodule: parameters appear as <name>.lora.A / .B
        linear.register_forward_hook(_hook)
    return names


def freeze_base(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(".lora." in name)


def adapters(model: nn.Module) -> list[tuple[nn.Linear, LoRAAdapter]]:
    return [(m, m.lora) for m in model.modules() if isinstance(m, nn.Linear) and isinstance(getattr(m, "lora", None), LoRAAdapter)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    for linear, adapter in adapters(model):
        if not adapter.merged:
            linear.weight += adapter.delta().to(linear.weight.dtype)
            adapter.merged = True


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    for linear, adapter in adapters(model):
        if adapter.merged:
            linear.weight -= adapter.delta().to(linear.weight.dtype)
            adapter.merged = False


def adapter_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if ".lora." in k}


def base_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if ".lora." not in k}


def save_adapter(sd: dict[str, torch.Tensor], out_dir: Path, config: dict[str, Any]) -> None:
    """Write only the adapter tensors (a small file) and their config (rank, alpha, targets, base)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(sd).items()}
    atomic_write(out / ADAPTER_WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write(out / ADAPTER_CONFIG, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))


def load_adapter(model: nn.Module, folder: Path) -> None:
    """Load adapter tensors into a model that already has matching adapters attached."""
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: {ADAPTER_WEIGHTS} is missing")
    sd = read_safetensors(path)
    own = adapter_state_dict(model.state_dict())
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: adapters do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)


def load_lora_model(adapter_dir: str | Path, base: str | Path | None = None, merge: bool = True,
                    device: str | torch.device = "cpu") -> nn.Module:
    """Base model (from the adapter config unless given) + adapters, merged by default.

    `adapter_dir` is an adapter folder or a LoRA run directory (its latest checkpoint)."""
    folder = adapter_folder(adapter_dir)
    cfg = read_adapter_config(folder)
    model = load_model(base or adapter_base(folder), device=device)
    add_lora(model, cfg["targets"], cfg["rank"], cfg["alpha"], 0.0)
    load_adapter(model, folder)
    if merge:
        merge_lora(model)
    return model
