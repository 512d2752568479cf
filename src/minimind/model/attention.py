"""Grouped-query self-attention with RoPE, optional QK-norm and a KV cache.

Contract: `Attention(config)(x, cos, sin, mask, layer_idx, cache)` maps [B, T, h] -> [B, T, h].
`mask` is None for plain causal attention, else a boolean [B, 1, T, S] (True = may attend),
built once per forward by the model and shared by all layers.

GQA: n_heads query heads share n_kv_heads key/value heads (groups of n_heads/n_kv_heads), which
cuts the KV cache by that factor at almost no quality cost.

Kernel choice (`native_gqa`): PyTorch's SDPA can broadcast the shared heads itself
(`enable_gqa`), but on CUDA only the flash and math kernels accept that flag, and flash takes
neither a mask nor fp32. So a masked call (left-padded prefill, decoding padded rows) or an fp32
one with `enable_gqa` would fall to the math kernel: O(T^2) memory for the scores. There we
repeat K/V to the query heads (a copy of the keys, far smaller than T x T scores) and call
without it, which lets the memory-efficient kernel run. Unmasked bf16/fp16 keeps `enable_gqa`
(flash). Elsewhere (CPU, MPS) the native path is kept: their kernels take the flag with a mask.
Both calls compute the same attention (tests/test_gpu_paths.py checks it on the CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .kv_cache import KVCache
from .layers import RMSNorm
from .rope import apply_rope


def native_gqa(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether to let SDPA broadcast the K/V heads (`enable_gqa`) rather than repeat them first."""
    if device_type != "cuda":
        return True
    return not masked and dtype in (torch.float16, torch.bfloat16)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
           dropout: float, native: bool) -> torch.Tensor:
    """SDPA over q [B, H, T, D] and k, v [B, Hkv, S, D]; `native` picks how GQA is done (see above)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and not native:
        # Query head h uses K/V head h // groups: exactly what enable_gqa broadcasts.
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout,
                                          enable_gqa=groups > 1 and native)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, d
        self.q_proj = nn.Linear(h, config.num_heads * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, config.num_kv_heads * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, config.num_kv_heads * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * d, h, bias=config.o_bias)
        # QK-norm (Qwen3): normalising each head's q and k bounds the attention logits, which
        # keeps training stable at high learning rates.
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                layer_idx: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        # [B, T, H*D] -> [B, H, T, D]
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # now [B, Hkv, S, D] with S = past + T
        # One new token may see every cached one, so only T > 1 needs the causal mask. Written as
        # a branch on purpose: under torch.compile with dynamic shapes `T > 1` is symbolic, SDPA
        # rejects a symbolic `is_causal` (a graph break in every layer), while a branch becomes a
        # guard on T and leaves a plain Python bool.
        causal = False
        if mask is None and T > 1:
            causal = True
        native = native_gqa(q.device.type, q.dtype, mask is not None)
        out = attend(q, k, v, mask, causal, self.dropout if self.training else 0.0, native)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))
