"""LoRA adapters chosen per request, applied per row inside one batched forward.

Contract:
- `AdapterBank(model)`; `bank.load(name, folder)` reads an adapter folder written by LoRA
  training (`adapter_config.json` with rank / alpha / targets, and `adapter.safetensors` with
  `<linear>.lora.A` [r, in] and `<linear>.lora.B` [out, r]; a run directory means its latest
  checkpoint: `locator.adapter_folder`). Several adapters can be loaded over one base model; the base stays untouched.
- `with bank.rows(names):` (names[i] = adapter of batch row i, None for the base model) makes
  every adapted Linear add scale * B_a A_a x to the rows using adapter a, for the forwards
  run inside the block. Outside such a block the model is exactly the base model.

Why not merge: merging B A into W serves one adapter at a time. Keeping the low-rank factors
apart costs two thin matmuls per adapted layer and lets requests for different adapters (and
for the base) share every forward of a continuous batch.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import read_safetensors
from ..errors import UserError
from ..locator import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_folder, read_adapter_config


def adapter_scale(folder: Path) -> float:
    """alpha / rank from an adapter folder's config, or a UserError naming the file and the key."""
    path = folder / ADAPTER_CONFIG
    cfg = read_adapter_config(folder)
    rank, alpha = cfg.get("rank"), cfg.get("alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise UserError(f"{path}: rank must be a positive integer, got {rank!r:.40}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise UserError(f"{path}: alpha must be a finite number, got {alpha!r:.40}")
    return float(alpha) / rank


class AdapterBank:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names: list[str] = []
        # per Linear module name: {adapter name: (A, B, scale)}
        self.weights: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = {}
        self.hooked: set[str] = set()
        self.groups: list[tuple[str, torch.Tensor]] | None = None  # (adapter, row indices) for this forward

    def load(self, name: str, folder: str | Path) -> None:
        if not name or name in self.names:
            raise UserError(f"adapter name {name!r} is empty or already loaded")
        folder = adapter_folder(folder)
        scale = adapter_scale(folder)
        tensors = read_safetensors(folder / ADAPTER_WEIGHTS)
        modules = dict(self.model.named_modules())
        w = self.model.embed_tokens.weight
        found: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for key, A in tensors.items():
            if not key.endswith(".lora.A"):
                continue
            mod_name = key[: -len(".lora.A")]
            B = tensors.get(mod_name + ".lora.B")
            linear = modules.get(mod_name)
            if B is None or not isinstance(linear, nn.Linear) or A.shape[1] != linear.in_features \
                    or B.shape[0] != linear.out_features:
                raise UserError(f"{folder}: adapter tensor {key} does not fit this model")
            found[mod_name] = (A.to(w.device, w.dtype), B.to(w.device, w.dtype), scale)
        if not found:
            raise UserError(f"{folder}: no LoRA tensors in {ADAPTER_WEIGHTS}")
        for mod_name, triple in found.items():
            self.weights.setdefault(mod_name, {})[name] = triple
            if mod_name not in self.hooked:
                modules[mod_name].register_forward_hook(self._hook(mod_name))
                self.hooked.add(mod_name)
        self.names.append(name)

    def _hook(self, mod_name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
            if not self.groups:
                return output
            x = inputs[0]
            out = output.clone()
            for name, rows in self.groups:
                triple = self.weights[mod_name].get(name)
                if triple is None:  # this adapter does not touch this layer
                    continue
                A, B, scale = triple
                # x[rows]: [r, T, in] -> [r, T, rank] -> [r, T, out]; only the rows that asked for it.
                out[rows] += (x[rows] @ A.t()) @ B.t() * scale
            return out
        return hook

    @contextlib.contextmanager
    def rows(self, names: list[str | None]):
        device = self.model.embed_tokens.weight.device
        groups = []
        for name in sorted({n for n in names if n is not None}):
            groups.append((name, torch.tensor([i for i, n in enumerate(names) if n == name], device=device)))
        self.groups = groups
        try:
            yield
        finally:
            self.groups = None
