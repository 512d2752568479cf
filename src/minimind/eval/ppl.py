"""Perplexity and bits per byte on held-out text, scored the way pretraining sees documents.

Contract:
- `read_documents(path, tokenizer, limit, skip_bad)` reads a pretrain-format file (JSONL {"text"},
  .jsonl.gz, Parquet) or a prepared pretrain directory, in order, the first `limit` documents
  (a deterministic slice), and returns `Documents` (token ids and UTF-8 byte count of each).
- `evaluate_ppl(scorer, docs, stride, progress)` returns {"task": "ppl", "n" (documents),
  "tokens", "bytes", "loss" (mean negative log-likelihood per token, nats), "ppl" = exp(loss),
  "bits_per_byte" = total_nll / (bytes * ln 2), "stride", "context"}.
- Each document is scored on its own, preceded by the EOS token: pretraining streams documents as
  `doc EOS doc EOS ...` (`minimind.data.loader`), so EOS is what comes before a document's first
  token; there is no BOS. Every token of the document is scored exactly once; the trailing EOS is
  not (it has no bytes, and lm-eval's rolling log-likelihood leaves it out too).
- Documents longer than the context C (`scorer.max_seq_len`) are scored with a sliding window of
  stride S (default C // 2): the first window scores its C tokens, each later window moves S
  tokens on and scores only those S new tokens, seeing the C - S tokens before them as context
  (so every token after the first window has at least C - S tokens of context). S = C gives
  disjoint windows (fastest, least context); smaller S costs C / S forwards per C tokens.
Bits per byte does not depend on the tokenizer, so models with different vocabularies compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data.formats import ReadStats, iter_examples
from ..data.store import DocStore
from ..errors import UserError
from .scorer import Pair, Scorer


@dataclass
class Documents:
    ids: list[list[int]]
    n_bytes: list[int]
    files: list[Path] = field(default_factory=list)
    skipped: int = 0


def read_documents(path: str | Path, scorer: Scorer, limit: int | None = None, skip_bad: bool = False) -> Documents:
    """The first `limit` documents of a pretrain file or prepared directory, tokenised."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    docs = Documents([], [], [path])
    if path.is_dir():
        store = DocStore.open(path, scorer.tok, "pretrain")
        for d in range(min(len(store), limit or len(store))):
            ids = store.ids(d).astype("int64").tolist()
            docs.ids.append(ids)
            docs.n_bytes.append(len(scorer.tok.decode(ids).encode("utf-8")))  # byte-level BPE: exact
    else:
        stats = ReadStats()
        for text in iter_examples("pretrain", [path], skip_bad=skip_bad, stats=stats):
            docs.ids.append(scorer.encode(text))
            docs.n_bytes.append(len(text.encode("utf-8")))
            if limit is not None and len(docs.ids) >= limit:
                break
        docs.skipped = stats.skipped
    if not docs.ids:
        raise UserError(f"{path}: no documents to score")
    return docs


def windows(ids: list[int], prefix: int, context: int, stride: int) -> list[Pair]:
    """(context ids, scored ids) per window over `[prefix] + ids`; every id of `ids` scored once."""
    if not 1 <= stride <= context:
        raise UserError(f"--stride must be between 1 and the context length {context}, got {stride}")
    t = [prefix] + list(ids)
    end = min(context + 1, len(t))  # the first window: C inputs predict t[1:C+1]
    out = [(t[:1], t[1:end])]
    while end < len(t):
        new_end = min(end + stride, len(t))
        start = max(0, new_end - context - 1)  # at most C inputs: t[start:new_end-1]
        out.append((t[start:end], t[end:new_end]))
        end = new_end
    return out


def evaluate_ppl(scorer: Scorer, docs: Documents, stride: int | None = None,
                 progress: Callable[[int], None] | None = None) -> dict:
    C = scorer.max_seq_len
    stride = stride or max(1, C // 2)
    prefix = scorer.tok.eos_id
    pairs = [w for ids in docs.ids for w in windows(ids, prefix, C, stride)]
    nll = -sum(ll for ll, _ in scorer.loglikelihood(pairs, progress, share_prefixes=False))
    n_tokens, n_bytes = sum(len(ids) for ids in docs.ids), sum(docs.n_bytes)
    loss = nll / n_tokens
    return {"task": "ppl", "n": len(docs.ids), "tokens": n_tokens, "bytes": n_bytes, "loss": loss,
            "ppl": math.exp(min(loss, 700.0)), "bits_per_byte": nll / (n_bytes * math.log(2)),
            "context": C, "stride": stride}
