"""Grouped-query self-attention with RoPE, optional QK-norm and a KV cache.

Contract: `Attention(config)(x, cos, sin, mask, layer_idx, cache)` maps [B, T, h] -> [B, T, h]
(cos and sin as `RotaryTables` returns them: sin signed for `rope.rotate`).
`mask` is None for plain causal attention, else a boolean [B, 1, T, S] (True = may attend) or a
flex-attention `BlockMask`, built once per forward by the model and shared by all layers.

Document masking (packed rows of several documents): `document_runs(doc_ids)` numbers the runs of
equal ids in each row, `document_positions(doc_ids)` restarts positions at 0 in each run, and
`document_mask(doc_ids, key_valid, flex)` lets a token attend only to earlier tokens of its own run:
a block-diagonal causal boolean mask for SDPA, or with `flex` (see `use_flex`: CUDA, when this
PyTorch has `torch.nn.attention.flex_attention`, no attention dropout) a `BlockMask`, whose kernel
skips the blocks between documents instead of computing and discarding them.

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

Decoding (one query per row, `T == 1`, no dropout) skips SDPA: `decode_attend` views the H query
heads as [Hkv, G] groups and does two small batched matmuls against the un-repeated K/V heads.
One query needs no causal mask and no tiling, and SDPA's fixed cost per call (kernel selection,
its own GQA broadcast) is larger than the work at these sizes.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

try:  # flex attention arrived in PyTorch 2.5; without it document masking uses SDPA everywhere
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - depends on the installed PyTorch
    BlockMask = create_block_mask = flex_attention = None

from ..config import ModelConfig
from .kv_cache import KVCache
from .layers import RMSNorm
from .rope import rotate


def native_gqa(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether to let SDPA broadcast the K/V heads (`enable_gqa`) rather than repeat them first."""
    if device_type != "cuda":
        return True
    return not masked and dtype in (torch.float16, torch.bfloat16)


def use_flex(device_type: str, dropout: float) -> bool:
    """Whether document masks go to flex attention: CUDA only (its compiled kernel is what pays off;
    elsewhere it would materialise the scores anyway), and it has no attention dropout."""
    return flex_attention is not None and device_type == "cuda" and dropout == 0.0


@functools.cache
def _compiled_flex():
    # Uncompiled, flex_attention computes every score in Python-level ops; compiled it is a fused
    # kernel that skips fully masked blocks. Compiled once per process.
    return torch.compile(flex_attention, dynamic=False)


def _document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] True at each document's first token: position 0 and wherever the id changes."""
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return start


def document_runs(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B, T] run numbers 0, 1, ...: two separate stretches that reuse one id
    (padding, say) are still different documents."""
    return _document_starts(doc_ids).long().cumsum(-1) - 1


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] position of each token inside its document (0 at each document's first token)."""
    idx = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    first = torch.where(_document_starts(doc_ids), idx, 0).cummax(-1).values  # current document's start
    return idx - first


def document_mask(doc_ids: torch.Tensor, key_valid: torch.Tensor | None = None, flex: bool = False):
    """Block-diagonal causal mask: query i may see key j iff j <= i, both in one document, and
    key j is real (`key_valid` [B, T], left padding). Boolean [B, 1, T, T], or a `BlockMask`."""
    runs = document_runs(doc_ids)
    B, T = runs.shape
    if flex:
        def mask_mod(b, h, q, kv):
            keep = (runs[b, q] == runs[b, kv]) & (kv <= q)
            return keep & key_valid[b, kv] if key_valid is not None else keep

        return create_block_mask(mask_mod, B=B, H=None, Q_LEN=T, KV_LEN=T, device=doc_ids.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    allowed = causal & (runs[:, :, None] == runs[:, None, :])  # [B, T, T]
    if key_valid is not None:
        # Every query keeps itself, so no row is fully masked (a fully masked row is NaN).
        allowed = (allowed & key_valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=runs.device)
    return allowed.unsqueeze(1)


def decode_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one query per row: q [B, H, 1, D], k, v [B, Hkv, S, D], mask None or bool
    [B, 1, 1, S] (True = may attend). The G = H / Hkv query heads of a group share one K/V head,
    so they become the rows of one [G, D] @ [D, S] product: no copy of K/V per query head.
    Written with `bmm` on [B * Hkv, ...] (views of the cache: its row and head dims merge)."""
    B, H, _, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    scores = torch.bmm(q.reshape(B * Hkv, G, D) * D ** -0.5, k.reshape(B * Hkv, S, D).transpose(1, 2))
    if mask is not None:
        scores = scores.view(B, Hkv * G, S).masked_fill(~mask.reshape(-1, 1, S), float("-inf"))
    probs = scores.softmax(-1).view(B * Hkv, G, S)
    return torch.bmm(probs, v.reshape(B * Hkv, S, D)).view(B, H, 1, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, causal: bool,
           dropout: float, native: bool) -> torch.Tensor:
    """SDPA over q [B, H, T, D] and k, v [B, Hkv, S, D]; `native` picks how GQA is done (see above).
    A `BlockMask` goes to flex attention (which broadcasts the K/V heads itself)."""
    groups = q.shape[1] // k.shape[1]
    if q.shape[2] == 1 and dropout == 0.0 and (mask is None or isinstance(mask, torch.Tensor)):
        return decode_attend(q, k, v, mask)
    if k.stride(-1) != 1:
        # Keys straight from the KV cache (stored transposed, kv_cache.py): the fused SDPA kernels
        # want a contiguous last dim, and without one CUDA would fall back to the O(T^2) math kernel.
        k = k.contiguous()
    if BlockMask is not None and isinstance(mask, BlockMask):
        flex = _compiled_flex() if q.device.type == "cuda" else flex_attention
        return flex(q, k, v, block_mask=mask, enable_gqa=groups > 1)
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

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, T, H*D], k, v [B, T, Hkv*D]. Inference may replace this with one fused matmul
        on the stacked weights (infer/packed_linear.py): the same products."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask,
                layer_idx: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x)
        # [B, T, H*D] -> [B, H, T, D]
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # sin: the tables' signed sin
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
