"""fp32 matrix products on oneDNN for the CPU: linear layers with gradients, for training and scoring.

Contract:
- `has_onednn_linear()`: this PyTorch build has oneDNN's linear op; `onednn_nt(a, b, bias)` calls it.
- `replaces_mkl()`: this build's CPU BLAS is MKL and oneDNN's linear op is there: the case this
  module is for. Elsewhere (ARM builds: Apple's Accelerate, OpenBLAS) nothing here changes a thing.
- `onednn_usable(*tensors)`: oneDNN should take these (all on the CPU, all float32, no CPU autocast
  active, and `replaces_mkl()`).
- `matmul_nt(a, b)` = `a @ b.T` for 2-D fp32 CPU tensors (any strides), on oneDNN when usable,
  else plain `torch.matmul`. No gradient: for code that writes its own backward (lm_loss.py).
- `linear(x, weight, bias=None)` = `F.linear(x, weight, bias)` in value (fp32 rounding: the same
  sums in another order, ~1e-6 relative) and in gradients, with the forward and both backward
  products (dx = dy W, dW = dy^T x) on oneDNN when usable; otherwise it *is* `F.linear`.
- `use_onednn_linears(model)` makes every `nn.Linear` of `model` compute through `linear` (an
  instance-level `forward`, so forward hooks such as LoRA adapters still see the same inputs and
  outputs); it returns how many layers it changed.

Why: PyTorch's CPU wheels send fp32 matrix products to MKL's sgemm, which on AMD processors takes a
generic code path. oneDNN (also inside every wheel) runs the same fp32 products at about twice the
speed there (measured on the development machine, an AMD EPYC, 1 thread: 96-107 -> 185-240
GFLOP/s for the forward, input-gradient and weight-gradient shapes of `small`); on Intel processors
MKL is expected to be as fast (not measured here). Builds without MKL (ARM, Apple silicon) keep
their own, often faster, BLAS: `use_onednn_linears` leaves their models alone. A training step on
the CPU is ~77% matrix products, so this is the biggest lever the CPU trainer has
(docs/benchmarks.md). Under CPU autocast (bf16), `F.linear` already goes to oneDNN's bf16
kernels, so `linear` leaves it alone.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def has_onednn_linear() -> bool:
    """Whether this PyTorch build has oneDNN and its linear op (`mkldnn._linear_pointwise`)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def replaces_mkl() -> bool:
    """Whether fp32 CPU matmuls would otherwise go to MKL, and oneDNN's linear op is available."""
    return torch.backends.mkl.is_available() and has_onednn_linear()


def onednn_usable(*tensors: torch.Tensor) -> bool:
    """All tensors fp32 on the CPU, no CPU autocast, and oneDNN in place of MKL (`replaces_mkl`)."""
    return (all(t.is_cpu and t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu") and replaces_mkl())


def onednn_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a [N, K] @ b [M, K]^T (+ bias) on oneDNN, no checks; `b` may also be a packed weight
    (`mkldnn._reorder_linear_weight`); strided views are accepted."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [N, K] @ b [M, K]^T -> [N, M], on oneDNN for fp32 CPU tensors."""
    if a.numel() and b.numel() and onednn_usable(a, b):
        return onednn_nt(a, b)
    return a @ b.t()


class _OnednnLinear(torch.autograd.Function):
    """y = x W^T + b; backward dx = dy W, dW = dy^T x, db = sum over rows of dy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])  # [N, in]: a view for the usual contiguous activations
        return onednn_nt(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # [N, out]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = onednn_nt(g, weight.t()).view(x.shape)  # [N, out] @ [out, in]
        if ctx.needs_input_grad[1]:
            # [out, N] @ [N, in]; a frozen weight (LoRA base, frozen embeddings) skips this product
            dw = onednn_nt(g.t(), x.reshape(-1, x.shape[-1]).t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, on oneDNN (forward and backward) for fp32 CPU tensors."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if x.numel() == 0 or not onednn_usable(*tensors):
        return F.linear(x, weight, bias)
    return _OnednnLinear.apply(x, weight, bias)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Route every `nn.Linear` of `model` through `linear`; the number of layers changed (0 where
    oneDNN would not replace MKL: see `replaces_mkl`)."""
    if not replaces_mkl():
        return 0
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    for m in layers:
        m.forward = types.MethodType(_linear_forward, m)
    return len(layers)
