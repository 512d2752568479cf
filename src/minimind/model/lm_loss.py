"""Next-token log-probabilities straight from the last hidden states, never holding [N, V] logits.

Contract: `token_logprobs(hidden [N, h], weight [V, h], targets [N]) -> [N] float32`, the
log-probability of each target token under logits = hidden @ weight^T (computed in the autocast
dtype when autocast is on, then upcast to float32), and 0 where the target is -100. Value and
gradients equal `-F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")`.

Why: the logits are the largest tensors of a step. For a 150k vocabulary, 16 x 2048 tokens make
5 billion of them: 10 GB in bf16, 20 GB more for the float32 copy that cross-entropy saves for its
backward. Here the rows go through in chunks of about `CHUNK_ELEMENTS` logits, each under
activation checkpointing: the forward keeps only the hidden rows (and the shared weight), and the
backward recomputes one chunk's logits at a time. Extra cost: one more head matmul per chunk,
small next to the model's forward and backward.

Chunks are made with `split` (not slicing): its backward concatenates the chunk gradients once,
where a slice's backward would write each chunk into its own full-size zero tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 32 MB in float32, whatever the vocabulary


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one chunk holds about CHUNK_ELEMENTS logits."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return -F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   rows: int | None = None) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for every row, in chunks of `rows` (default: `chunk_rows`)."""
    rows = rows or chunk_rows(weight.shape[0])
    if hidden.shape[0] <= rows:  # one chunk: nothing to save by recomputing
        return _chunk_logprobs(hidden, weight, targets)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    out = []
    for h, t in zip(hidden.split(rows), targets.split(rows)):
        out.append(checkpoint(_chunk_logprobs, h, weight, t, use_reentrant=False) if grad
                   else _chunk_logprobs(h, weight, t))
    return torch.cat(out)
