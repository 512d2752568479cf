"""Batches for every training stage: `make_loader(kind, data, tokenizer, seq_len, batch_size, ...)`.

Contract (docs/architecture.md):
- A `Loader` is an endless iterator of batches (CPU tensors). Epochs follow each other; epoch e
  is shuffled by (seed, e). A batch may straddle two epochs, so no sample is ever dropped for
  being in a short last batch and even tiny data sets yield full batches.
- Samples ("units") per kind, and the batch each makes (labels aligned with input_ids; the model
  shifts them):
    pretrain  windows of exactly seq_len tokens cut from one stream: the split's documents in
              shuffled order, each followed by EOS. No padding at all; labels = input_ids. The
              tail of an epoch's stream shorter than one window is not used in that epoch.
              -> {"input_ids", "labels"} LongTensor [B, seq_len]
    sft       conversations packed greedily (in shuffled order) into rows of <= seq_len tokens; a
              row is closed when the next conversation would not fit. A conversation longer than
              seq_len is truncated to its first seq_len tokens (if that cuts off every assistant
              token it contributes no loss; raise seq_len or filter such data). labels = ids on
              assistant tokens (chat.render_conversation mask), -100 elsewhere and on padding.
              -> {"input_ids", "labels"} [B, T], T = longest row in the batch (<= seq_len)
    dpo       one preference pair each; both sides truncated to seq_len and padded to the longest
              of the batch (pad id; labels -100 on padding and non-assistant tokens).
              -> {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"} [B, T]
    rl        one prompt each -> {"prompt_ids": list[list[int]] (render_prompt, thinking on, not
              truncated), "answers": list[str | None], "messages": list[list[dict]],
              "gt": list[list | None]}
- Document ids (`document_ids=True`, pretrain and sft only; for `--document-mask`): each batch
  also has "doc_ids" LongTensor [B, T], the number of the document each token belongs to within
  its row (0, 1, ...; a document's EOS is part of it; sft padding is -1, a document of its own),
  and the label of each document's first token (but the row's first) becomes -100: within its
  own document nothing precedes it, so with document masking there is nothing to predict it
  from. The model then attends within documents only (`MiniMindLM(..., doc_ids=...)`). Without
  the option batches are exactly as above.
- Split: a fixed fraction (`val_fraction`, default 1%, at least one sample) of the documents
  (pairs for dpo) is held out for split="val". The choice depends only on the number of
  documents, never on the seed, so changing the seed cannot leak validation data into training.
- Distributed: each epoch's shuffled units are dealt round-robin to ranks and cut to the same
  count per rank (so every rank takes the same number of steps): disjoint across ranks. A split
  with fewer units than ranks raises `UserError` when the Loader is built (the trainer opens the
  held-out split before step 1, so such a run skips evaluation instead of failing at the end).
- Resume: `state_dict()` is {"epoch", "index", ...} (plain ints/strings); after
  `load_state_dict(state)` the next batch is exactly the one that would have come next.
- `Prefetcher(batches, depth, pin)` makes the batches of any such iterator `depth` ahead on a
  background thread (in pinned memory when `pin`, so `.to("cuda", non_blocking=True)` overlaps the
  copy with compute). Same batches in the same order; its `state_dict()` is the source's state
  after the last batch *handed out*, not the last one made, so resume stays exact.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import IGNORE_INDEX
from ..errors import UserError
from .formats import check_kind
from .store import DocStore, open_store

SPLIT_SEED = 20240601  # fixed: the held-out set must not move when the training seed does


def split_indices(n: int, split: str, val_fraction: float) -> np.ndarray:
    """Sorted sample indices of `split` among n samples (deterministic, seed independent)."""
    if split not in ("train", "val"):
        raise UserError(f"unknown split {split!r}; expected 'train' or 'val'")
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = min(max(1, math.ceil(n * val_fraction)), n - 1) if val_fraction > 0 and n >= 2 else 0
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    chosen = perm[:n_val] if split == "val" else perm[n_val:]
    if len(chosen) == 0:
        raise UserError(f"the {split!r} split is empty ({n} samples, val_fraction {val_fraction})")
    return np.sort(chosen)


class Loader:
    """Endless, deterministic, resumable, rank-sharded batches of one kind (see module docstring)."""

    def __init__(self, kind: str, store: DocStore, seq_len: int, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, split: str = "train", val_fraction: float = 0.01,
                 document_ids: bool = False):
        if seq_len < 1 or batch_size < 1:
            raise UserError(f"seq_len and batch_size must be >= 1 (got {seq_len}, {batch_size})")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world_size {world_size}")
        if document_ids and kind not in ("pretrain", "sft"):
            raise UserError(f"document masking needs packed rows (pretrain or sft data), not {kind!r}")
        self.kind, self.store, self.document_ids = kind, store, document_ids
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size, self.split = seed, rank, world_size, split
        n = len(store) // 2 if kind == "dpo" else len(store)
        if n == 0:
            raise UserError(f"no {kind} data in {store.source or 'the input'}")
        self.samples = split_indices(n, split, val_fraction)   # sample ids of this split
        self.epoch, self.index = 0, 0                          # position of the next unit
        self._plan: tuple[int, dict] | None = None
        self._plan_for(0)  # a split too small for world_size fails here, not at its first batch

    # ------------------------------------------------------------------ epoch plans

    def _plan_for(self, epoch: int) -> dict:
        """This rank's units for `epoch` (cached for the current epoch)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        order = self.samples[rng.permutation(len(self.samples))]   # shuffled sample ids
        plan: dict = {"order": order}
        if self.kind == "pretrain":
            # stream = doc, EOS, doc, EOS, ...; ends[j] = stream position just after doc j's EOS
            plan["ends"] = np.cumsum(self.store.lengths[order] + 1)
            n_units = int(plan["ends"][-1]) // self.seq_len
        elif self.kind == "sft":
            plan["starts"] = self._pack(order)
            n_units = len(plan["starts"]) - 1
        else:
            n_units = len(order)
        # deal units to ranks: shuffle again (pretrain windows of neighbouring docs should not
        # sit in one batch), then rank r takes every world_size-th, all ranks the same count
        per_rank = n_units // self.world_size
        if per_rank == 0:
            raise UserError(f"too little {self.kind} data in the {self.split!r} split for "
                            f"{self.world_size} rank(s) at seq_len {self.seq_len}: {n_units} sample(s)")
        units = rng.permutation(n_units)[self.rank::self.world_size][:per_rank]
        plan["units"] = units
        self._plan = (epoch, plan)
        return plan

    def _pack(self, order: np.ndarray) -> np.ndarray:
        """Greedy packing: start index (into order) of each row, plus len(order) at the end."""
        lengths = np.minimum(self.store.lengths[order], self.seq_len).tolist()
        starts, used = [0], 0
        for j, n in enumerate(lengths):
            if used + n > self.seq_len:   # does not fit: close the row, start a new one
                starts.append(j)
                used = 0
            used += n
        starts.append(len(lengths))
        return np.asarray(starts, dtype=np.int64)

    @property
    def samples_per_epoch(self) -> int:
        """Units (windows, packed rows, pairs, prompts) this rank sees in the current epoch."""
        return len(self._plan_for(self.epoch)["units"])

    # ------------------------------------------------------------------ units

    def window(self, plan: dict, k: int) -> np.ndarray:
        """Pretrain window k of the epoch's stream: tokens [k*T, (k+1)*T)."""
        return self.window_with_docs(plan, k)[0]

    def window_with_docs(self, plan: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Window k and the document number (0, 1, ... in the window) of each of its tokens."""
        T, ends, order = self.seq_len, plan["ends"], plan["order"]
        start = k * T
        j = int(np.searchsorted(ends, start, side="right"))   # first doc ending after `start`
        pos = start - (int(ends[j - 1]) if j > 0 else 0)       # offset inside doc j's ids+EOS
        out = np.empty(T, dtype=np.int64)
        docs = np.empty(T, dtype=np.int64)
        filled, doc = 0, 0
        while filled < T:
            ids = self.store.ids(int(order[j]))
            piece = ids[pos:]
            n = min(len(piece), T - filled)
            out[filled:filled + n] = piece[:n]
            docs[filled:filled + n] = doc
            filled += n
            if filled < T and pos + n == len(ids):   # reached the end of the doc: its EOS
                out[filled], docs[filled] = self.store.eos_id, doc
                filled += 1
            pos, j, doc = 0, j + 1, doc + 1
        return out, docs

    def row(self, plan: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
        """SFT packed row k: (ids, labels) of the conversations in it, each cut to seq_len."""
        docs = plan["order"][plan["starts"][k]:plan["starts"][k + 1]]
        ids = [self.store.ids(int(d))[:self.seq_len] for d in docs]
        masks = [self.store.mask(int(d))[:self.seq_len] for d in docs]
        ids_cat = np.concatenate(ids).astype(np.int64)
        labels = np.where(np.concatenate(masks) > 0, ids_cat, IGNORE_INDEX)
        return ids_cat, labels

    def row_docs(self, plan: dict, k: int) -> np.ndarray:
        """The document number (0, 1, ...) of each token of SFT packed row k."""
        docs = plan["order"][plan["starts"][k]:plan["starts"][k + 1]]
        lengths = np.minimum(self.store.lengths[docs], self.seq_len)
        return np.repeat(np.arange(len(docs), dtype=np.int64), lengths)

    def _pair_side(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.store.ids(d)[:self.seq_len].astype(np.int64)
        return ids, np.where(self.store.mask(d)[:self.seq_len] > 0, ids, IGNORE_INDEX)

    # ------------------------------------------------------------------ iteration

    def _next_units(self) -> list[tuple[dict, int]]:
        """The next batch_size (plan, unit) pairs, moving into the next epoch when needed."""
        out = []
        while len(out) < self.batch_size:
            plan = self._plan_for(self.epoch)
            if self.index >= len(plan["units"]):
                self.epoch, self.index = self.epoch + 1, 0
                continue
            out.append((plan, int(plan["units"][self.index])))
            self.index += 1
        return out

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        units = self._next_units()
        if self.kind == "pretrain":
            windows = [self.window_with_docs(p, k) for p, k in units]
            x = torch.from_numpy(np.stack([w[0] for w in windows]))
            if not self.document_ids:
                return {"input_ids": x, "labels": x.clone()}
            docs = torch.from_numpy(np.stack([w[1] for w in windows]))
            return {"input_ids": x, "labels": _unlabel_document_starts(x.clone(), docs), "doc_ids": docs}
        if self.kind == "sft":
            rows = [self.row(p, k) for p, k in units]
            ids, labels = _pad([r[0] for r in rows], self.store.pad_id), _pad([r[1] for r in rows], IGNORE_INDEX)
            if not self.document_ids:
                return {"input_ids": ids, "labels": labels}
            docs = _pad([self.row_docs(p, k) for p, k in units], -1, ids.shape[1])
            return {"input_ids": ids, "labels": _unlabel_document_starts(labels, docs), "doc_ids": docs}
        if self.kind == "dpo":
            pairs = [int(p["order"][k]) for p, k in units]
            chosen = [self._pair_side(2 * i) for i in pairs]
            rejected = [self._pair_side(2 * i + 1) for i in pairs]
            T = max(len(c[0]) for c in chosen + rejected)   # one T for both sides
            return {
                "chosen_input_ids": _pad([c[0] for c in chosen], self.store.pad_id, T),
                "chosen_labels": _pad([c[1] for c in chosen], IGNORE_INDEX, T),
                "rejected_input_ids": _pad([r[0] for r in rejected], self.store.pad_id, T),
                "rejected_labels": _pad([r[1] for r in rejected], IGNORE_INDEX, T),
            }
        docs = [int(p["order"][k]) for p, k in units]
        records = [self.store.record(d) for d in docs]
        return {
            "prompt_ids": [self.store.ids(d).astype(np.int64).tolist() for d in docs],
            "answers": [r["answer"] for r in records],
            "messages": [r["messages"] for r in records],
            "gt": [r.get("gt") for r in records],
        }

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        return {"kind": self.kind, "epoch": self.epoch, "index": self.index, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", self.kind) != self.kind:
            raise UserError(f"loader state is for {state['kind']!r} data, this loader reads {self.kind!r}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def _unlabel_document_starts(labels: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """labels with IGNORE_INDEX at each document's first token after the row's first (in place)."""
    labels[:, 1:][docs[:, 1:] != docs[:, :-1]] = IGNORE_INDEX
    return labels


def _pad(rows: list[np.ndarray], value: int, length: int | None = None) -> torch.Tensor:
    """Right-pad 1-D arrays to one length -> LongTensor [B, length]."""
    length = length or max(len(r) for r in rows)
    out = np.full((len(rows), length), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


def make_loader(kind: str, data, tokenizer, seq_len: int, batch_size: int, *, seed: int = 0,
                rank: int = 0, world_size: int = 1, split: str = "train", skip_bad: bool = False,
                val_fraction: float = 0.01, document_ids: bool = False) -> Loader:
    """A Loader over `data`: a prepared directory, or raw JSONL/.jsonl.gz/Parquet file(s)."""
    check_kind(kind)
    if isinstance(data, (str, Path)) or data is None:
        data = [data] if data is not None else []
    store = open_store(kind, data, tokenizer, skip_bad=skip_bad)
    return Loader(kind, store, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size,
                  split=split, val_fraction=val_fraction, document_ids=document_ids)


class Prefetcher:
    """Batches of `source` made ahead on a daemon thread (see the module docstring).

    The thread owns `source` once started: it calls next() and records `source.state_dict()` right
    after, so each queued batch travels with the state that resumes *after* it. An exception in
    the source (bad data) is re-raised by the `next()` that reaches it.
    """

    def __init__(self, source: Any, depth: int = 2, pin: bool = False) -> None:
        self.source, self.depth, self.pin = source, max(1, depth), pin
        self._state = copy.deepcopy(source.state_dict())
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> "Prefetcher":
        return self

    def _work(self, q: queue.Queue, stop: threading.Event) -> None:
        it = iter(self.source)
        while not stop.is_set():
            try:
                batch = next(it)
                item = (_pin(batch) if self.pin else batch, copy.deepcopy(self.source.state_dict()), None)
            except BaseException as err:  # StopIteration included: handed to the consumer
                item = (None, None, err)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __next__(self) -> dict:
        if self._thread is None:
            self._queue, self._stop = queue.Queue(self.depth), threading.Event()
            self._thread = threading.Thread(target=self._work, args=(self._queue, self._stop), daemon=True,
                                            name="minimind-prefetch")
            self._thread.start()
        batch, state, err = self._queue.get()
        if err is not None:
            self.close()
            raise err
        self._state = state
        return batch

    def state_dict(self) -> dict:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()  # batches made from the old position are dropped
        self.source.load_state_dict(state)
        self._state = copy.deepcopy(state)

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is making); the next `next()` restarts it."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            # The thread advanced the source past what was handed out: put it back.
            self.source.load_state_dict(copy.deepcopy(self._state))


def _pin(batch: Any) -> Any:
    """The batch with its CPU tensors in page-locked memory (lists and other values unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pin(v) for k, v in batch.items()}
    return batch
