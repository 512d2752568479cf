"""`data prepare`: shards decode back to the source, masks match the renderer, reuse, atomicity, CLI."""

import json
import os

import numpy as np
import pytest

from minimind.chat import render_conversation, render_prompt
from minimind.cli import main
import minimind.data.prepare as prepare_mod
from minimind.data.prepare import prepare, read_meta, token_dtype
from minimind.data.store import DocStore
from minimind.errors import UserError
from support import write_jsonl

TEXTS = ["Hello world, this is MiniMind.", "今天天气很好，我们去公园散步。", "Mixed 中文 and English 123.",
         "  leading spaces and\nnew lines\n", "emoji 🙂 and tabs\tok", "短", "x" * 300]
CONVS = [
    [{"role": "system", "content": "You are MiniMind."}, {"role": "user", "content": "你是谁？"},
     {"role": "assistant", "content": "我是MiniMind。", "reasoning_content": "身份问题"}],
    [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"},
     {"role": "user", "content": "and 4+4?"}, {"role": "assistant", "content": "8"}],
    [{"role": "user", "content": "weather?"},
     {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]},
     {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}],
]


def test_pretrain_round_trip_and_workers_agree(tmp_path, tok, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t[::-1]} for t in TEXTS[:3]])
    monkeypatch.setattr(prepare_mod, "CHUNK_ROWS", 2)  # many small chunks: exercise the ordered window
    one = prepare("pretrain", [a, b], tmp_path / "w1", tok, workers=1)
    prepare("pretrain", [a, b], tmp_path / "w2", tok, workers=2)
    assert not one.reused and one.meta["docs"] == len(TEXTS) + 3 and one.meta["dtype"] == "uint16"
    assert [s["docs"] for s in one.meta["shards"]] == [len(TEXTS), 3]
    for name in ("00000.tokens.bin", "00000.offsets.bin", "00001.tokens.bin", "00001.offsets.bin"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    store = DocStore.open(tmp_path / "w2", tok, "pretrain")
    expected = TEXTS + [t[::-1] for t in TEXTS[:3]]
    assert [tok.decode(store.ids(d).tolist()) for d in range(len(store))] == expected
    assert store.ids(0).tolist() == tok.encode(TEXTS[0])
    assert one.meta["tokens"] == sum(len(tok.encode(t)) for t in expected)


def test_sft_dpo_rl_match_the_renderer(tmp_path, tok):
    sft = prepare("sft", [write_jsonl(tmp_path / "s.jsonl", [{"conversations": c} for c in CONVS])],
                  tmp_path / "sft", tok, workers=2)
    store = DocStore.open(sft.path, tok, "sft")
    for d, conv in enumerate(CONVS):
        ids, mask = render_conversation(tok, conv)
        assert store.ids(d).tolist() == ids and store.mask(d).tolist() == mask

    pairs = [{"chosen": c, "rejected": c[:-1] + [{"role": "assistant", "content": "no idea"}]} for c in CONVS]
    dpo = prepare("dpo", [write_jsonl(tmp_path / "d.jsonl", pairs)], tmp_path / "dpo", tok, workers=1)
    store = DocStore.open(dpo.path, tok, "dpo")
    assert len(store) == 2 * len(pairs) and dpo.meta["records"] == len(pairs)
    for i, p in enumerate(pairs):
        assert (store.ids(2 * i).tolist(), store.mask(2 * i).tolist()) == render_conversation(tok, p["chosen"])
        assert (store.ids(2 * i + 1).tolist(), store.mask(2 * i + 1).tolist()) == render_conversation(tok, p["rejected"])

    rl = prepare("rl", [write_jsonl(tmp_path / "r.jsonl", [{"conversations": c} for c in CONVS[:2]]
                                    + [{"prompt": "7*6=?", "answer": "42", "gt": ["42"]}])], tmp_path / "rl", tok)
    store = DocStore.open(rl.path, tok, "rl")
    assert store.record(0)["answer"] == "我是MiniMind。"
    assert store.ids(0).tolist() == render_prompt(tok, CONVS[0][:-1])
    assert store.record(1)["messages"] == CONVS[1][:-1] and store.record(1)["answer"] == "8"
    assert store.record(2) == {"messages": [{"role": "user", "content": "7*6=?"}], "answer": "42",
                               "gt": ["42"], "tools": None}
    assert store.ids(2).tolist() == render_prompt(tok, [{"role": "user", "content": "7*6=?"}])


def test_reuse_on_unchanged_input_and_rebuild_on_change(tmp_path, tok, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    first = prepare("pretrain", [src], tmp_path / "out", tok, workers=1)
    stamp = (tmp_path / "out" / "meta.json").stat().st_mtime_ns
    again = prepare("pretrain", [src], tmp_path / "out", tok, workers=1, log=print)
    assert again.reused and again.meta == first.meta
    assert (tmp_path / "out" / "meta.json").stat().st_mtime_ns == stamp
    assert "reusing" in capsys.readouterr().out
    with open(src, "a", encoding="utf-8") as f:  # change the input: one more document
        f.write(json.dumps({"text": "one more"}) + "\n")
    changed = prepare("pretrain", [src], tmp_path / "out", tok, workers=1)
    assert not changed.reused and changed.meta["docs"] == len(TEXTS) + 1
    # a different kind (or tokenizer, or skip_bad) is a different configuration too
    assert prepare("pretrain", [src], tmp_path / "out", tok, skip_bad=True).reused is False


def test_failed_prepare_leaves_old_result_and_no_temp(tmp_path, tok):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    prepare("pretrain", [src], tmp_path / "out", tok)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with open(src, "a", encoding="utf-8") as f:
        f.write('{"text": "ok"}\n{"txt": "bad"}\n')
    with pytest.raises(UserError, match=rf"a\.jsonl:{len(TEXTS) + 2}: missing key 'text'"):
        prepare("pretrain", [src], tmp_path / "out", tok, workers=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert read_meta(tmp_path / "out")["docs"] == len(TEXTS)  # still the old, complete result
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a half-written temp dir of a killed run (dead PID) is swept away by the next run
    stale = tmp_path / ".out.tmp-999999999"
    stale.mkdir()
    (stale / "00000.tokens.bin").write_bytes(b"\0\0")
    res = prepare("pretrain", [src], tmp_path / "out", tok, skip_bad=True)
    assert res.meta["skipped"] == 1 and res.meta["docs"] == len(TEXTS) + 1 and not stale.exists()


def test_refuses_to_overwrite_foreign_directory(tmp_path, tok):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello"}])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared data directory; refusing to overwrite"):
        prepare("pretrain", [src], tmp_path / "mine", tok)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_token_dtype_follows_vocab_size():
    assert token_dtype(6400) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(151936) == np.uint32


def test_cli_prepare_errors_and_skip_bad(tmp_path, capsys):
    src = tmp_path / "file.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(6)) + '{"text": 3}\n')
    rc = main(["data", "prepare", "--kind", "pretrain", "--data", str(src), "--out", str(tmp_path / "o"),
               "--workers", "1"])
    assert rc == 2
    assert capsys.readouterr().err == f"error: {src}:7: 'text' must be a string, got int\n"
    assert not (tmp_path / "o").exists()
    rc = main(["data", "prepare", "--kind", "pretrain", "--data", str(src), "--out", str(tmp_path / "o"),
               "--skip-bad", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "pretrain: 6 records, 6 docs" in out
    assert f"skipped 1 bad record(s); first: {src}:7: 'text' must be a string, got int" in out
    rc = main(["data", "prepare", "--kind", "pretrain", "--data", str(src), "--out", str(tmp_path / "o"), "--skip-bad"])
    assert rc == 0 and "reusing" in capsys.readouterr().out


def test_prepared_dir_checks_kind_and_tokenizer(tmp_path, tok):
    from minimind.tokenizer_train import train_tokenizer

    src = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS * 3])
    res = prepare("pretrain", [src], tmp_path / "p", tok)
    with pytest.raises(UserError, match="prepared as 'pretrain' data, but 'sft' data is needed"):
        DocStore.open(res.path, tok, "sft")
    other = train_tokenizer([src], 300, tmp_path / "tok300")
    with pytest.raises(UserError, match="prepared with a different tokenizer"):
        DocStore.open(res.path, other, "pretrain")
    # and a prepare with that tokenizer decodes back to the text as well
    small = prepare("pretrain", [src], tmp_path / "p300", str(other.path))
    assert small.meta["vocab_size"] == other.vocab_size
    store = DocStore.open(small.path, other, "pretrain")
    assert tok.decode(store.ids(1).tolist()) != TEXTS[1] and other.decode(store.ids(1).tolist()) == TEXTS[1]
    assert os.path.isfile(small.path / "tokenizer" / "tokenizer.json")
