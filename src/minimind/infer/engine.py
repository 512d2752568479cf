"""The generation engine: prefill, then KV-cached decoding of a batch whose rows come and go.

Contract (token ids in, token ids and text out; nothing here knows about HTTP):
- `Engine(model, tokenizer=None, max_batch_size=16, max_seq_len=None)`: `engine.max_seq_len` is the
  context it serves, the model's or a smaller one.
  `engine.generate(prompts, params) -> list[Sequence]` runs a list of prompts (lists of ids)
  to completion; `engine.stream(prompt, params)` yields text pieces as they are produced.
  Without a tokenizer only ids come out (`Sequence.output_ids`); stop strings need one.
- `engine.new_sequence(prompt, params)` validates one request (raises `InvalidParams`, a
  `UserError`, for bad values or a prompt longer than the context) and `engine.runner()` gives
  a `BatchRunner`, the continuous-batching loop the server drives from its worker thread:
  `admit(seqs)` prefills newcomers and joins them to the running batch, `step()` decodes one
  token for every running row with ONE forward, `cancel(seq)` frees a row.
- `engine.load_adapter(name, folder)` adds a LoRA adapter; each request picks one (or none)
  and rows with different adapters still share every forward (see adapters.py).
- On the CPU every forward (prefill and decode) runs the model's Linear layers on oneDNN with
  pre-packed weights (packed_linear.py): same results to fp32 rounding, 2-3x faster matmuls.
  `Engine(..., compile=True)` decodes dense models with a compiled step (static_decode.py).
- Every row stops on its own: a stop token, a stop string or its token budget. A finished row
  leaves at once and its slot is reused by the next request that arrives.

How rows of different ages share one cache: `KVCache` keeps one write position for all rows
(`length`) and a `valid` mask per slot. A row of prompt length P that joins when the cache
holds L slots is written at slots [L-P, L), its earlier slots marked invalid: that is exactly a
left-padded prompt, so the model's per-row positions (count of valid slots before a token) and
attention mask make it see what it would see alone. If P > L, every running row is first
shifted right; when the cache is full, all rows are shifted left by the longest common run of
invalid slots. Shifting moves already-rotated keys, which is fine because RoPE positions are
per row and a row's slots keep their order.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..model import KVCache, MiniMindLM
from .adapters import AdapterBank
from .packed_linear import PackedLinears
from .sampling import InvalidParams, SamplingParams, make_generator, sample_tokens, token_logprobs
from .static_decode import CompiledDecode
from .streaming import IncrementalDecoder, StopMatcher


@dataclass
class Sequence:
    """One request's state from admission to its last token."""

    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    id: int = 0
    adapter: str | None = None  # name of a LoRA adapter (None: the base model)
    output_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # text emitted so far
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    row: int = -1  # row in the runner's cache while running
    start: int = 0  # first cache slot holding this row's tokens
    t_admit: float = 0.0
    t_first: float | None = None  # when the first generated token came out (TTFT)
    t_end: float | None = None
    generator: torch.Generator | None = None
    decoder: IncrementalDecoder | None = None
    stopper: StopMatcher | None = None
    cancelled: bool = False  # set from any thread; the runner drops the row before its next step

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Event:
    """What one step produced for one sequence: a token, the text it completed, and whether it ended.

    When the request asked for logprobs (`params.logprobs` not None), `logprob` is the token's
    log-probability and `top_logprobs` the [(id, logprob)] of the likeliest tokens at that step."""

    seq: Sequence
    token_id: int | None
    text: str
    finished: bool
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class BatchRunner:
    """Continuous batching over one preallocated KV cache with `capacity` rows of `max_seq_len` slots.

    Running sequences occupy rows 0..n-1 (kept dense, so every forward runs on n rows, not on
    the capacity). Not thread-safe: one thread drives it.
    """

    def __init__(self, model: MiniMindLM, capacity: int, max_seq_len: int, pad_id: int = 0,
                 compiled: CompiledDecode | None = None, adapters: AdapterBank | None = None,
                 packed: PackedLinears | None = None) -> None:
        self.model, self.adapters = model, adapters
        self.packed = packed  # oneDNN-packed Linear weights for CPU forwards (packed_linear.py)
        self.compiled = compiled  # a compiled decode step (static_decode.py), or None: eager
        self.cache = model.new_kv_cache(capacity, max_seq_len)
        self.capacity, self.max_seq_len, self.pad_id = capacity, max_seq_len, pad_id
        self.seqs: list[Sequence] = []
        self.length = 0  # slots in use, shared by all rows
        self.device = device = model.embed_tokens.weight.device
        self.seen = torch.zeros(capacity, model.config.vocab_size, dtype=torch.bool, device=device)

    # -- cache bookkeeping -------------------------------------------------------------------

    def _view(self, lo: int, hi: int, length: int) -> KVCache:
        """A KVCache over rows [lo, hi) sharing our storage: the model writes through it."""
        # Rows with invalid leading slots need an explicit mask; all-real rows need none.
        padded = lo != 0 or any(s.start > 0 for s in self.seqs[lo:hi])
        return self.cache.view(lo, hi, length, padded)

    def _shift(self, delta: int) -> None:
        """Move every running row's slots by `delta` (right if > 0, left if < 0)."""
        self.cache.shift(len(self.seqs), self.length, delta)
        for s in self.seqs:
            s.start += delta
        self.length += delta

    def _move_row(self, src: int, dst: int) -> None:
        self.cache.move_row(src, dst, self.length)
        self.seen[dst] = self.seen[src]

    def _drop_finished(self) -> None:
        keep = [s for s in self.seqs if not s.finished]
        for row, s in enumerate(keep):  # stable compaction: rows only move down
            if s.row != row:
                self._move_row(s.row, row)
                s.row = row
        self.seqs = keep
        if not keep:
            self.length = 0
            self.cache.clear_rows(0, self.capacity)

    def room_for(self, prompt_len: int) -> bool:
        """Could a prompt of this length join now (a free row, and slots after compaction)?"""
        if len(self.seqs) >= self.capacity:
            return False
        used = self.length - min((s.start for s in self.seqs), default=self.length)
        return max(used, prompt_len) + 1 <= self.max_seq_len

    # -- the two operations -----------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, new: list[Sequence]) -> list[Event]:
        """Prefill `new` (one left-padded forward), sample their first tokens, join the batch."""
        if not new:
            return []
        n, m = len(self.seqs), len(new)
        P = max(len(s.prompt_ids) for s in new)
        if n + m > self.capacity or not all(self.room_for(len(s.prompt_ids)) for s in new):
            raise RuntimeError("admit() called without room; check room_for() first")
        if max(self.length, P) + 1 > self.max_seq_len:
            self._shift(-min(s.start for s in self.seqs))
        if P > self.length:
            self._shift(P - self.length) if n else setattr(self, "length", P)
        L = self.length
        ids = torch.full((m, P), self.pad_id, dtype=torch.long)
        mask = torch.zeros(m, P, dtype=torch.long)
        for i, s in enumerate(new):
            p = len(s.prompt_ids)
            ids[i, P - p:] = torch.tensor(s.prompt_ids)
            mask[i, P - p:] = 1
            s.row, s.start = n + i, L - p
            s.t_admit = time.perf_counter()
            if s.params.repetition_penalty != 1.0:  # other rows never read their `seen` row
                self.seen[n + i] = False
                self.seen[n + i, torch.tensor(s.prompt_ids, device=self.device)] = True
        self.cache.clear_rows(n, n + m)
        self.seqs.extend(new)
        view = self._view(n, n + m, L - P)
        # Equal-length prompts in an empty cache need no mask: plain causal attention (faster).
        view.padded = L != P or any(len(s.prompt_ids) != P for s in new)
        with self._adapters_for(new), self._packed():
            out = self.model(ids.to(self.device), attention_mask=mask.to(self.device), kv_cache=view, logits_to_keep=1)
        return self._accept(new, out.logits[:, -1])

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Decode one token for every running row (one forward), after dropping cancelled rows."""
        events: list[Event] = []
        for s in self.seqs:
            if s.cancelled and not s.finished:
                events.append(self._finish(s, "cancelled", ""))
        self._drop_finished()
        if not self.seqs:
            return events
        if self.length + 1 > self.max_seq_len:
            # Full: rows that already span the whole context end here; the rest shift left.
            for s in self.seqs:
                if s.start == 0:
                    events.append(self._finish(s, "length", self._flush(s)))
            self._drop_finished()
            if not self.seqs:
                return events
            self._shift(-min(s.start for s in self.seqs))
        n = len(self.seqs)
        ids = torch.tensor([[s.output_ids[-1]] for s in self.seqs], device=self.device)
        view = self._view(0, n, self.length)
        with self._packed():
            if self.compiled is not None and self.compiled.ready():
                logits = self.compiled(ids, view)
            else:
                with self._adapters_for(self.seqs):
                    logits = self.model(ids, kv_cache=view).logits[:, -1]
        self.length += 1
        return events + self._accept(self.seqs, logits)

    def _adapters_for(self, seqs: list[Sequence]):
        """Rows that asked for a LoRA adapter get it in this forward; the rest see the base model."""
        if self.adapters is None or all(s.adapter is None for s in seqs):
            return contextlib.nullcontext()
        return self.adapters.rows([s.adapter for s in seqs])

    def _packed(self):
        """Packed CPU matmuls for our forwards, eager or compiled (a no-op where they do not apply)."""
        return self.packed.active() if self.packed is not None else contextlib.nullcontext()

    def cancel(self, seq: Sequence) -> None:
        if seq in self.seqs and not seq.finished:
            self._finish(seq, "cancelled", "")
            self._drop_finished()

    # -- per-token bookkeeping ----------------------------------------------------------------

    def _accept(self, seqs: list[Sequence], logits: torch.Tensor) -> list[Event]:
        # The `seen` mask (prompt and output tokens of each row) only matters to rows with a
        # repetition penalty: without one, no per-step gather or update at all.
        pen = [i for i, s in enumerate(seqs) if s.params.repetition_penalty != 1.0]
        seen = self.seen[torch.tensor([s.row for s in seqs], device=self.device)] if pen else None
        picked = sample_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs], seen)
        tokens = picked.tolist()
        if pen:
            rows = torch.tensor([seqs[i].row for i in pen], device=self.device)
            self.seen[rows, picked[torch.tensor(pen, device=self.device)]] = True
        now = time.perf_counter()
        events = []
        for s, tok in zip(seqs, tokens):
            s.output_ids.append(tok)
            if s.t_first is None:
                s.t_first = now
            if tok in s.stop_ids:
                events.append(self._finish(s, "stop", self._flush(s), tok))
                continue
            text = s.decoder.push(tok) if s.decoder else ""
            text, hit = s.stopper.push(text) if s.stopper else (text, False)
            if hit:
                events.append(self._finish(s, "stop", text, tok))
            elif (len(s.output_ids) >= s.params.max_new_tokens
                  or len(s.prompt_ids) + len(s.output_ids) >= self.max_seq_len):  # the context is full
                events.append(self._finish(s, "length", text + self._flush(s), tok))
            else:
                s.pieces.append(text)
                events.append(Event(s, tok, text, False))
        self._drop_finished()
        self._add_logprobs(seqs, logits, tokens, events)
        return events

    @staticmethod
    def _add_logprobs(seqs: list[Sequence], logits: torch.Tensor, tokens: list[int], events: list[Event]) -> None:
        """Fill in logprobs for the rows that asked (one event per row, in row order); one
        log-softmax over just those rows, so requests without logprobs cost nothing."""
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        if not want:
            return
        k = max(seqs[i].params.logprobs for i in want)
        idx = torch.tensor(want, device=logits.device)
        chosen, top_v, top_i = token_logprobs(logits[idx], torch.tensor([tokens[i] for i in want]), k)
        chosen, top_v, top_i = chosen.tolist(), top_v.tolist(), top_i.tolist()
        for j, i in enumerate(want):
            ev, n = events[i], seqs[i].params.logprobs
            ev.logprob, ev.top_logprobs = chosen[j], list(zip(top_i[j][:n], top_v[j][:n]))

    def _flush(self, s: Sequence) -> str:
        """Text still held back by the detokenizer and the stop matcher, at the end of a row."""
        if not s.decoder:
            return ""
        text, hit = s.stopper.push(s.decoder.flush())
        return text if hit else text + s.stopper.flush()

    def _finish(self, s: Sequence, reason: str, text: str, tok: int | None = None) -> Event:
        s.finish_reason, s.t_end = reason, time.perf_counter()
        s.pieces.append(text)
        return Event(s, tok, text, True)


class Engine:
    """Owns a model (and optionally its tokenizer) and runs generation on it."""

    def __init__(self, model: MiniMindLM, tokenizer=None, max_batch_size: int = 16,
                 max_seq_len: int | None = None, compile: bool = False) -> None:
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        self.max_seq_len = min(max_seq_len or cfg.max_seq_len, cfg.max_seq_len)
        self.max_batch_size = max_batch_size
        if tokenizer is not None:
            self.pad_id = tokenizer.pad_id
            self.default_stop_ids = frozenset({tokenizer.eos_id, tokenizer.pad_id})
        else:
            self.pad_id = cfg.pad_token_id
            self.default_stop_ids = frozenset({cfg.eos_token_id, cfg.pad_token_id})
        self.compiled = CompiledDecode(model) if compile and CompiledDecode.supports(model) else None
        self.adapters: AdapterBank | None = None  # LoRA adapters selectable per request
        self.packed = PackedLinears(model)
        self._ids = itertools.count()

    def load_adapter(self, name: str, folder) -> None:
        """Make a LoRA adapter available to requests as `adapter=name` (the base stays usable)."""
        if self.adapters is None:
            self.adapters = AdapterBank(self.model)
        self.adapters.load(name, folder)

    def packed_matmuls(self):
        """Packed oneDNN matmuls (CPU) for a caller's own no-grad forwards of `self.model`, such as
        the eval scorer's; a no-op where they do not apply."""
        return self.packed.active() if self.packed is not None else contextlib.nullcontext()

    @property
    def adapter_names(self) -> list[str]:
        return list(self.adapters.names) if self.adapters else []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def new_sequence(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None) -> Sequence:
        """Validate one request and wrap it; raises InvalidParams for bad values or a long prompt."""
        params.validate()
        if not prompt_ids:
            raise InvalidParams("the prompt is empty")
        V = self.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= V:
            raise InvalidParams(f"prompt token ids must be in [0, {V}), got {min(prompt_ids)}..{max(prompt_ids)}")
        if len(prompt_ids) >= self.max_seq_len:
            raise InvalidParams(
                f"the prompt has {len(prompt_ids)} tokens but the context length is {self.max_seq_len} "
                "(at least one token must fit after it)"
            )
        if adapter is not None and adapter not in self.adapter_names:
            raise InvalidParams(f"unknown adapter {adapter!r}; loaded: {', '.join(self.adapter_names) or 'none'}")
        if params.stop and self.tokenizer is None:
            raise InvalidParams("stop strings need a tokenizer")
        stop_ids = frozenset(params.stop_token_ids) if params.stop_token_ids is not None else self.default_stop_ids
        s = Sequence(list(prompt_ids), params, stop_ids, id=next(self._ids), adapter=adapter,
                     generator=make_generator(params.seed))
        if self.tokenizer is not None:
            s.decoder, s.stopper = IncrementalDecoder(self._decode), StopMatcher(params.stop)
        return s

    def runner(self, capacity: int | None = None, max_seq_len: int | None = None) -> BatchRunner:
        """A batch loop of `capacity` rows of `max_seq_len` slots (at most the engine's)."""
        slots = min(max_seq_len or self.max_seq_len, self.max_seq_len)
        return BatchRunner(self.model, capacity or self.max_batch_size, slots,
                           pad_id=self.pad_id, compiled=self.compiled, adapters=self.adapters,
                           packed=self.packed)

    def run(self, seqs: list[Sequence]) -> Iterator[Event]:
        """Drive `seqs` to completion in batches of at most max_batch_size, yielding events."""
        if not seqs:
            return
        need = max(len(s.prompt_ids) + s.params.max_new_tokens for s in seqs)
        runner = self.runner(min(len(seqs), self.max_batch_size), need)
        waiting = list(seqs)
        while waiting or runner.seqs:
            batch = []
            while waiting and len(runner.seqs) + len(batch) < runner.capacity and runner.room_for(len(waiting[0].prompt_ids)):
                batch.append(waiting.pop(0))
            yield from runner.admit(batch)
            yield from runner.step()

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 adapters: list[str | None] | None = None) -> list[Sequence]:
        """Generate for every prompt (batched); returns finished Sequences in prompt order.

        `adapters[i]` names the LoRA adapter for prompt i (None: the base model)."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        names = adapters or [None] * len(prompts)
        seqs = [self.new_sequence(p, sp, a) for p, sp, a in zip(prompts, plist, names, strict=True)]
        for _ in self.run(seqs):
            pass
        return seqs

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[str]:
        """Yield the text of one generation piece by piece (each piece whole UTF-8 characters)."""
        if self.tokenizer is None:
            raise InvalidParams("streaming text needs a tokenizer")
        for ev in self.run([self.new_sequence(prompt_ids, params)]):
            if ev.text:
                yield ev.text
