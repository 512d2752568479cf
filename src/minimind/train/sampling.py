"""A minimal sampler for the generations logged during training (the real engine is minimind.infer).

Contract: `sample(model, prompt_ids, max_new_tokens, temperature, top_k, eos_id, generator)`
returns the new token ids (without the prompt). It prefills the prompt once, then feeds one
token at a time through the model's KV cache. temperature 0 means greedy. Pure function of its
arguments and the generator: training RNG streams are never touched.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sample(model: nn.Module, prompt_ids: list[int], max_new_tokens: int = 40, temperature: float = 0.8,
           top_k: int = 40, eos_id: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    device = next(model.parameters()).device
    room = model.config.max_seq_len - len(prompt_ids)
    max_new_tokens = max(0, min(max_new_tokens, room))
    if max_new_tokens == 0 or not prompt_ids:
        return []
    cache = model.new_kv_cache(1, len(prompt_ids) + max_new_tokens)
    ids = torch.tensor([prompt_ids], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(ids, kv_cache=cache).logits[0, -1].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        out.append(nxt)
        if eos_id is not None and nxt == eos_id:
            break
        ids = torch.tensor([[nxt]], device=device)
    return out
