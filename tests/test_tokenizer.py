"""Tokenizer: special-token layout, exact round trips, training, loading foreign folders, CLI errors."""

import gzip
import json

import pytest

from minimind.cli import main
from minimind.errors import UserError
from minimind.tokenizer import SPECIAL_TOKENS, default_tokenizer_dir, load_tokenizer, train_tokenizer

SAMPLES = [
    "MiniMind trains small language models from scratch.",
    "小型语言模型可以在一台普通电脑上训练。",
    "Mixed 中英文 text, numbers 3.14159 and emoji 😀🚀👨‍👩‍👧 with tabs\tand\nnewlines.",
    "  leading and trailing spaces  ",
    "\u00e9\u0301 combining marks, Ω≈ç√∫, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, \x00 control",
]


def test_default_special_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 6400
    for i, (t, _) in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i and tok.id_to_token(i) == t
    assert "{%- generation -%}" in tok.chat_template


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_special_tokens_in_text_are_atomic(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n<think>x</think>")
    assert ids[0] == 1 and 2 in ids and 3 in ids and 4 in ids
    # control tokens vanish with skip_special_tokens, the think markers stay (split_reasoning needs them)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n<think>x</think>"


def test_digits_are_split(tok):
    # one token per digit: arithmetic stays learnable for a tiny model
    ids = tok.encode("9081726354")
    assert len(ids) == 10 and tok.decode(ids[:3]) == "908"


def test_train_small_file(tmp_path):
    data = tmp_path / "corpus.jsonl"
    lines = [{"text": f"第{i}句：the quick brown fox jumps over the lazy dog {i}. 今天天气很好。"} for i in range(300)]
    lines.append({"conversations": [{"role": "user", "content": "hello there"},
                                    {"role": "assistant", "content": "hi", "reasoning_content": "greet"}]})
    data.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    plain = tmp_path / "plain.txt.gz"  # gzipped inputs are streamed too
    with gzip.open(plain, "wt", encoding="utf-8") as fh:
        fh.write("plain text lines, zebra zebra\n" * 50)
    out = tmp_path / "tok"
    tok = train_tokenizer([data, plain], 400, out)
    assert len(tok.encode(" zebra")) == 1  # learned from the gzipped file only
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    # vocab_size is a ceiling: a small corpus runs out of pairs seen twice before filling it
    assert 16 + 256 < tok.vocab_size <= 400
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    # merges were learned from the data: a frequent word is a single token
    assert len(tok.encode(" quick")) == 1
    text = "今天 the fox 😀"
    assert tok.decode(tok.encode(text)) == text
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)


def test_load_foreign_folder_uses_config_tokens(tmp_path):
    # A "foreign" tokenizer: our vocab under a config naming <|endoftext|> as EOS, no BOS/pad.
    for name in ("tokenizer.json",):
        (tmp_path / name).write_bytes((default_tokenizer_dir() / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_id == 0 and tok.bos_id == 1 and tok.pad_id == 0
    assert tok.chat_template == ""


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(UserError, match="not a valid tokenizers file"):
        load_tokenizer(tmp_path)


def test_training_errors(tmp_path):
    with pytest.raises(UserError, match="missing.txt: no such file"):
        train_tokenizer([tmp_path / "missing.txt"], 1000, tmp_path / "out")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        train_tokenizer([bad], 1000, tmp_path / "out")
    with pytest.raises(UserError, match="too small"):
        train_tokenizer([bad], 100, tmp_path / "out")


def test_cli_train_and_errors(tmp_path, capsys):
    data = tmp_path / "a.txt"
    data.write_text("hello world, 你好世界\n" * 100, encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(data), "--vocab-size", "300", "--out", str(out)]) == 0
    assert 16 + 256 < load_tokenizer(out).vocab_size <= 300
    assert main(["tokenizer", "train", "--data", str(tmp_path / "nope.jsonl"), "--vocab-size", "300",
                 "--out", str(out)]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
