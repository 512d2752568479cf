"""Choosing the next token: sampling parameters and one vectorised sampler for a whole batch.

Contract:
- `SamplingParams` holds one request's knobs; `validate()` raises `InvalidParams` (a
  `UserError`) naming the bad field. `temperature == 0` means greedy (argmax).
- `sample_tokens(logits, rows)` picks one token per row of `logits` [B, V], each row with its
  own temperature / top-k / top-p / repetition penalty and its own random generator, so a
  request's output depends only on its own seed, never on which other requests share the batch.
- `token_logprobs(logits, tokens, k)` gives the log-probability of each chosen token and the k
  likeliest tokens, under the model's own distribution (raw logits: before the repetition
  penalty, temperature, top-k and top-p, as OpenAI and vLLM report them). Requests ask for it
  with `SamplingParams.logprobs` (None: off; k in 0..20: the chosen token and k alternatives).

The order of the logit transforms is the one `transformers` uses (repetition penalty ->
temperature -> top-k -> top-p), so the same settings mean the same thing in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError


MAX_LOGPROBS = 20  # alternatives per token (OpenAI's top_logprobs limit)


class InvalidParams(UserError):
    """A sampling or request parameter is out of range; the message names it."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 -> greedy
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0  # 1 -> off
    repetition_penalty: float = 1.0  # 1 -> off; >1 discourages tokens already in prompt or output
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output text)
    stop_token_ids: list[int] | None = None  # None -> the engine's defaults (EOS and end-of-text)
    seed: int | None = None  # None -> a fresh random seed
    logprobs: int | None = None  # None -> off; k -> the chosen token's logprob and the k likeliest

    def validate(self) -> "SamplingParams":
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", 0 <= self.temperature <= 100, "between 0 and 100"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 10, "in (0, 10]"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise InvalidParams(f"{name} must be {want}, got {getattr(self, name)!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidParams(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS):
            raise InvalidParams(f"logprobs must be an integer in 0..{MAX_LOGPROBS} or None, got {self.logprobs!r}")
        if len(self.stop) > 8:
            raise InvalidParams(f"at most 8 stop strings are allowed, got {len(self.stop)}")
        return self


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one request; seeded from the OS when no seed is given."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return g


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL-style penalty: a seen token's logit is divided by p if positive, multiplied if negative.

    logits [B, V] float, seen [B, V] bool, penalty [B]. Rows with penalty 1 are unchanged.
    """
    p = penalty.view(-1, 1)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def sample_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator],
                  seen: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token id per row: returns LongTensor [B].

    logits [B, V]; `params[i]` and `generators[i]` belong to row i; `seen` [B, V] marks the
    tokens each row has already seen (for the repetition penalty), or None.
    """
    # Every helper tensor is made on the logits' device: on a GPU, mixing in CPU tensors raises.
    logits, dev = logits.float(), logits.device
    if seen is not None and any(p.repetition_penalty != 1.0 for p in params):
        penalty = torch.tensor([p.repetition_penalty for p in params], device=dev)
        logits = apply_repetition_penalty(logits, seen, penalty)
    out = logits.argmax(-1)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled:
        return out
    idx = torch.tensor(sampled, device=dev)
    rows = [params[i] for i in sampled]
    temp = torch.tensor([p.temperature for p in rows], device=dev).view(-1, 1)
    scaled = logits[idx] / temp
    # One uniform number per row from that row's own generator: the draw is then inverted
    # through the row's cumulative distribution (inverse-CDF sampling), all rows at once. The
    # generators live on the CPU, so a seed gives the same draws on every device.
    u = torch.cat([torch.rand(1, generator=generators[i]) for i in sampled]).view(-1, 1).to(dev)
    if any(p.top_k > 0 or p.top_p < 1.0 for p in rows):
        probs, order = torch.softmax(scaled, -1).sort(-1, descending=True)
        rank = torch.arange(probs.shape[-1], device=dev).view(1, -1)
        top_k = torch.tensor([p.top_k if p.top_k > 0 else probs.shape[-1] for p in rows], device=dev).view(-1, 1)
        top_p = torch.tensor([p.top_p for p in rows], device=dev).view(-1, 1)
        # Nucleus: keep the smallest prefix whose mass reaches top_p, i.e. every token whose
        # preceding mass is still below top_p (the first token always survives).
        before = probs.cumsum(-1) - probs
        keep = (rank < top_k) & ((before < top_p) | (rank == 0))
        probs = probs * keep
    else:
        probs, order = torch.softmax(scaled, -1), None
        keep = None
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    # Rounding can put u * total at the very end: clamp to the last token that has mass.
    last = (keep.sum(-1, keepdim=True) - 1) if keep is not None else torch.full_like(choice, probs.shape[-1] - 1)
    choice = torch.minimum(choice, last)
    token = order.gather(-1, choice) if order is not None else choice
    out[idx] = token.view(-1)
    return out


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of `tokens` [B] under raw `logits` [B, V], and the top k of each row.

    Returns (chosen [B], top_values [B, k], top_ids [B, k]), top sorted from likeliest down.
    """
    logp = torch.log_softmax(logits.float(), -1)
    chosen = logp.gather(-1, tokens.view(-1, 1).to(logp.device)).view(-1)
    top_values, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return chosen, top_values, top_ids
