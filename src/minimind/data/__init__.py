"""Data: demo data, formats and validation, prepared shards, loaders, cleaning.

Modules:
    reading  stream raw records from JSONL / .jsonl.gz / Parquet, bounded in size
    formats  upstream MiniMind's record shapes: validate and normalise records
    layout   the on-disk layout of a prepared directory and its safe replacement
    prepare  `data prepare`: streaming, multi-process tokenisation into memory-mapped shards
    store    random access to tokenised docs (a prepared directory, or raw files in RAM)
    loader   `make_loader`: packed / padded batches, deterministic, resumable, rank-sharded
    clean    normalise, filter, dedup (exact + MinHash) and mix sources
    demo     the embedded demo data set (`write_demo`)
"""


# The functions `prepare` and `clean` are not re-exported here: they would shadow their own
# modules (minimind.data.prepare would become the function). Import them from their modules.
# Nor is the loader: it imports torch (seconds at start-up, and again in every `data prepare`
# worker), which preparing and cleaning data never need. Import it from `minimind.data.loader`.
from .formats import KINDS, ReadStats, iter_examples, normalize_record
from .prepare import PrepareResult, read_meta
from .store import DocStore, open_store

__all__ = [
    "KINDS", "DocStore", "PrepareResult", "ReadStats", "iter_examples", "normalize_record",
    "open_store", "read_meta",
]
