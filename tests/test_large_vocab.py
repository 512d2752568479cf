"""Large vocabularies (issue 13): streamed, bounded tokenizer training; a 152k-id tokenizer from
tokenizer to shards to training to export; the tokenizer/model fit check; chunked CE at 152k."""

import gc
import json
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Regex, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from minimind import tokenizer_train
from minimind.cli import main
from minimind.config import ModelConfig, get_preset
from minimind.data.loader import make_loader
from minimind.data.store import DocStore
from minimind.errors import UserError
from minimind.model import MiniMindLM
from minimind.model.lm_loss import CHUNK_ELEMENTS, logit_chunks, token_logprobs
from minimind.tokenizer import (SPECIAL_TOKENS, SPLIT_PATTERN, check_model_fit, default_tokenizer_dir,
                                load_tokenizer)
from minimind.tokenizer_train import count_words, iter_texts, train
from minimind.train.losses import _distill_terms, distill_loss, distill_loss_from_hidden

BIG = 152_000  # ids of the test tokenizer: Qwen3-sized (151,669), past uint16
LEARNED_AT = 100_000  # where its learned merges start: every merged token has an id > 65535

TEXT = ("第{i}句：the quick brown fox jumps over the lazy dog {i}. 今天天气很好，我们去公园散步吧！\n"
        "  indented   spaces\tand\ttabs, 'quoted' words, don't stop -- 3.14159 (parens) [brackets]\r\n")


def corpus(tmp_path, n=200):
    f = tmp_path / "corpus.txt"
    f.write_text("".join(TEXT.format(i=i) for i in range(n)), encoding="utf-8")
    return f


def big_tokenizer(tmp_path, fill: bool = True):
    """Our tokenizer trained small, renumbered Qwen3-style: bytes at 0-255, learned merges from
    LEARNED_AT, our special tokens at the very end (eos > 150000). `fill` puts never-produced
    filler tokens in the gaps (a real 152k vocabulary); without it the ids skip the gaps."""
    small = tokenizer_train.train_tokenizer([corpus(tmp_path)], 600, tmp_path / "small")
    spec = json.loads((small.path / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    n_special = len(SPECIAL_TOKENS)
    new = {}
    for token, i in vocab.items():
        if i < n_special:
            new[token] = BIG - n_special + i
        elif i < n_special + 256:
            new[token] = i - n_special
        else:
            new[token] = LEARNED_AT + i - n_special - 256
    if fill:
        used = set(new.values())
        new.update({f"<filler_{i}>": i for i in range(BIG) if i not in used})
    spec["model"]["vocab"] = new
    for entry in spec["added_tokens"]:
        entry["id"] = new[entry["content"]]
    out = tmp_path / ("big" if fill else "gappy")
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_bytes((small.path / "tokenizer_config.json").read_bytes())
    return load_tokenizer(out)


# -- training a tokenizer: bounded memory, same result, same conventions ---------------------------


def direct_training(files, vocab_size):
    """What `tokenizers` learns from the raw texts (the old, unbounded path), as a reference."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter_texts(files), trainer=trainer)
    return json.loads(tok.to_str())["model"]


def test_counted_training_equals_tokenizers_on_the_raw_text(tmp_path):
    files = [corpus(tmp_path)]
    res = train(files, 700, tmp_path / "tok")
    assert res.dropped == 0 and res.words > 0
    ours = json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    ref = direct_training(files, 700)
    assert ours["merges"] == ref["merges"] and ours["vocab"] == ref["vocab"]


def test_word_count_is_bounded_and_keeps_the_frequent_words():
    # "a" x 1000 and " b" x 500 are frequent; 3000 distinct hapaxes ("x0" ... ) would overflow.
    texts = ["a" * 1] * 1000 + [" b"] * 500 + [f" w{chr(0x4E00 + i)}" for i in range(3000)]
    counts, dropped = count_words(texts, max_words=100)
    assert len(counts) <= 100
    assert counts["a"] == 1000 and counts[" b"] == 500
    assert dropped == 3000 - sum(n for w, n in counts.items() if w.startswith(" w"))
    exact, none = count_words(texts, max_words=10_000)
    assert none == 0 and exact == Counter({"a": 1000, " b": 500, **{f" w{chr(0x4E00 + i)}": 1 for i in range(3000)}})


def test_a_line_without_newlines_streams_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer_train, "MAX_LINE", 1000)
    f = tmp_path / "one_line.txt"
    f.write_text("word " * 10_000, encoding="utf-8")  # 50 kB, no newline
    seen = []
    pieces = list(iter_texts([f], seen.append))
    assert max(map(len, pieces)) <= 1000 and "".join(pieces) == "word " * 10_000
    assert sum(seen) == f.stat().st_size  # the progress bar ends at the file size


def test_cli_big_vocab_on_tiny_data_says_it_fell_short_and_keeps_our_conventions(tmp_path, capsys):
    f = corpus(tmp_path, 50)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(f), "--vocab-size", "152000", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    tok = load_tokenizer(out)
    assert tok.vocab_size < 152000
    assert f"warning: --vocab-size 152000 not reached: the corpus gave only {tok.vocab_size} tokens" in cap.err
    assert "counting words" in cap.err  # the progress bar (tqdm, stderr)
    shipped = load_tokenizer(default_tokenizer_dir())
    for i, (name, _) in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == shipped.token_to_id(name) == i
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (shipped.pad_id, shipped.bos_id, shipped.eos_id)
    assert tok.chat_template == shipped.chat_template
    ours_cfg = json.loads((out / "tokenizer_config.json").read_text())
    shipped_cfg = json.loads((default_tokenizer_dir() / "tokenizer_config.json").read_text())
    assert ours_cfg["added_tokens_decoder"] == shipped_cfg["added_tokens_decoder"]


def test_cli_reports_a_bounded_count(tmp_path, capsys):
    f = corpus(tmp_path, 50)
    assert main(["tokenizer", "train", "--data", str(f), "--vocab-size", "400", "--out", str(tmp_path / "t"),
                 "--max-words", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "bounded at --max-words 20" in err and "counting words" not in err


# -- a 152k-id tokenizer and the model ---------------------------------------------------------------


def test_vocab_size_counts_ids_not_entries(tmp_path):
    gappy = big_tokenizer(tmp_path, fill=False)
    assert gappy.backend.get_vocab_size() < 1000  # entries
    assert gappy.vocab_size == BIG  # rows an embedding needs: the largest id + 1
    assert gappy.eos_id == BIG - len(SPECIAL_TOKENS) + 2


def test_check_model_fit(tmp_path):
    tok = big_tokenizer(tmp_path)
    check_model_fit(tok, BIG)  # a fresh model: its eos comes from the tokenizer
    check_model_fit(tok, BIG + 267, tok.eos_id)  # padded rows, as Qwen3's 151,936
    with pytest.raises(UserError, match=rf"has {BIG} ids but the model's vocabulary \(--vocab-size\) is 32000: "
                                        rf"use --vocab-size {BIG} or more"):
        check_model_fit(tok, 32000)
    with pytest.raises(UserError, match=rf"ends sequences with id {tok.eos_id} \(<\|im_end\|>\) but the model's "
                                        "eos_token_id is 2"):
        check_model_fit(tok, BIG, 2)
    shipped, tiny = load_tokenizer(None), get_preset("tiny")
    check_model_fit(shipped, tiny.vocab_size, tiny.eos_token_id)
    with pytest.raises(UserError, match="has 6400 ids but the model's vocabulary"):
        check_model_fit(shipped, 6399)


def test_152k_vocab_end_to_end_ids_above_uint16_survive(tmp_path):
    tok = big_tokenizer(tmp_path)
    text = TEXT.format(i=7)
    data = tmp_path / "pre.jsonl"
    data.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for _ in range(40)),
                    encoding="utf-8")
    ids = tok.encode(text)
    assert max(ids) > 65535 and tok.eos_id > 65535

    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", "--kind", "pretrain", "--data", str(data), "--out", str(prepared),
                 "--tokenizer", str(tok.path), "--workers", "1"]) == 0
    assert json.loads((prepared / "meta.json").read_text())["dtype"] == "uint32"
    store = DocStore.open(prepared, tok, "pretrain")
    assert store.ids(0).dtype == np.uint32 and all(store.ids(d).tolist() == ids for d in range(len(store)))

    # Windows of the stream doc, EOS, doc, EOS, ... (all docs are equal, so every window is in it).
    stream = ",".join(map(str, (ids + [tok.eos_id]) * 4))
    batch = next(iter(make_loader("pretrain", prepared, tok, 32, 2)))
    assert batch["input_ids"].max().item() > 65535
    for row in batch["input_ids"].tolist():
        assert ",".join(map(str, row)) in stream

    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "tiny", "--tokenizer", str(tok.path), "--data", str(prepared),
                 "--out", str(run), "--max-steps", "2", "--seq-len", "32", "--batch-size", "2",
                 "--device", "cpu", "--no-progress", "--eval-every", "0", "--num-samples", "0"]) == 0
    assert main(["export", "hf", "--ckpt", str(run), "--out", str(tmp_path / "hf")]) == 0
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["vocab_size"], hf_config["eos_token_id"]) == (BIG, tok.eos_id)
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok.encode(text, add_special_tokens=False) == ids
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:16]])).logits
    assert logits.shape == (1, 16, BIG) and torch.isfinite(logits).all()


# -- the chunked head + cross-entropy at a Qwen3-sized vocabulary -----------------------------------


def test_chunked_loss_and_gradients_equal_plain_cross_entropy_at_152k():
    torch.manual_seed(0)
    V, H, N = 151_936, 16, 120  # default chunking: 55 rows per chunk, so 3 chunks
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) * 0.5).requires_grad_()
    targets = torch.randint(65_536, V, (N,))
    targets[:10] = -100
    targets[10:20] = torch.arange(10)  # low ids too

    plain = F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=-100, reduction="sum")
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    chunked = -token_logprobs(hidden, weight, targets).sum()
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
    torch.testing.assert_close(chunked, plain)
    for g, r in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(g, r)


def saved_bytes(fn):
    """fn()'s result and the bytes autograd saves for its backward."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_distillation_terms_from_hidden_states_equal_the_full_logits_path():
    torch.manual_seed(0)
    V, H, N, T = 151_936, 8, 100, 1.7
    s_h = torch.randn(N, H, requires_grad=True)
    s_w = (torch.randn(V, H) * 0.3).requires_grad_()
    t_h, t_w = torch.randn(N, H), torch.randn(V, H) * 0.3
    targets = torch.randint(0, V, (N,))

    def full():
        kl, ce = _distill_terms(F.linear(s_h, s_w), F.linear(t_h, t_w), targets, T)
        return kl.mean() + ce.mean()

    def chunked():
        kl, ce = logit_chunks(lambda s, t, y: _distill_terms(s, t, y, T), [(s_h, s_w), (t_h, t_w)], targets)
        return kl.mean() + ce.mean()

    ref, ref_saved = saved_bytes(full)
    ref_grads = torch.autograd.grad(ref, (s_h, s_w))
    out, saved = saved_bytes(chunked)
    grads = torch.autograd.grad(out, (s_h, s_w))
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    logits_bytes = N * V * 4
    assert ref_saved >= 3 * logits_bytes and saved < logits_bytes / 10, (ref_saved, saved)


def live_tensors() -> dict[int, torch.Tensor]:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module objects warns of deprecations
        warnings.simplefilter("ignore")
        return {id(o): o for o in gc.get_objects() if isinstance(o, torch.Tensor)}


def largest_kept_for_backward(fn):
    """fn()'s result and the element count of the largest tensor kept for its backward: those
    autograd saves (saved_tensors_hooks) and those fn left alive (gc: an activation checkpoint
    holds its inputs, not saved tensors)."""
    largest = [0]

    def pack(t):
        largest[0] = max(largest[0], t.numel())
        return t

    before = live_tensors()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    alive = [t.numel() for i, t in live_tensors().items() if i not in before]
    return out, max([largest[0], *alive])


def test_distillation_of_two_models_at_50k_saves_no_logits_for_backward():
    # What `minimind distill` runs: both forwards with labels (hidden states, no logits), then the
    # chunked loss; a teacher of another width. Reference: today's loss on full [B, T, V] logits.
    V, T = 50_000, 96
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, num_layers=1, num_heads=2, num_kv_heads=1, max_seq_len=T)
    student = MiniMindLM(ModelConfig(hidden_size=16, **cfg))
    teacher = MiniMindLM(ModelConfig(hidden_size=24, **cfg)).requires_grad_(False)
    ids = torch.randint(0, V, (4, T))
    labels = ids.clone()
    labels[:, :6] = -100
    n_rows = int((labels[:, 1:] != -100).sum())
    assert n_rows > CHUNK_ELEMENTS // V  # several chunks

    def full():
        return distill_loss(student(ids).logits, teacher(ids).logits, labels, temperature=2.0, alpha=0.5)[0]

    def chunked():
        with torch.no_grad():
            t_hidden = teacher(ids, labels=labels).hidden
        return distill_loss_from_hidden(student(ids, labels=labels).hidden, student.head_operands, t_hidden,
                                        teacher.head_operands, labels, temperature=2.0, alpha=0.5)[0]

    ref, ref_largest = largest_kept_for_backward(full)
    ref_grads = torch.autograd.grad(ref, list(student.parameters()))
    out, largest = largest_kept_for_backward(chunked)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(torch.autograd.grad(out, list(student.parameters())), ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    assert ref_largest >= n_rows * V  # the plain path keeps [N, V] logits (and more) for its backward
    assert largest <= V * 24, (largest, n_rows * V)  # here: nothing larger than a head weight
