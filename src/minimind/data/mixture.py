"""Weighted streaming mixtures: pretraining batches drawn from several sources by weight.

A recipe phase (`minimind pretrain --recipe`) names its data as {source: weight}; this module
streams from every source at once, so no pre-mixed file is ever written.

Contract:
- `open_mixture(sources, weights, tokenizer, seq_len, batch_size, *, seed, rank, world_size,
  split, skip_bad)` -> `Mixture`, an endless iterator of pretrain batches
  {"input_ids", "labels"(, "doc_ids")} LongTensor [batch_size, seq_len], like `make_loader("pretrain", ...)`.
- A source is a raw file (JSONL/.jsonl.gz/Parquet) or a prepared directory. Plain text records
  ({"text"}) are read as pretraining text; conversation records (SFT or RL files) are rendered
  with the chat template (`source_kind`), every token trained: instruction-like data for an
  annealing phase. Each source is its own `data.loader.Loader` (batch 1): its own shuffled epochs
  (seeded by the run seed and the source's position), its own held-out split, sharded by rank.
- Which source fills the next row (sequence) is decided by deficit scheduling: the source whose
  realised count is furthest behind its share, `weight_i * rows_so_far - count_i` (ties: the first
  source). So after n rows every source has within one row of its share `n * w_i / sum(w)`, at
  every prefix of the stream; the order is a pure function of the weights, and the rows inside
  each source a pure function of the seed. Every rank makes the same choices.
- Resume: `state_dict()` holds every source's loader position and the per-source counts; after
  `load_state_dict` the next batch is the one an uninterrupted run would have drawn.
- `realised_shares(state)` reads the realised proportions {source: share of rows} from a mixture
  state (None for any other loader's state): the trainer logs them in every train record, so a
  run's metrics show, per phase, what it was really fed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import UserError
from .formats import RecordError, parse_payload
from .layout import read_meta
from .loader import Loader
from .reading import check_files, iter_raw
from .store import DocStore, open_store

MIXTURE = "mixture"  # the "kind" a mixture writes into its state (a Loader writes its data kind)


def source_kind(path: str | Path) -> str:
    """How a mixture source is read: "pretrain" (text records) or "sft" (conversations, rendered).

    A prepared directory says so in its meta.json; a raw file by its first record."""
    meta = read_meta(path)
    if meta is not None:
        return "pretrain" if meta.get("kind") == "pretrain" else "sft"
    (file,) = check_files([path])
    for lineno, payload in iter_raw(file):
        try:
            record = parse_payload(payload)
        except RecordError as err:
            raise UserError(f"{file}:{lineno}: {err}") from None
        return "pretrain" if "text" in record else "sft"
    raise UserError(f"{file}: no records (an empty mixture source)")


def check_weights(sources: list[str], weights: list[float]) -> list[float]:
    """The weights normalised to sum 1, or a UserError naming the bad one."""
    if len(weights) != len(sources):
        raise UserError(f"{len(weights)} mixture weight(s) for {len(sources)} data source(s); give one per source")
    for source, w in zip(sources, weights):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise UserError(f"mixture weight of {source} must be a positive number, got {w!r}")
    total = float(sum(weights))
    return [w / total for w in weights]


class Mixture:
    """Rows from several sources in weighted proportions (see the module docstring)."""

    def __init__(self, loaders: list[Loader], names: list[str], weights: list[float], batch_size: int) -> None:
        self.loaders, self.names, self.batch_size = loaders, names, batch_size
        self.weights = check_weights(names, weights)
        self.counts = [0] * len(loaders)

    def _pick(self) -> int:
        """The source furthest behind its share once the next row is drawn."""
        rows = sum(self.counts) + 1
        return max(range(len(self.loaders)), key=lambda i: (self.weights[i] * rows - self.counts[i], -i))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        rows = []
        for _ in range(self.batch_size):
            i = self._pick()
            self.counts[i] += 1
            rows.append(next(self.loaders[i]))
        return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}

    def realised(self) -> dict[str, float]:
        return _shares(self.names, self.counts)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": MIXTURE, "names": list(self.names), "counts": list(self.counts),
                "sources": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != MIXTURE or state.get("names") != self.names:
            raise UserError(f"the saved data position is not one of this mixture ({', '.join(self.names)}); "
                            f"was the phase's data changed?")
        for loader, saved in zip(self.loaders, state["sources"]):
            loader.load_state_dict(saved)
        self.counts = [int(c) for c in state["counts"]]


def _shares(names: list[str], counts: list[int]) -> dict[str, float]:
    total = sum(counts)
    return {name: (c / total if total else 0.0) for name, c in zip(names, counts)}


def realised_shares(state: dict[str, Any]) -> dict[str, float] | None:
    """{source: realised share of rows} of a mixture's state_dict(); None for other loaders."""
    if not isinstance(state, dict) or state.get("kind") != MIXTURE:
        return None
    return _shares(state["names"], state["counts"])


def open_mixture(sources: list[str], weights: list[float], tokenizer: Any, seq_len: int, batch_size: int, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1, split: str = "train",
                 skip_bad: bool = False, stores: dict[str, DocStore] | None = None,
                 document_ids: bool = False) -> Mixture:
    """A Mixture over `sources` (paths) with these weights; see the module docstring.

    `stores` caches each source's tokens by path, so the train and held-out mixtures of a run
    tokenise a raw file once. `document_ids`: rows also carry "doc_ids" (document masking, as
    `make_loader` documents it)."""
    check_weights(sources, weights)
    stores = {} if stores is None else stores
    loaders = []
    for i, source in enumerate(sources):
        if source not in stores:
            stores[source] = open_store(source_kind(source), [source], tokenizer, skip_bad=skip_bad)
        store = stores[source]
        # Each source gets its own seed, so two sources of equal size are not shuffled alike.
        loaders.append(Loader("pretrain", store, seq_len, 1, seed=seed * len(sources) + i, rank=rank,
                              world_size=world_size, split=split, document_ids=document_ids))
    return Mixture(loaders, [str(s) for s in sources], weights, batch_size)
