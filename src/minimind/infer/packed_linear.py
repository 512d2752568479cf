"""Faster CPU matmuls for inference: the model's Linear layers run on oneDNN with pre-packed weights.

Contract:
- `PackedLinears(model)` finds every `nn.Linear` of the model; `packed.available` says whether
  it can help (fp32 weights on the CPU, a PyTorch whose BLAS is MKL and that has oneDNN).
- `with packed.active():` makes each Linear of the model compute `x @ W^T + b` with oneDNN and a
  copy of W re-laid-out once for it (the "packed" weight), for the forwards run inside the
  block. Outside such a block the model is untouched. Hooks on the Linear modules (LoRA
  adapters, see adapters.py) still see the same inputs and outputs.
- A packed copy is rebuilt when its weight changes (a new tensor, or an in-place update:
  tensors carry a version counter), so training between generations never uses stale weights.
- Fused projections: inside the block, each attention's q/k/v projections run as ONE matmul on
  their weights stacked [Wq; Wk; Wv] (`Attention.project_qkv`), and each SwiGLU's gate/up as one
  on [Wgate; Wup]: 57 -> 33 matmuls per forward of `small`, each with a fixed cost of ~10 us and
  the wider ones more efficient. The model's parameters, checkpoints and export are untouched:
  the stacked copy exists only packed, here. A group with a hook on any member (a LoRA adapter)
  runs unfused, so the hook still sees its own Linear's input and output.

Why: PyTorch's CPU wheels send fp32 `linear` to MKL's sgemm, which on AMD processors takes a
generic code path; oneDNN with a packed weight is 2-3x faster for the shapes inference has
(a decode step of 4..64 rows, a prefill of thousands). Even one row (batch-1 decoding, a
matrix-vector product bound by memory bandwidth) measured ~25% faster inside the model. The result is the same product summed in another order: equal to fp32 rounding (~1e-6 relative).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..model.attention import Attention
from ..model.cpu_linear import onednn_nt, replaces_mkl
from ..model.layers import SwiGLU

# oneDNN picks the packed layout for a typical number of rows; any other row count still works.
_PACK_ROWS_HINT = 16
# Fuse projections only up to this many rows (decoding). For a prefill the fused matmul is no
# faster, and SiLU and the gate * up product on the strided halves of its output are slower.
_FUSE_MAX_ROWS = 64


def _ops_available() -> bool:
    # Only where oneDNN replaces MKL (model/cpu_linear.py): ARM builds keep their own BLAS.
    return replaces_mkl() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


# id(first weight) -> (weak reference to it, {ids of its group: (versions, other weights, packed,
# bias)}). Not a WeakKeyDictionary: that compares colliding keys with ==, elementwise on tensors.
_PACKS: dict[int, tuple[weakref.ref, dict]] = {}


def _entries_of(w: torch.Tensor) -> dict:
    """The packed entries memoised on `w`; dropped when `w` is garbage-collected."""
    slot = _PACKS.get(id(w))
    if slot is None or slot[0]() is not w:
        key = id(w)
        slot = _PACKS[key] = (weakref.ref(w, lambda _, key=key: _PACKS.pop(key, None)), {})
    return slot[1]


def packed_weight(weights: tuple[torch.Tensor, ...], biases: tuple[torch.Tensor, ...] = ()) -> tuple:
    """(packed [W_1; W_2; ...], stacked bias or None) for oneDNN, packed once and re-packed when a
    weight is replaced or updated in place (its version counter moves): an engine reused after an
    optimizer step never computes with stale weights. Caveat: PyTorch's fused AdamW kernel updates
    parameters without moving their version counters; after such steps make a new `PackedLinears`
    (a new Engine), which drops its model's packs.

    Memoised on the first weight tensor itself (weakly: the entry dies with the weight), so the
    eager forwards here and the `minimind::packed_linear` op below, which sees only tensors, share
    one packed copy."""
    entries = _entries_of(weights[0])
    key = tuple(map(id, weights))
    versions = tuple(t._version for t in weights + biases)
    entry = entries.get(key)
    # The entry keeps the group's other weights alive (never the first: it would then never die),
    # so an id in `key` cannot be reused by another tensor while the entry exists.
    if entry is None or entry[0] != versions or any(a is not b for a, b in zip(entry[1], weights[1:])):
        with torch.no_grad():
            w = weights[0].detach() if len(weights) == 1 else torch.cat([w.detach() for w in weights])
            bias = None if not biases else biases[0] if len(biases) == 1 else torch.cat(biases)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, _PACK_ROWS_HINT)
            entry = entries[key] = (versions, weights[1:], packed, bias)
    return entry[2], entry[3]


def _packed_linear(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    w, b = packed_weight(tuple(weights), tuple(biases))
    return onednn_nt(x, w, b)


def _packed_linear_shape(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    return x.new_empty(x.shape[0], sum(w.shape[0] for w in weights))


# `torch.compile` cannot trace oneDNN's packed weights (an opaque tensor layout), so a compiled
# forward (static_decode.py) calls this op instead: to the compiler a black box with a known output
# shape, at run time the same packed matmul. Registered at the C++ level (a plain `Library.impl`,
# not `custom_op`): ~5 us of overhead per call instead of ~15.
_LIB = torch.library.Library("minimind", "DEF")
_LIB.define("packed_linear(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor")
_LIB.impl("packed_linear", _packed_linear, "CPU")
torch.library.register_fake("minimind::packed_linear", _packed_linear_shape, lib=_LIB)


class PackedLinears:
    def __init__(self, model: nn.Module) -> None:
        self.linears = [m for m in model.modules() if type(m) is nn.Linear]
        w = self.linears[0].weight if self.linears else None
        self.available = (w is not None and w.device.type == "cpu" and w.dtype == torch.float32
                          and _ops_available())
        # A new instance packs afresh: an update that bypasses the version counter (the fused AdamW
        # kernel's does) would otherwise leave an earlier engine's packs looking current. The RL
        # stages build a new Engine for each rollout for this reason.
        for lin in self.linears:
            _PACKS.pop(id(lin.weight), None)
        # (module, attribute, replacement) installed on entering `active()`, removed on leaving
        self._overrides = [(lin, "forward", self._forward_for(lin)) for lin in self.linears]
        for m in model.modules():
            if isinstance(m, Attention):
                self._overrides.append((m, "project_qkv", self._qkv_for(m)))
            elif type(m) is SwiGLU:
                self._overrides.append((m, "forward", self._swiglu_for(m)))

    def _usable(self, x: torch.Tensor) -> bool:
        return x.numel() > 0 and x.is_cpu and x.dtype == torch.float32 and not torch.is_grad_enabled()

    def _fusable(self, x: torch.Tensor, group: tuple[nn.Linear, ...]) -> bool:
        return x.numel() <= _FUSE_MAX_ROWS * x.shape[-1] and self._usable(x) and not has_forward_hooks(group)

    def _matmul(self, x: torch.Tensor, group: tuple[nn.Linear, ...]) -> torch.Tensor:
        """x [..., in] @ [W_1; W_2; ...]^T + b on oneDNN: [..., sum of out_features]."""
        x2 = x.reshape(-1, group[0].in_features)
        weights = tuple(lin.weight for lin in group)
        biases = tuple(lin.bias for lin in group if lin.bias is not None)
        if torch.compiler.is_compiling():  # the compiler sees the op, not the packed tensor
            y = torch.ops.minimind.packed_linear(x2, list(weights), list(biases))
        else:
            w, b = packed_weight(weights, biases)
            y = onednn_nt(x2, w, b)
        return y.view(*x.shape[:-1], y.shape[-1])

    def _forward_for(self, lin: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        group = (lin,)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self._usable(x):
                return F.linear(x, lin.weight, lin.bias)
            return self._matmul(x, group)
        return forward

    def _qkv_for(self, attn: Attention) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        group = (attn.q_proj, attn.k_proj, attn.v_proj)
        sizes = [lin.out_features for lin in group]
        unfused = type(attn).project_qkv.__get__(attn)

        def project_qkv(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if not self._fusable(x, group):
                return unfused(x)
            return self._matmul(x, group).split(sizes, dim=-1)  # views, no copies
        return project_qkv

    def _swiglu_for(self, mlp: SwiGLU) -> Callable[[torch.Tensor], torch.Tensor]:
        group = (mlp.gate_proj, mlp.up_proj)
        unfused = type(mlp).forward.__get__(mlp)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self._fusable(x, group):
                return unfused(x)
            gate, up = self._matmul(x, group).chunk(2, dim=-1)
            return mlp.down_proj(F.silu(gate) * up)
        return forward

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Route the model's Linear layers (fused where possible) through packed weights in this block."""
        if not self.available:
            yield
            return
        # An instance attribute shadows the class's method; nn.Module.__call__ (and so every
        # hook) is unchanged. Written to __dict__ directly: nn.Module.__setattr__ is slow.
        # What was there before (a trainer's oneDNN forward, model/cpu_linear.py) comes back after.
        before = [module.__dict__.get(name) for module, name, _ in self._overrides]
        for module, name, fn in self._overrides:
            module.__dict__[name] = fn
        try:
            yield
        finally:
            for (module, name, _), old in zip(self._overrides, before):
                if old is None:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = old


def has_forward_hooks(modules: Iterable[nn.Module]) -> bool:
    """Whether any of `modules` has forward (pre-)hooks: a fused group's Linears must then each run
    as themselves, and a compiled step would skip them (static_decode.py)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)
