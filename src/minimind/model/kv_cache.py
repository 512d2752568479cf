"""A preallocated key/value cache for incremental decoding.

Contract:
- `KVCache(config, batch_size, max_len)` allocates keys and values for every layer once;
  decoding never reallocates or concatenates.
- All rows of a batch share one write position (`length`): prompts of different lengths are
  *left-padded*, and `valid[b, s]` records which slots hold real tokens. The model turns that
  into an attention mask and into per-row position ids (`position_ids`), so a padded row sees
  exactly what it would see alone.
- The model calls `begin(...)` once per forward, `update(layer, k, v)` in each layer, and
  `commit(T)` at the end. A generation engine only creates the cache and passes it along.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        shape = (config.num_layers, batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0  # slots written so far, identical for every row
        self.padded = False  # True once any padding was written: then a mask is always needed

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def begin(self, num_new: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Reserve slots [length, length + num_new) and return their position ids [B, T].

        A token's position is the number of real tokens before it in its own row, so left
        padding does not shift positions.
        """
        end = self.length + num_new
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens requested, capacity {self.max_len}")
        if attention_mask is None:
            self.valid[:, self.length:end] = True
        else:
            self.valid[:, self.length:end] = attention_mask.bool()
            self.padded = True
        return (self.valid[:, :end].long().cumsum(-1) - 1).clamp(min=0)[:, self.length:end]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, T, D] at the reserved slots; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    # -- row surgery for continuous batching (a server's rows come and go) --------------------

    def view(self, lo: int, hi: int, length: int, padded: bool) -> "KVCache":
        """A cache over rows [lo, hi) that shares this cache's storage: the model writes through it.

        `length` is the view's write position and `padded` whether its rows hold invalid slots
        (then the model builds an explicit mask). Slicing the batch dim keeps views, not copies.
        """
        other = object.__new__(KVCache)
        other.k, other.v = self.k[:, lo:hi], self.v[:, lo:hi]
        other.valid, other.max_len = self.valid[lo:hi], self.max_len
        other.length, other.padded = length, padded
        return other

    def shift(self, rows: int, length: int, delta: int) -> None:
        """Move slots [0, length) of the first `rows` rows by `delta` slots (right if > 0).

        Keys already carry their rotation, and RoPE positions are per row (counted over valid
        slots), so moving a row's slots together changes nothing it computes. Vacated slots
        become invalid.
        """
        if delta > 0:
            src, dst = slice(0, length), slice(delta, length + delta)
        else:
            src, dst = slice(-delta, length), slice(0, length + delta)
        for t in (self.k, self.v):
            t[:, :rows, :, dst] = t[:, :rows, :, src].clone()  # clone: source and target overlap
        self.valid[:rows, dst] = self.valid[:rows, src].clone()
        if delta > 0:
            self.valid[:rows, :delta] = False
        else:
            self.valid[:rows, length + delta:] = False

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy row `src`'s first `length` slots onto row `dst` (compacting finished rows away)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]
        self.valid[dst] = self.valid[src]

    def commit(self, num_new: int) -> None:
        self.length += num_new

    def reset(self) -> None:
        self.length, self.padded = 0, False
        self.valid.zero_()
