"""Small building blocks shared by the transformer: RMSNorm and the SwiGLU MLP.

Contract: pure `nn.Module`s with no knowledge of configs beyond their constructor arguments.
Their parameter names (`weight`, `gate_proj`, `up_proj`, `down_proj`) follow the Llama/Qwen
convention so that Hugging Face export is a renaming-free copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: y = w * x / sqrt(mean(x^2) + eps).

    Unlike LayerNorm there is no mean subtraction and no bias: cheaper, and it works as well
    for transformers. The statistic is computed in float32 even under bf16 autocast, because
    a sum of squares in bf16 loses most of its precision.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # PyTorch's own rms_norm: the same ops in C++ (same result, bit for bit), one call.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate(x)) * up(x)).

    The gate decides, per hidden unit, how much of `up(x)` passes; SiLU(z) = z * sigmoid(z)
    is a smooth ReLU. Three matrices of width `inner` instead of two of width 4h.
    """

    def __init__(self, dim: int, inner: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, inner, bias=bias)
        self.up_proj = nn.Linear(dim, inner, bias=bias)
        self.down_proj = nn.Linear(inner, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
