"""The one scorer every log-likelihood task shares: log P(continuation | context), batched.

Contract (the semantics of lm-evaluation-harness's `loglikelihood`, so numbers are comparable):
- `Scorer(model, tokenizer, batch_size, max_seq_len)`; `max_seq_len` defaults to the model's context.
- `scorer.encode_pair(context, continuation) -> (context_ids, continuation_ids)` splits text the
  way lm-eval's HF model does (`lm_eval/api/model.py: _encode_pair`): trailing whitespace of the
  context moves to the start of the continuation, then context + continuation is encoded as ONE
  string and cut after the tokens of the context alone. An empty context becomes the BOS token.
  `encode_pairs(context, continuations)` does the same for several continuations of one context.
- `scorer.loglikelihood(pairs, progress=None) -> [(logprob, is_greedy)]` for token-id pairs:
  `logprob` is the sum of log-softmax scores of the continuation tokens, `is_greedy` is True when
  every continuation token is the argmax at its position. Inputs longer than `max_seq_len + 1`
  tokens lose tokens on the left (as lm-eval does); `scorer.truncated` counts such requests.
- Text that the tokenizer cannot encode (no ids for non-empty text, or its unknown token) raises
  `UserError`: a silent 0 would look like a real score.

Speed: requests whose `context + continuation[:-1]` is the same token sequence need one forward
between them (lm-eval's "one-token continuation" cache, generalised): for 4 single-token choice
letters, one forward of the prompt gives all four scores. Distinct sequences are batched in token
order, so questions with the same few-shot examples share a batch, and a batch's common prefix
(description + k examples: most of a 5-shot prompt) is computed once and its keys/values copied
to every row (`_forward_shared`). Rows are left-padded, and only the last positions go through the
LM head (`logits_to_keep`): a C-Eval prompt is hundreds of tokens, but only the final few are scored.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..errors import UserError

Pair = tuple[list[int], list[int]]
# Padded tokens per forward: bounds the [tokens, vocab] logits (16k x 6400 floats = 420 MB).
MAX_BATCH_TOKENS = 16384


class Scorer:
    def __init__(self, model, tokenizer, batch_size: int = 16, max_seq_len: int | None = None,
                 max_batch_tokens: int = MAX_BATCH_TOKENS) -> None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        model.eval()
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_seq_len = min(max_seq_len or model.config.max_seq_len, model.config.max_seq_len)
        self.device = model.embed_tokens.weight.device
        self.pad_id = tokenizer.pad_id
        self.truncated = 0
        unk = getattr(tokenizer.backend.model, "unk_token", None) if hasattr(tokenizer, "backend") else None
        self.unk_id = tokenizer.token_to_id(unk) if unk else None

    # -- text -> ids --------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of `text` (no special tokens added); UserError if the tokenizer cannot encode it."""
        ids = self.tok.encode(text)
        if text and not ids:
            raise UserError(f"the tokenizer ({self.tok.path}) encodes {text[:40]!r} to no tokens at all")
        if self.unk_id is not None and self.unk_id in ids:
            raise UserError(f"the tokenizer ({self.tok.path}) cannot encode {text[:40]!r}: "
                            f"it produces the unknown token; this checkpoint cannot be scored on this text")
        return ids

    def encode_pairs(self, context: str, continuations: list[str]) -> list[Pair]:
        """lm-eval's context/continuation split for each continuation of one context."""
        out: list[Pair] = []
        ctx_cache: dict[str, list[int]] = {}
        for cont in continuations:
            ctx = context
            n = len(ctx) - len(ctx.rstrip())
            if n:  # "Answer: " + "A" is scored as "Answer:" + " A", like the harness
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            if not ctx:
                ids = self.encode(cont)
                pair = ([self.tok.bos_id], ids) if ids[0] != self.tok.bos_id else (ids[:1], ids[1:])
            else:
                if ctx not in ctx_cache:
                    ctx_cache[ctx] = self.encode(ctx)
                ctx_ids, whole = ctx_cache[ctx], self.encode(ctx + cont)
                pair = (ctx_ids, whole[len(ctx_ids):])
            if not pair[1]:
                raise UserError(f"the continuation {cont!r} encodes to no tokens after its context "
                                f"(the tokenizer merges it into the context)")
            out.append(pair)
        return out

    def encode_pair(self, context: str, continuation: str) -> Pair:
        return self.encode_pairs(context, [continuation])[0]

    # -- scoring ------------------------------------------------------------------------------

    def loglikelihood(self, pairs: list[Pair], progress: Callable[[int], None] | None = None,
                      share_prefixes: bool = True) -> list[tuple[float, bool]]:
        """(sum of log-probs of the continuation, continuation is the greedy choice) per pair.

        `share_prefixes=False` (long documents with nothing in common) batches longest first.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont:
                raise ValueError("context and continuation must both be non-empty token lists")
            if len(cont) > self.max_seq_len:
                raise UserError(f"a continuation of {len(cont)} tokens does not fit the context of "
                                f"{self.max_seq_len} tokens")
            full = (ctx + cont)[-(self.max_seq_len + 1):]
            self.truncated += len(ctx) + len(cont) > self.max_seq_len + 1
            groups.setdefault(tuple(full[:-1]), []).append(i)
        # In token order, rows that share a prefix (the same few-shot examples) sit in one batch,
        # which then computes that prefix once (`_forward_shared`). Longest first (lm-eval's order)
        # keeps padding small when rows share nothing.
        rows = sorted(groups.items()) if share_prefixes else sorted(groups.items(), key=lambda kv: -len(kv[0]))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for batch in self._batches(rows):
            keep = max(len(pairs[i][1]) for _, members in batch for i in members)
            logprobs = self._logprobs([list(key) for key, _ in batch], keep)
            for r, (_, members) in enumerate(batch):
                for i in members:
                    cont = torch.tensor(pairs[i][1], device=self.device)
                    lp = logprobs[r, keep - len(cont):]  # the positions that predict the continuation
                    score = lp.gather(-1, cont[:, None]).sum().item()
                    out[i] = (score, bool((lp.argmax(-1) == cont).all()))
            if progress is not None:
                progress(sum(len(members) for _, members in batch))
        return out  # type: ignore[return-value]

    def _batches(self, rows: list) -> Iterator[list]:
        """Consecutive rows, at most batch_size of them and max_batch_tokens padded tokens."""
        batch: list = []
        longest = 0
        for row in rows:
            n = len(row[0])
            if batch and (len(batch) == self.batch_size or max(longest, n) * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch, longest = [], 0
            batch.append(row)
            longest = max(longest, n)
        if batch:
            yield batch

    @torch.inference_mode()
    def _logprobs(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax [B, keep, V] (float32) of the last `keep` positions of each row."""
        prefix = _common_prefix(rows, max(0, min(len(r) for r in rows) - keep))
        if len(rows) > 1 and prefix >= MIN_SHARED_PREFIX:
            logits = self._forward_shared(rows, prefix, keep)
        else:
            ids, mask = _left_pad([r for r in rows], self.pad_id)
            padded = bool((mask == 0).any())
            # Unpadded batches need no mask: plain causal attention, the same as a single row.
            logits = self.model(ids.to(self.device), attention_mask=mask.to(self.device) if padded else None,
                                logits_to_keep=min(keep, ids.shape[1])).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def _forward_shared(self, rows: list[list[int]], prefix: int, keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions, with the rows' common prefix computed only once.

        The prefix goes through the model as one row into a KV cache, whose keys and values are
        then copied to every row; the rows' own suffixes follow, left-padded after the prefix.
        Padding slots are marked invalid, so positions and attention are those of each row alone.
        """
        suffix_ids, suffix_mask = _left_pad([r[prefix:] for r in rows], self.pad_id)
        cache = self.model.new_kv_cache(len(rows), prefix + suffix_ids.shape[1])
        head = torch.tensor([rows[0][:prefix]], device=self.device)
        self.model(head, kv_cache=cache.view(0, 1, 0, padded=False), logits_to_keep=1)
        cache.k[:, 1:, :, :prefix] = cache.k[:, :1, :, :prefix]
        cache.v[:, 1:, :, :prefix] = cache.v[:, :1, :, :prefix]
        cache.valid[:, :prefix] = True
        cache.length = prefix
        out = self.model(suffix_ids.to(self.device), attention_mask=suffix_mask.to(self.device), kv_cache=cache,
                         logits_to_keep=keep)
        return out.logits


MIN_SHARED_PREFIX = 16  # below this, computing the prefix once saves less than the cache costs


def _common_prefix(rows: list[list[int]], limit: int) -> int:
    """Length of the longest common prefix of all rows, at most `limit`."""
    first, n = rows[0], limit
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask
