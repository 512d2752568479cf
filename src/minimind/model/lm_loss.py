"""Next-token log-probabilities straight from the last hidden states, never holding [N, V] logits.

Contract: `token_logprobs(hidden [N, h], weight [V, h], targets [N]) -> [N] float32`, the
log-probability of each target token under logits = hidden @ weight^T (computed in the autocast
dtype when autocast is on, then upcast to float32), and 0 where the target is -100. Value and
gradients equal those of `-F.cross_entropy(F.linear(hidden, weight).float(), targets,
reduction="none")` (to rounding: the weight gradient is summed over chunks in float32).

Why: the logits are the largest tensors of a step. For a 150k vocabulary, 16 x 2048 tokens make
5 billion of them: 10 GB in bf16, and cross-entropy saves a float32 copy (20 GB) for its
backward. Here rows go through in chunks of about `CHUNK_ELEMENTS` logits. The forward keeps
only each row's log-sum-exp; the backward recomputes one chunk's logits at a time and turns them
into gradients at once: d log p(y) / d logits = onehot(y) - softmax(logits). Extra cost: one more
head matmul, small next to the model's forward and backward.

`logit_chunks(fn, heads, *row_args)` is the same idea for a loss that needs whole logit rows of
one or more heads (distillation: the student's and the teacher's): it calls `fn` on chunks of
rows whose logits are computed inside an activation checkpoint, so autograd keeps only the hidden
states and each chunk's logits exist once in the forward and once in the backward.

The two loops are PyTorch custom ops (`torch.library.custom_op`): torch.compile treats each as
one opaque call, so a compiled model neither breaks its graph here nor unrolls (and re-guards)
a loop whose length depends on the number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..config import IGNORE_INDEX
from .cpu_linear import linear, matmul_nt

CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 32 MB in float32, whatever the vocabulary


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one chunk holds about CHUNK_ELEMENTS logits."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


@torch.library.custom_op("minimind::token_logprobs", mutates_args=())
def _forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
             rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target) [N] with 0 on ignored rows, log-sum-exp [N]), both float32."""
    logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logp)
    with torch.autocast(hidden.device.type, enabled=False):  # the caller chose the dtype
        for start in range(0, hidden.shape[0], rows):
            sl = slice(start, start + rows)
            logits = matmul_nt(hidden[sl], weight).float()
            t = targets[sl]
            valid = t != IGNORE_INDEX
            lse[sl] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
            logp[sl] = (picked - lse[sl]) * valid
    return logp, lse


@_forward.register_fake
def _(hidden, weight, targets, rows):
    return hidden.new_empty(hidden.shape[0], dtype=torch.float32), hidden.new_empty(hidden.shape[0], dtype=torch.float32)


@torch.library.custom_op("minimind::token_logprobs_backward", mutates_args=())
def _backward(grad: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              lse: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of sum(grad * logp) with respect to hidden and weight."""
    d_hidden = torch.empty_like(hidden)
    d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], rows):
            sl = slice(start, start + rows)
            h, t = hidden[sl], targets[sl]
            valid = t != IGNORE_INDEX
            probs = (matmul_nt(h, weight).float() - lse[sl].unsqueeze(1)).exp_()
            g = -probs.mul_((grad[sl] * valid).unsqueeze(1))  # d/dlogits = g * (onehot - softmax)
            g.scatter_add_(1, t.masked_fill(~valid, 0).unsqueeze(1), (grad[sl] * valid).unsqueeze(1))
            g = g.to(hidden.dtype)
            d_hidden[sl] = matmul_nt(g, weight.t())  # g @ weight
            d_weight += matmul_nt(g.t(), h.t()).float()  # g^T @ h
    return d_hidden, d_weight.to(weight.dtype)


@_backward.register_fake
def _(grad, hidden, weight, targets, lse, rows):
    return torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    hidden, weight, targets, rows = inputs
    ctx.save_for_backward(hidden, weight, targets, output[1])
    ctx.rows = rows


def _autograd_backward(ctx, grad_logp, grad_lse):
    hidden, weight, targets, lse = ctx.saved_tensors
    d_hidden, d_weight = _backward(grad_logp.contiguous(), hidden, weight, targets, lse, ctx.rows)
    return d_hidden, d_weight, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   rows: int | None = None) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for every row, in chunks of `rows` (default: `chunk_rows`)."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # what autocast would do to the plain F.linear
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    else:
        weight = weight.to(hidden.dtype)
    logp, _ = _forward(hidden.contiguous(), weight, targets.contiguous(), rows or chunk_rows(weight.shape[0]))
    return logp


def logit_chunks(fn: Callable[..., tuple[torch.Tensor, ...]], heads: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 *row_args: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, ...]:
    """fn(logits_1, ..., logits_k, *row_args) over chunks of rows, its per-row outputs concatenated.

    `heads` holds (hidden [N, h], weight [V, h]) pairs: logits_i = hidden_i @ weight_i^T for the
    chunk's rows (in the autocast dtype when autocast is on). Without gradients (or with one
    chunk) `fn` runs once, unchunked. `split`, not slicing, so the backward concatenates the
    chunk gradients once.
    """
    def chunk(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = [linear(h, w) for h, (_, w) in zip(xs[:len(heads)], heads)]
        return fn(*logits, *xs[len(heads):])

    inputs = [h for h, _ in heads] + list(row_args)
    rows = rows or chunk_rows(max(w.shape[0] for _, w in heads))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for pair in heads for t in pair)
    if inputs[0].shape[0] <= rows or not needs_grad:
        return chunk(*inputs)
    parts = [checkpoint(chunk, *xs, use_reentrant=False) for xs in zip(*(t.split(rows) for t in inputs))]
    return tuple(torch.cat(p) for p in zip(*parts))
