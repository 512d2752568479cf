"""A compiled decode step: one new token for each of n rows, traced once, reused as the cache fills.

Contract:
- `CompiledDecode(model)(ids, cache) -> logits`: ids [n, 1], `cache` a `KVCache` (or a view over
  its first rows) that already holds the rows' earlier tokens; returns the next-token logits
  [n, V], what `model(ids, kv_cache=cache).logits[:, -1]` returns (to fp32 rounding), and
  advances the cache exactly as that forward would.
- Call it where the model's Linear layers should run (inside `PackedLinears.active()` on the CPU:
  the compiled graph then calls the packed oneDNN matmuls through `minimind::packed_linear`).
- Dense models only (`CompiledDecode.supports`): a mixture-of-experts layer picks its experts
  from the data, which one graph cannot express; the engine decodes those eagerly. So it does a
  model with forward hooks (`ready()` is False), such as one with LoRA adapters loaded.

Why: an eager decode step dispatches ~450 small operations from Python (norms, RoPE, cache writes,
softmax, residual adds) around its ~33 matmuls. `torch.compile` fuses the elementwise ones into a
few generated kernels (C++ on the CPU, Triton on CUDA, where each saved launch matters most).

Why it does not recompile: a graph is traced for the shapes it first sees, and the eager step's
shapes change every token (the cache grows by one slot). Compiling the model's forward as it is
therefore recompiled or ran slow symbolic code. Here:
- the slot to write is a tensor (`cache.length`), so it is data, not part of the graph;
- exactly the sizes that change are symbols: the row count, the number of slots attended (`end`,
  the mask's last size) and the cache's slot capacity (`maybe_mark_dynamic`); everything else
  (heads, head size, widths) stays a constant, so the generated loops have fixed bounds and are
  vectorised (with every size symbolic, `dynamic=True`, the softmax kernel ran scalar code and the
  step was ~8% slower than eager at 16 rows; compiling took 38 s instead of 65 s cold). After the
  first traces (several rows; one row) every step reuses the graph;
- each layer's cache goes in whole (dense tensors, updated in place) and the attended slots are
  cut inside the graph: writing into an already-cut view (its strides carry the capacity, its
  size the slots) made the compiler copy the whole window every step;
- positions come from the cache's per-row counts, and the attention mask from its `valid`
  slots, both tensors.
On the 2-core development CPU this step is ~7% faster than the eager one for one row and equal at
16 rows (the matmuls and the attention's reads of the cache are the floor there, docs/benchmarks.md);
it is the decode step for accelerators, where launching ~450 kernels per token is the cost.
"""

from __future__ import annotations

import functools

import torch
from torch.fx.experimental import _config as fx_config

from ..model import KVCache, MiniMindLM
from .packed_linear import has_forward_hooks


class _SlotWriter:
    """The cache as the model's attention layers see it inside the compiled step: `update` writes
    a layer's new key/value at `slot` and returns that layer's first `end` slots.

    It holds each layer's whole cache, keys in their stored layout [n, Hkv, D, capacity] (see
    model/kv_cache.py) and values [n, Hkv, capacity, D]."""

    def __init__(self, slot: torch.Tensor, end: int, keys_t: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.slot, self.end, self.keys_t, self.values = slot, end, keys_t, values

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [n, Hkv, 1, D] -> the layer's keys and values [n, Hkv, end, D], new slot included."""
        keys_t, values = self.keys_t[layer], self.values[layer]
        keys_t[:, :, :, self.slot] = k.transpose(-1, -2)  # an in-place write at a data-given slot
        values[:, :, self.slot] = v
        # narrow, not [:end]: a slice may run past the end (clamped to the size), narrow may not,
        # so the graph need not tell `end == capacity` from `end < capacity`.
        return keys_t.narrow(3, 0, self.end).transpose(-1, -2), values.narrow(2, 0, self.end)


def _decode(model: MiniMindLM, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor,
            keys_t: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """The step that gets compiled (see `_compiled_decode`). The attended slot count is the mask's
    last size: a tensor size marked dynamic, where an int argument would be specialised."""
    end = mask.shape[-1]
    x = model.embed_tokens(ids)
    cos, sin = model.rope(pos, x.dtype)
    x, _ = model.run_layers(x, cos, sin, mask, _SlotWriter(slot, end, keys_t, values))
    return model.lm_head(model.norm(x))[:, -1]


@functools.cache
def _compiled_decode():
    # One compiled function for every model and engine: a graph is keyed by what it was traced for
    # (shapes, module structure), not by which engine asked, so engines built for each rollout or
    # batch size reuse it instead of each tracing its own (torch stops compiling a function after 8
    # traces). Built on first use: importing the compiler takes ~1.8 s, which `chat` need not pay.
    # dynamic=None: sizes are constants unless `CompiledDecode.__call__` marks them.
    return torch.compile(_decode, dynamic=None)


class CompiledDecode:
    def __init__(self, model: MiniMindLM) -> None:
        self.model = model
        self._modules = list(model.modules())

    def ready(self) -> bool:
        """Whether the compiled step may run now: no forward hooks on any module of the model.
        torch.compile does not guard on hooks (`torch._dynamo.config.skip_nnmodule_hook_guards`), so
        a graph traced without one would silently skip a hook added later (a LoRA adapter, a
        user's probe). A hooked model decodes eagerly."""
        return not has_forward_hooks(self._modules)

    @staticmethod
    def supports(model: MiniMindLM) -> bool:
        """Dense models: expert routing (MoE) has data-dependent shapes."""
        return not model.config.is_moe

    def __call__(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [n, V] of the next token after ids [n, 1]; the cache advances by one slot."""
        slot = cache.length
        self.model.check_length(slot + 1)
        pos = cache.begin(1, None)  # marks the slot valid in every row; positions [n, 1] per row
        end = slot + 1
        mask = cache.key_valid(end)[:, None, None, :]  # always a mask: one graph, padded rows or not
        layers = range(self.model.config.num_layers)
        keys_t = [cache.k[i].transpose(-1, -2) for i in layers]  # the stored layout, dense
        values = [cache.v[i] for i in layers]
        slot_t = torch.tensor([slot], device=ids.device)
        # The sizes that vary from step to step or engine to engine, and only those, are symbols:
        # rows (dim 0 everywhere), attended slots (the mask's last dim), slot capacity (keys
        # [n, Hkv, D, capacity], values [n, Hkv, capacity, D]). "maybe": one row stays a trace of
        # its own (torch specialises sizes 0 and 1) rather than an error.
        for t, dims in ((ids, [0]), (pos, [0]), (mask, [0, 3])):
            torch._dynamo.maybe_mark_dynamic(t, dims)
        for k, v in zip(keys_t, values):
            torch._dynamo.maybe_mark_dynamic(k, [0, 3])
            torch._dynamo.maybe_mark_dynamic(v, [0, 2])
        # They are views of the whole cache, and torch guards the bases' strides too: keys
        # [layers, rows, Hkv, D, capacity], values [layers, rows, Hkv, capacity, D] (kv_cache.py).
        # Unmarked, the capacity in those strides became a constant and the next cache size traced again.
        torch._dynamo.maybe_mark_dynamic(keys_t[0]._base, [1, 4])
        torch._dynamo.maybe_mark_dynamic(values[0]._base, [1, 3])
        # No "duck sizing" (two sizes that happen to be equal at the first trace, such as the row
        # count and the cache's rows, would become one symbol, and the next step, when they
        # differ, would trace again).
        with fx_config.patch(use_duck_shape=False):
            logits = _compiled_decode()(self.model, ids, pos, mask, slot_t, keys_t, values)
        cache.commit(1)
        return logits
