"""Rotary position embeddings (RoPE) with optional YaRN context extension.

Contract:
- `rope_inv_freq(head_dim, theta, scaling)` returns the per-pair rotation frequencies and the
  attention factor that scales cos/sin; `scaling` uses the keys and semantics of transformers'
  `rope_scaling={"rope_type": "yarn", ...}` so exported models behave identically there.
- `RotaryTables` precomputes cos/sin for every position up to `max_seq_len` once; the model
  gathers rows by position id, so sequences in a batch may sit at different positions. Its
  forward returns cos and the *signed* sin (first half negated, see `rotate`), cast once per
  forward to the compute dtype, for all layers.
- `apply_rope(x, cos, sin)` rotates q or k of shape [B, H, T, D] given plain cos/sin;
  `rotate(x, cos, signed_sin)` is the same rotation given the tables' signed sin (the model's path).

The idea: split each head vector into D/2 pairs and rotate pair i by angle pos * f_i. A dot
product q.k then depends only on the *difference* of the two positions. We use the
"rotate-half" layout of Llama/Qwen: pair i is (x[i], x[i + D/2]).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _yarn(pos_freqs: torch.Tensor, head_dim: int, theta: float, scaling: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv 2309.00071): stretch only the slow-rotating pairs.

    Pairs that complete many rotations within the original context (high frequency, small i)
    already "know" relative positions and are kept as is (extrapolation). Pairs that rotate
    less than once are interpolated: their frequency is divided by `factor`, so the longer
    context maps into angles seen in training. A linear ramp between the two regimes covers
    the pairs in between; `beta_fast`/`beta_slow` give the ramp's ends in rotations.
    """
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings")
    if original is None:
        raise ValueError("YaRN rope_scaling needs original_max_position_embeddings")
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def pair_index_for(rotations: float) -> float:
        # The pair i that turns `rotations` times over `original` positions: solve
        # original * theta^(-2i/D) = 2*pi*rotations for i.
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_index_for(beta_fast), pair_index_for(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 -> keep the original frequency, 0 -> fully interpolated
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        # Longer contexts flatten attention; YaRN sharpens it back by scaling q and k
        # (here: cos and sin) by 0.1 * ln(factor) + 1.
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, float(attention_factor)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> tuple[torch.Tensor, float]:
    """Frequencies f_i = theta^(-2i/D) for i in [0, D/2), and the cos/sin scale."""
    pos_freqs = theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return 1.0 / pos_freqs, 1.0
    return _yarn(pos_freqs, head_dim, theta, scaling)


class RotaryTables(nn.Module):
    """cos/sin tables of shape [max_seq_len, head_dim], gathered by position ids."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta, self.scaling = head_dim, max_seq_len, theta, scaling
        cos, sin = self._tables()
        # Not saved in checkpoints: they are a pure function of the config.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("signed_sin", signed(sin), persistent=False)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, scale = rope_inv_freq(self.head_dim, self.theta, self.scaling)
        pos = torch.arange(self.max_seq_len, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)  # [T, D/2]: angle of pair i at position t
        angles = torch.cat([angles, angles], dim=-1)  # [T, D]: rotate-half layout repeats them
        return angles.cos() * scale, angles.sin() * scale

    def reset(self) -> None:
        """Recompute the tables (after `to_empty()` on a meta-device model, for instance)."""
        cos, sin = self._tables()
        self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        self.signed_sin = signed(self.sin)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, T] -> cos, signed sin of shape [B, 1, T, D] (broadcast over heads)."""
        cos, sin = self.cos[position_ids].unsqueeze(1), self.signed_sin[position_ids].unsqueeze(1)
        return (cos, sin) if cos.dtype == dtype else (cos.to(dtype), sin.to(dtype))


def signed(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half (over the last dim) negated: the sign of rotate-half folded in."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90 degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (a, b) by angle t: (a cos t - b sin t, b cos t + a sin t).

    `x.roll(D/2)` swaps the halves, (a, b) -> (b, a), and the signed sin (-sin, +sin) supplies the
    minus: the same products as `rotate_half(x) * sin`, bit for bit, in one op instead of three
    (chunk, neg, cat). The result keeps x's dtype: under autocast q and k come out of their
    projections in bf16 while the tables follow the fp32 residual stream, and mixing them would
    upcast q and k (and with them the KV cache) to fp32.
    """
    if cos.dtype != x.dtype:  # a Python check: no cast op at all in the common case
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rotate` given the plain sin (for callers holding their own cos/sin)."""
    return rotate(x, cos, signed(sin))
