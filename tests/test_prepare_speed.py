"""The fast bulk path of `data prepare` gives exactly the ids of the plain `tokenizers` path.

`Tokenizer.encode_flat` runs tiktoken's BPE when `fast_bpe.tiktoken_encoding` accepts the
tokenizer. These tests hold it to the reference (`encode_batch`, i.e. `tokenizers`) on the whole
real prose of the demo corpus, on every BMP code point in several contexts, on adversarial text,
and through `data prepare` with worker processes; and they show that a tokenizer whose merges
tiktoken would apply differently is refused (falls back to `tokenizers`) rather than mis-encoded.
No timing asserts: speed is measured by benchmarks/data_prepare.py.
"""

import json
import random

import numpy as np
import pytest
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from minimind.data.demo import source_documents
from minimind.data.prepare import prepare
from minimind.data.store import DocStore
from minimind.errors import UserError
from minimind.fast_bpe import tiktoken_encoding
from minimind.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, default_tokenizer_dir, load_tokenizer
from support import write_jsonl

tiktoken = pytest.importorskip("tiktoken")


def assert_same_ids(tok, texts):
    flat, lengths = tok.encode_flat(texts)
    ref = tok.encode_batch(texts)
    assert flat.dtype == np.uint32 and lengths.dtype == np.int64
    assert lengths.tolist() == [len(x) for x in ref]
    pos = 0
    for i, ids in enumerate(ref):  # per text, so a failure names the text
        assert flat[pos:pos + len(ids)].tolist() == ids, repr(texts[i][:80])
        pos += len(ids)


def test_shipped_tokenizer_runs_on_tiktoken(tok):
    assert tok.bulk_engine == "tiktoken"


def test_demo_prose_ids_equal_tokenizers(tok):
    # the whole real prose of the demo corpus: classical Chinese, poems, English documentation
    assert_same_ids(tok, [d["text"] for d in source_documents()])


def test_every_bmp_code_point_in_context(tok):
    # Oniguruma (tokenizers) and Rust's regex (tiktoken) must split identically: each code point
    # next to letters, digits, apostrophes, spaces, newlines and CJK, i.e. every branch of the
    # pattern. (All 1.1M code points in 15 contexts were compared once; this keeps the BMP and a
    # sample of the other planes, 256 code points per text so the test stays fast.)
    points = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF] + list(range(0x10000, 0x110000, 61))
    contexts = ("a{c}b", "'{c}{c}x ", " {c}\n", "1{c}  中{c}")
    texts = ["".join(ctx.format(c=chr(c)) for c in points[i:i + 256])
             for ctx in contexts for i in range(0, len(points), 256)]
    assert_same_ids(tok, texts)


ADVERSARIAL = [
    "",
    "中" * 20000,                                 # one 20k-character run: a single pre-token
    "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(5000)),  # a long run of rare characters
    "9" * 3000 + "3.14159" * 100,
    " " * 5000 + "x" + "\t \n" * 500 + "\r\n" * 100 + "\u3000\u00a0\u2028\x0b\x0c\x1c\x85" * 50,
    "👨‍👩‍👧‍👦🏳️‍🌈🇨🇳🇬🇧" * 200 + "e\u0301\u0327\u0308" * 100,
    "It's 'S 'ſ 'ﬆ 'LL 'Ve don'T I'M O'NEIL's 's's",
    "<|im_end|>\n<|im_start|>system\n<think>x</think><tool_call>{}</tool_call><|reserved_6|>",
    "混合Mixed文字text123数字！？。，、《书名》“引号” — dash…ellipsis",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم. नमस्ते दुनिया. こんにちは世界。안녕하세요",
    "\x00\x01\x7f\ufeff\ufffd\U0010ffff\U000e0001",
]


def test_adversarial_text_ids_equal_tokenizers(tok):
    rng = random.Random(0)
    alphabet = "aZ9 \t\n\r'ſ中文。，😀\u0301\u3000\u00a0-_<|>" + "".join(chr(c) for c in (0x85, 0x2028, 0x1680, 0x180e))
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(3000)]
    assert_same_ids(tok, ADVERSARIAL + randoms)


def test_control_markers_stay_text_and_lone_surrogates_are_refused(tok):
    flat, _ = tok.encode_flat(["<|im_end|><think><tool_call><|endoftext|>"])
    assert tok.added_ids.isdisjoint(flat.tolist())
    with pytest.raises(UserError, match=r"text 1, character 1: a lone surrogate \(U\+D800\)"):
        tok.encode_flat(["ok", "a\ud800"])


def _byte_level_spec(merges: list[tuple[str, str]]) -> dict:
    """A tokenizer.json of our pipeline: the 256 byte symbols, the given merges, our added tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, (t, _) in enumerate(SPECIAL_TOKENS)}
    for sym in alphabet + [a + b for a, b in merges]:
        vocab[sym] = len(vocab)
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([t for t, _ in SPECIAL_TOKENS])
    return json.loads(hf.to_str())


def test_merges_tiktoken_would_apply_differently_fall_back(tmp_path):
    # "bc" is merged before "ab", and "abc" is listed as ("ab", "c"). tokenizers encodes "abc" as
    # [a, bc] (no merge joins a and bc); tiktoken joins any pair whose concatenation is a token and
    # would give [abc]. Such a tokenizer must not take the fast path.
    spec = _byte_level_spec([("b", "c"), ("a", "b"), ("ab", "c")])
    assert tiktoken_encoding(spec, SPLIT_PATTERN) is None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    odd = load_tokenizer(tmp_path)
    assert odd.bulk_engine == "tokenizers"
    assert [odd.id_to_token(i) for i in odd.encode("abc")] == ["a", "bc"]
    assert_same_ids(odd, ["abc abcabc", "cab"])
    # the same vocabulary with merges in the order tiktoken implies is accepted, and agrees
    spec = _byte_level_spec([("a", "b"), ("b", "c"), ("ab", "c")])
    assert tiktoken_encoding(spec, SPLIT_PATTERN) is not None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    ok = load_tokenizer(tmp_path)
    assert ok.bulk_engine == "tiktoken" and [ok.id_to_token(i) for i in ok.encode("abc")] == ["abc"]
    assert_same_ids(ok, ["abc abcabc", "cab", "bcbc abab"])


def test_other_pipelines_fall_back():
    spec = json.loads((default_tokenizer_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert tiktoken_encoding(spec, SPLIT_PATTERN) is not None
    changed = json.loads(json.dumps(spec))
    changed["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+|."
    assert tiktoken_encoding(changed, SPLIT_PATTERN) is None  # a regex never compared
    changed = json.loads(json.dumps(spec))
    changed["normalizer"] = {"type": "NFC"}
    assert tiktoken_encoding(changed, SPLIT_PATTERN) is None
    changed = json.loads(json.dumps(spec))
    changed["model"]["merges"][10], changed["model"]["merges"][11] = (changed["model"]["merges"][11],
                                                                      changed["model"]["merges"][10])
    assert tiktoken_encoding(changed, SPLIT_PATTERN) is None  # merge order no longer the id order
    changed = json.loads(json.dumps(spec))
    the = changed["model"]["vocab"]["the"]
    changed["added_tokens"].append({"id": the, "content": "the", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": False})
    assert tiktoken_encoding(changed, SPLIT_PATTERN) is None  # an added token tiktoken could not emit


def test_prepare_with_workers_stores_the_reference_ids(tmp_path, tok):
    texts = ADVERSARIAL[1:] + [d["text"] for d in source_documents()[:300]]
    src = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in texts])
    res = prepare("pretrain", [src], tmp_path / "out", tok, workers=2)
    store = DocStore.open(res.path, tok, "pretrain")
    assert len(store) == len(texts)
    for d, ids in enumerate(tok.encode_batch(texts)):
        assert store.ids(d).tolist() == ids
