"""Start-up costs: the tokenised-data cache (data/cache.py) and the config type hints resolved once.

The cache must never change what a run trains on: a hit gives the same documents (hence the same
batches) as tokenising again, and any change to the file's bytes or to the tokenizer's files misses.
"""

import json
import shutil
import typing

import numpy as np
import pytest

from minimind.cli import build_parser
from minimind.data import cache
from minimind.data.formats import ReadStats
from minimind.data.loader import Loader
from minimind.data.prepare import checked_chunks, token_dtype
from minimind.data.store import DocStore
from minimind.tokenizer import load_tokenizer
from minimind.train import config as C
from minimind.train.stages import stage_registry


def _pretrain_file(path, n=40, extra=""):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"Document {i}{extra}: " + "the quick brown fox jumps over the lazy dog. " * (3 + i % 5)}) + "\n")
    return path


def _sft_file(path, n=12):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"conversations": [{"role": "user", "content": f"What is {i} + {i}?"},
                                                  {"role": "assistant", "content": f"It is {2 * i}."}]}) + "\n")
    return path


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Point the cache at a fresh folder and count real tokenisation passes."""
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "cache"))
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        yield from checked_chunks(*args, **kwargs)

    monkeypatch.setattr(cache, "checked_chunks", counting)
    return calls


def _store(kind, files, tok, chunks, stats):
    return DocStore.from_chunks(kind, chunks, token_dtype(tok.vocab_size), tok.eos_id, tok.pad_id, stats.skipped)


def _uncached(kind, files, tok, skip_bad=False):
    stats = ReadStats()
    chunks = [enc for _, enc in checked_chunks(kind, files, tok, 1, skip_bad, stats)]
    return _store(kind, files, tok, chunks, stats), stats


def _via_cache(kind, files, tok, skip_bad=False):
    stats = ReadStats()
    return _store(kind, files, tok, cache.cached_chunks(kind, files, tok, skip_bad, stats), stats), stats


def _batches(store, kind, split, n=3):
    loader = Loader(kind, store, seq_len=32, batch_size=2, seed=3, split=split, val_fraction=0.2)
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_second_open_reads_the_cache_and_gives_the_same_batches(tmp_path, tok, counted, kind):
    files = [(_pretrain_file if kind == "pretrain" else _sft_file)(tmp_path / f"{kind}.jsonl")]
    reference, _ = _uncached(kind, files, tok)
    first, _ = _via_cache(kind, files, tok)
    second, stats = _via_cache(kind, files, tok)
    assert len(counted) == 1  # the second open tokenised nothing
    assert stats.records == len(reference) == len(second)
    for split in ("train", "val"):
        for a, b in zip(_batches(reference, kind, split), _batches(second, kind, split)):
            assert a.keys() == b.keys()
            for key in a:
                assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), (split, key)
    for d in range(len(reference)):
        assert np.array_equal(reference.ids(d), second.ids(d))
        if kind == "sft":
            assert np.array_equal(reference.mask(d), second.mask(d))


def test_a_changed_file_is_tokenised_again(tmp_path, tok, counted):
    path = _pretrain_file(tmp_path / "p.jsonl")
    _via_cache("pretrain", [path], tok)
    _pretrain_file(path, extra=" (edited)")  # same name, new bytes
    store, _ = _via_cache("pretrain", [path], tok)
    assert len(counted) == 2
    assert tok.decode(store.ids(0).tolist()).startswith("Document 0 (edited)")
    _via_cache("pretrain", [path], tok)  # and the new entry is reused
    assert len(counted) == 2


def test_a_changed_tokenizer_misses(tmp_path, tok, counted):
    path = _pretrain_file(tmp_path / "p.jsonl")
    _via_cache("pretrain", [path], tok)
    other = tmp_path / "tok"
    shutil.copytree(tok.path, other)
    config = other / "tokenizer_config.json"
    config.write_text(config.read_text() + "\n")  # any byte of a tokenizer file counts
    _via_cache("pretrain", [path], load_tokenizer(other))
    assert len(counted) == 2


def test_skip_counts_come_back_from_the_cache(tmp_path, tok, counted):
    path = _pretrain_file(tmp_path / "p.jsonl")
    with open(path, "a") as f:
        f.write('{"text": 5}\nnot json\n')
    _, fresh = _via_cache("pretrain", [path], tok, skip_bad=True)
    _, cached = _via_cache("pretrain", [path], tok, skip_bad=True)
    assert len(counted) == 1 and fresh.skipped == cached.skipped == 2
    assert cached.examples == fresh.examples and cached.records == fresh.records == 40


def test_a_damaged_entry_is_a_miss_and_is_replaced(tmp_path, tok, counted):
    path = _pretrain_file(tmp_path / "p.jsonl")
    reference, _ = _via_cache("pretrain", [path], tok)
    (entry,) = cache.cache_dir().glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, e.g. a disk that filled up under another tool
    again, _ = _via_cache("pretrain", [path], tok)
    assert len(counted) == 2 and np.array_equal(again.ids(3), reference.ids(3))
    _via_cache("pretrain", [path], tok)
    assert len(counted) == 2
    assert not list(cache.cache_dir().glob(".*.tmp"))  # no temporary file left behind


def test_an_unwritable_cache_is_a_note_and_the_data_is_still_right(tmp_path, tok, counted, monkeypatch, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("MINIMIND_CACHE", str(blocker))  # the cache folder cannot be created under a file
    path = _pretrain_file(tmp_path / "p.jsonl")
    reference, _ = _uncached("pretrain", [path], tok)
    store, _ = _via_cache("pretrain", [path], tok)
    assert "not cached" in capsys.readouterr().err
    assert np.array_equal(store.ids(5), reference.ids(5)) and len(store) == len(reference)


def test_old_entries_are_pruned(tmp_path, tok, counted, monkeypatch):
    monkeypatch.setattr(cache, "KEEP", 2)
    for i in range(3):
        _via_cache("pretrain", [_pretrain_file(tmp_path / f"p{i}.jsonl")], tok)
    assert len(list(cache.cache_dir().glob("*.npz"))) == 2
    _via_cache("pretrain", [tmp_path / "p2.jsonl"], tok)  # the newest is still there
    assert len(counted) == 3


def test_bad_input_raises_and_caches_nothing(tmp_path, tok, counted):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(Exception, match="bad.jsonl:2"):
        _via_cache("pretrain", [path], tok)
    assert not cache.cache_dir().exists() or not list(cache.cache_dir().iterdir())


def test_type_hints_are_resolved_once_per_class_with_the_same_flags(monkeypatch):
    classes = {stage.config_class for stage in stage_registry().values()}
    expected = {cls: typing.get_type_hints(cls) for cls in classes}
    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda cls, *a, **k: calls.append(cls) or real(cls, *a, **k))
    C._type_hints.cache_clear()
    parser = build_parser("pretrain")
    assert len(calls) == len(set(calls))  # once per class, not once per flag
    for cls in classes:
        for name, tp in expected[cls].items():
            assert C.field_type(cls, name) == tp
    args = parser.parse_args(["pretrain", "--max-steps", "3", "--no-progress", "--data", "a", "b"])
    assert (args.max_steps, args.progress, args.data) == ("3", False, ["a", "b"])
