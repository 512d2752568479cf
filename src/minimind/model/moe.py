"""Mixture-of-experts feed-forward layer: a softmax router picks top-k SwiGLU experts per token.

Contract: `MoE(config)(x, token_mask)` returns (y [B, T, h], aux_loss scalar).
- Router: p = softmax(x W_r^T) over the E routed experts (computed in float32); each token goes
  to its k most probable experts, weighted by their probabilities (renormalised to sum to 1
  when `norm_topk_prob`).
- Shared experts see every token and are added unweighted. Several shared experts are stored as
  one SwiGLU of width n_shared * I: the sum of n MLPs equals one MLP with their rows stacked.
- Dispatch sorts the (token, expert) assignments by expert, so each expert's tokens sit in one
  contiguous slice. Where `torch._grouped_mm` runs (CPU; CUDA bf16 on Hopper and newer) the
  experts' weights are stacked and one grouped matmul per projection covers every slice, with the
  slice boundaries read on the device: no host sync, no graph break under torch.compile.
  Elsewhere each expert runs on its slice in a Python loop over experts (never over tokens); that
  path must read the slice sizes on the host, one device sync per MoE layer.
- aux_loss is the Switch-Transformer load-balancing loss E * sum_e f_e * P_e, with f_e the share
  of assignments that went to expert e and P_e its mean router probability. It is exactly 1.0
  for perfectly balanced routing and grows to E when every token picks the same expert; it is
  returned unweighted (multiply by `config.aux_loss_coef`). With aux_loss_level "seq" it is
  computed per sequence and averaged, with "batch" over all tokens of the batch at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import SwiGLU


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear would compute in here: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class MoE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, inner = config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.norm_topk_prob, self.aux_level = config.norm_topk_prob, config.aux_loss_level
        self.gate = nn.Linear(h, config.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(SwiGLU(h, inner) for _ in range(config.num_experts))
        self.shared_experts = SwiGLU(h, inner * config.num_shared_experts) if config.num_shared_experts else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, h] -> router probabilities [N, E], top-k weights [N, k] and expert ids [N, k]."""
        # Routing decisions are discrete, so rounding in the logits flips experts: keep the router
        # in float32 even under autocast (which would otherwise run this linear in bf16/fp16).
        with torch.autocast(device_type=x.device.type, enabled=False):
            probs = F.softmax(F.linear(x.float(), self.gate.weight.float()), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights, experts

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, h = x.shape
        flat = x.reshape(-1, h)
        probs, weights, experts = self.route(flat)

        # Sort the N*k assignments by expert id; counts[e] assignments then sit contiguously.
        assigned_expert = experts.reshape(-1)  # [N*k]
        order = assigned_expert.argsort(stable=True)
        token_of = order // self.top_k  # which token each sorted assignment came from
        # scatter, not bincount: a fixed [E] shape, so no data-dependent size under compile
        counts = torch.zeros(self.num_experts, dtype=torch.long, device=flat.device)
        counts.scatter_add_(0, assigned_expert, torch.ones_like(assigned_expert))
        inputs = flat[token_of]
        # Every expert runs, even on an empty slice: its weights then get a zero gradient instead
        # of none, which DDP needs (a parameter without a gradient stalls its all-reduce).
        if self._grouped_ok(inputs):
            outputs = self._grouped_experts(inputs, counts)
        else:
            sizes = counts.tolist()  # the one host sync of this path
            outputs = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, inputs.split(sizes))])
        outputs = outputs * weights.reshape(-1)[order].unsqueeze(-1).to(outputs.dtype)
        # Scatter-add each weighted expert output back onto its token.
        y = torch.zeros_like(flat).index_add_(0, token_of, outputs.to(flat.dtype))
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view(B, T, h), self.balance_loss(probs.view(B, T, -1), experts.view(B, T, -1), token_mask)

    def _grouped_ok(self, x: torch.Tensor) -> bool:
        """Whether `torch._grouped_mm` can run the experts here (see the module docstring)."""
        if not hasattr(torch, "_grouped_mm"):
            return False
        dtype = _compute_dtype(x)
        inner = self.experts[0].gate_proj.out_features
        aligned = all(n * dtype.itemsize % 16 == 0 for n in (x.shape[-1], inner))  # the kernel's stride rule
        if x.device.type == "cpu":  # the compiler's shape rules (meta kernel) take bf16 only
            return aligned and (dtype == torch.bfloat16 or not torch.compiler.is_compiling())
        return (x.device.type == "cuda" and aligned and dtype == torch.bfloat16
                and torch.cuda.get_device_capability(x.device)[0] >= 9)

    def _grouped_experts(self, inputs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """All experts' SwiGLU on their slices of `inputs` [M, h] (sorted by expert) at once."""
        dtype = _compute_dtype(inputs)
        offs = counts.cumsum(0).to(torch.int32)  # end of each expert's slice, on the device

        def stacked(name: str) -> torch.Tensor:  # [E, in, out]: the Linear weights, transposed
            return torch.stack([getattr(e, name).weight for e in self.experts]).to(dtype).transpose(1, 2)

        x = inputs.to(dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            gate = torch._grouped_mm(x, stacked("gate_proj"), offs=offs)
            up = torch._grouped_mm(x, stacked("up_proj"), offs=offs)
            return torch._grouped_mm(F.silu(gate) * up, stacked("down_proj"), offs=offs)

    def balance_loss(self, probs: torch.Tensor, experts: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """E * sum_e f_e P_e over real (unpadded) tokens; probs [B, T, E], experts [B, T, k]."""
        B, T, E = probs.shape
        m = torch.ones(B, T, 1, device=probs.device) if token_mask is None else token_mask.float().unsqueeze(-1)
        # times each token chose e, [B, T, E]; a scatter, since one_hot checks its input on the host
        picks = probs.new_zeros(B, T, E).scatter_add_(-1, experts, torch.ones_like(experts, dtype=probs.dtype)) * m
        dims = (0, 1) if self.aux_level == "batch" else (1,)
        n = m.sum(dims).clamp(min=1)  # real tokens per group: [1] or [B, 1]
        f = picks.sum(dims) / (n * self.top_k)  # share of assignments per expert
        p = (probs * m).sum(dims) / n  # mean router probability per expert
        return (E * (f * p).sum(-1)).mean()
