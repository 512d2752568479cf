"""Long context: document masking for packed rows (model and loader), activation checkpointing at
long sequence lengths, and the passkey-retrieval eval."""

import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minimind import MiniMindLM, ModelConfig
from minimind.cli import main
from minimind.checkpoint import load_model, save_model
from minimind.config import IGNORE_INDEX
from minimind.data.loader import make_loader
from minimind.errors import UserError
from minimind.eval.passkey import DEPTHS, FILLER, INTRO, NEEDLE, QUESTION, correct, evaluate_passkey, make_cases
from minimind.eval.report import format_results, make_report
from minimind.eval.run import Settings, evaluate
from minimind.model.attention import Attention, document_mask, document_positions, document_runs
from minimind.model.rope import RotaryTables
from minimind.tokenizer import default_tokenizer_dir
from minimind.train.build import enable_activation_checkpointing
from support import model_families, tiny_model_config, write_jsonl

V = 101
LENGTHS = (5, 9, 7)  # three documents packed into one row of 21 tokens


def tiny(**kw) -> ModelConfig:
    return tiny_model_config(64, **kw)


FAMILIES = model_families(16)


def packed(seed=0):
    """Three random documents, their packed row [1, 21] and its doc ids (0, 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, V, (1, n), generator=g) for n in LENGTHS]
    ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(LENGTHS)], 1)
    return docs, torch.cat(docs, 1), ids


def make(kw, seed=0):
    torch.manual_seed(seed)
    return MiniMindLM(tiny(**kw)).eval()


# ----------------------------------------------------------------------------- document masking

def test_document_positions_and_runs_by_hand():
    d = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [3, 3, 3, 3, 3, 3, 3, 3]])
    assert document_positions(d).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]
    assert document_runs(d).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3], [0] * 8]
    # an id reused later in the row is a new document, not the same one again
    again = torch.tensor([[0, 0, 1, 0]])
    m = document_mask(again)[0, 0]
    assert m.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("kw", FAMILIES.values(), ids=FAMILIES.keys())
def test_document_masked_logits_equal_each_document_alone(kw):
    model = make(kw)
    docs, row, ids = packed()
    with torch.no_grad():
        masked = model(row, doc_ids=ids).logits
        alone = torch.cat([model(d).logits for d in docs], 1)
        plain = model(row).logits
    torch.testing.assert_close(masked, alone, rtol=0, atol=1e-5)
    assert (plain[:, LENGTHS[0]:] - alone[:, LENGTHS[0]:]).abs().max() > 1e-3  # the mask did matter


def test_document_masked_loss_and_grads_equal_each_document_alone():
    """fp32: the packed loss (boundary labels -100, as the loader makes them) is the token-weighted
    mean of the per-document losses, and so are its gradients."""
    torch.manual_seed(0)
    model = MiniMindLM(tiny(**FAMILIES["qk_norm"])).train()
    docs, row, ids = packed(1)
    labels = row.clone()
    labels[0, np.cumsum(LENGTHS)[:-1]] = IGNORE_INDEX  # each later document's first token
    model.zero_grad()
    loss = model(row, labels=labels, doc_ids=ids).loss
    loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    n_targets = sum(n - 1 for n in LENGTHS)
    total = sum(model(d, labels=d).loss * (d.shape[1] - 1) for d in docs) / n_targets
    total.backward()
    torch.testing.assert_close(loss, total, rtol=0, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_without_doc_ids_the_forward_is_unchanged():
    """One document covering the row is exactly plain causal attention; no doc_ids is the old path."""
    model = make({})
    _, row, _ = packed()
    with torch.no_grad():
        plain = model(row).logits
        one_doc = model(row, doc_ids=torch.zeros_like(row)).logits
    torch.testing.assert_close(one_doc, plain, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="KV cache"):
        model(row, doc_ids=torch.zeros_like(row), kv_cache=model.new_kv_cache(1, 32))


def test_flex_block_mask_equals_the_sdpa_mask():
    """The GPU path (flex attention with a BlockMask), run eagerly on the CPU, agrees with SDPA."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    cfg = tiny()
    attn = Attention(cfg).eval()
    _, row, ids = packed()
    x = torch.randn(1, row.shape[1], cfg.hidden_size)
    cos, sin = RotaryTables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)(document_positions(ids), x.dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        flex = attn(x, cos, sin, document_mask(ids, flex=True))
    sdpa = attn(x, cos, sin, document_mask(ids)).detach()
    torch.testing.assert_close(flex, sdpa, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the packer's doc ids

def texts(n):
    words = ["alpha", "beta", "星期", "gamma", "数据", "delta"]
    return [f"doc {i}: " + " ".join(words[(i + j) % len(words)] for j in range(2 + i % 9)) for i in range(n)]


def test_pretrain_batches_carry_doc_ids_and_unlabel_document_starts(tmp_path, tok):
    src = write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(40)])
    plain = make_loader("pretrain", src, tok, 32, 4, val_fraction=0)
    masked = make_loader("pretrain", src, tok, 32, 4, val_fraction=0, document_ids=True)
    for _ in range(3):
        a, b = next(plain), next(masked)
        assert set(a) == {"input_ids", "labels"} and set(b) == {"input_ids", "labels", "doc_ids"}
        assert torch.equal(a["input_ids"], b["input_ids"])  # same windows, same order
        x, docs = b["input_ids"], b["doc_ids"]
        # by hand: a token's document number is the count of EOS tokens before it in its window
        eos_before = torch.cat([torch.zeros(4, 1, dtype=torch.long), (x[:, :-1] == tok.eos_id).long().cumsum(1)], 1)
        assert torch.equal(docs, eos_before)
        starts = torch.zeros_like(x, dtype=torch.bool)
        starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
        assert torch.equal(b["labels"], torch.where(starts, IGNORE_INDEX, x))
        assert starts.any()  # these short documents always end inside a 32-token window
    assert plain.state_dict() == masked.state_dict()


def test_a_loader_batch_with_document_masking_scores_each_document_alone(tmp_path, tok):
    src = write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(40)])
    batch = next(make_loader("pretrain", src, tok, 48, 1, val_fraction=0, document_ids=True))
    torch.manual_seed(0)
    model = MiniMindLM(tiny(vocab_size=tok.vocab_size)).eval()
    x, docs = batch["input_ids"], batch["doc_ids"][0]
    with torch.no_grad():
        out = model(x, labels=batch["labels"], doc_ids=batch["doc_ids"])
        alone = [model(x[:, docs == d], labels=x[:, docs == d]) for d in docs.unique()]
    # mean over every document's own next-token targets, weighted by how many each has
    n = [int((docs == d).sum()) - 1 for d in docs.unique()]
    expected = sum(o.loss * k for o, k in zip(alone, n)) / sum(n)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-5)


def test_sft_batches_carry_doc_ids_per_conversation_and_pad_as_minus_one(tmp_path, tok):
    convs = [[{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": "a" * (1 + i % 4)}]
             for i in range(10)]
    src = write_jsonl(tmp_path / "s.jsonl", [{"conversations": c} for c in convs])
    loader = make_loader("sft", src, tok, 64, 3, val_fraction=0, document_ids=True)
    plan = loader._plan_for(0)
    batch = next(loader)
    for r, k in enumerate(plan["units"][:3].tolist()):
        ids, _ = loader.row(plan, k)
        docs = plan["order"][plan["starts"][k]:plan["starts"][k + 1]]
        expected = sum(([j] * min(int(loader.store.lengths[d]), 64) for j, d in enumerate(docs)), [])
        T = batch["input_ids"].shape[1]
        assert batch["doc_ids"][r].tolist() == expected + [-1] * (T - len(expected))
    with pytest.raises(UserError, match="packed rows"):
        pairs = [{"chosen": convs[0], "rejected": convs[1]}] * 3
        make_loader("dpo", write_jsonl(tmp_path / "d.jsonl", pairs), tok, 64, 1, val_fraction=0, document_ids=True)


# ----------------------------------------------------------------------------- activation checkpointing

@pytest.mark.parametrize("masked", [False, True], ids=["causal", "document-masked"])
def test_activation_checkpointing_keeps_loss_and_grads_at_1024_tokens(masked):
    """Recomputing each block in the backward pass changes memory, not the numbers (seq 1024)."""
    T = 1024
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (1, T), generator=g)
    docs = (torch.arange(T) // 300).view(1, T) if masked else None  # 4 documents
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MiniMindLM(tiny(max_seq_len=T, hidden_size=32, num_heads=2, num_kv_heads=1)).train()
        if ckpt:
            enable_activation_checkpointing(model)
        calls = []
        model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))  # (recomputing stops early)
        loss = model(x, labels=x, doc_ids=docs).loss
        loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointed: the block ran again in the backward pass
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=1e-7, msg=n)


# ----------------------------------------------------------------------------- passkey retrieval

class ScriptedEngine:
    """Stands in for the inference engine: reads the key from the prompt and answers it right only
    when the needle starts in the first 40% of the prompt, in one of several phrasings."""

    def __init__(self, tok, max_seq_len=4096):
        self.tokenizer, self.max_seq_len, self.prompts = tok, max_seq_len, []

    def new_sequence(self, prompt_ids, params):
        assert params.temperature == 0.0  # greedy
        return SimpleNamespace(prompt_ids=prompt_ids, max_new_tokens=params.max_new_tokens, text="")

    def run(self, seqs):
        for s in seqs:
            self.prompts.append(s.prompt_ids)
            text = self.tokenizer.decode(s.prompt_ids)
            key = re.search(r"The pass key is (\d+)\. Remember it", text).group(1)
            where = len(self.tokenizer.encode(text[:text.index(" The pass key is")])) / len(s.prompt_ids)
            s.text = f" {key}." if where < 0.4 else f" {key[:-1]}"  # a wrong answer: one digit short
            yield SimpleNamespace(finished=True)


def test_passkey_prompts_have_the_asked_length_and_the_key_at_its_depth(tok):
    cases = make_cases(tok, lengths=(256, 1024), depths=(0.0, 0.5, 1.0), trials=2, seed=3)
    assert len(cases) == 12
    intro, unit = len(tok.encode(INTRO)), len(tok.encode(FILLER))
    for c in cases:
        assert len(c.prompt_ids) == c.length  # exact, not only within a few tokens
        assert re.fullmatch(r"\d{5}", c.key)
        text = tok.decode(c.prompt_ids)
        assert text.count(c.key) == 2 and text.endswith(QUESTION) and text.startswith(INTRO)
        needle = len(tok.encode(NEEDLE.format(key=c.key)))
        filler = c.length - intro - needle - len(tok.encode(QUESTION))
        # the needle starts after round(depth * whole filler groups) groups, i.e. within half a
        # group of depth * filler
        assert abs((c.needle_at - intro) - c.depth * filler) <= unit / 2 + c.depth * unit
        assert c.prompt_ids[c.needle_at:c.needle_at + needle] == tok.encode(NEEDLE.format(key=c.key))
    assert cases[0].needle_at == intro  # depth 0: right after the introduction
    again = make_cases(tok, lengths=(256, 1024), depths=(0.0, 0.5, 1.0), trials=2, seed=3)
    assert [c.prompt_ids for c in again] == [c.prompt_ids for c in cases]  # deterministic by seed
    other = make_cases(tok, lengths=(256, 1024), depths=(0.0, 0.5, 1.0), trials=2, seed=4)
    assert [c.key for c in other] != [c.key for c in cases]
    with pytest.raises(UserError, match="too short"):
        make_cases(tok, lengths=(40,), depths=(0.5,), trials=1)


def test_passkey_scoring_by_hand():
    assert correct(" 71432.", "71432") and correct("The pass key is 71432", "71432")
    assert not correct(" 7143", "71432") and not correct(" 714321", "71432")
    assert not correct("", "71432") and not correct(" seventy", "71432")
    assert not correct(" 12 71432", "71432")  # the first number counts


def test_passkey_accuracy_by_length_and_depth(tok):
    engine = ScriptedEngine(tok, max_seq_len=1030)  # 1024 + 8 new tokens does not fit: skipped
    cases = make_cases(tok, lengths=(256, 512, 1024), depths=DEPTHS, trials=2)
    res = evaluate_passkey(engine, cases, max_new_tokens=8)
    # needle position / length: depth 0 and 25% are < 0.4 at both lengths, 50% and beyond are not
    assert res["n"] == 20 and res["skipped_lengths"] == [1024]
    assert res["accuracy"] == 8 / 20
    assert res["accuracy_len_256"] == res["accuracy_len_512"] == 2 / 5
    assert [res[f"accuracy_depth_{p}"] for p in ("0", "25", "50", "75", "100")] == [1, 1, 0, 0, 0]
    assert res["grid"]["512"] == {"0": 1, "25": 1, "50": 0, "75": 0, "100": 0}
    assert sum(p["correct"] for p in res["predictions"]) == 8
    assert sorted(len(p) for p in engine.prompts) == [256] * 10 + [512] * 10
    text = format_results(make_report("scripted", [res]))
    assert "accuracy_len_256" in text and text.index("accuracy_len_256") < text.index("accuracy_len_512")
    grid = text[text.index("passkey accuracy by length"):].splitlines()
    assert grid[1].split() == ["length", "all", "0%", "25%", "50%", "75%", "100%"]
    assert grid[4].split() == ["512", "40%", "100%", "100%", "0%", "0%", "0%"]
    assert grid[5] == "skipped (longer than the context): 1024"
    with pytest.raises(UserError, match="no passkey length fits"):
        evaluate_passkey(ScriptedEngine(tok, max_seq_len=200), cases)


def test_passkey_suite_on_a_checkpoint_is_greedy_generation(tmp_path, tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=300)
    ckpt = save_model(MiniMindLM(cfg).eval(), tmp_path / "m", tokenizer_dir=default_tokenizer_dir())
    s = Settings(passkey_lengths=(128, 256, 512), passkey_depths=(0.0, 1.0), passkey_trials=1, seed=1)
    report = evaluate(ckpt, "passkey", None, s)
    assert report["task"] == "passkey" and report["skipped_lengths"] == [512] and report["n"] == 4
    preds = report["predictions"]
    assert report["accuracy"] == sum(p["correct"] for p in preds) / 4
    # the first case by hand: greedy decoding with full forwards, 8 new tokens
    model = load_model(ckpt).eval()
    case = make_cases(tok, (128,), (0.0,), 1, seed=1)[0]
    ids = list(case.prompt_ids)
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in (tok.eos_id, tok.pad_id):
                break
            ids.append(nxt)
    assert preds[0]["key"] == case.key and preds[0]["output"] == tok.decode(ids[len(case.prompt_ids):])
    assert report["settings"]["passkey_lengths"] == (128, 256, 512)
    with pytest.raises(UserError, match="no --data"):
        evaluate(ckpt, "passkey", "x.jsonl", s)

def test_cli_suite_passkey_prints_accuracy_by_length(tmp_path, tok, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=300)
    ckpt = save_model(MiniMindLM(cfg).eval(), tmp_path / "m", tokenizer_dir=default_tokenizer_dir())
    out = tmp_path / "r.json"
    assert main(["eval", "--ckpt", str(ckpt), "--suite", "passkey", "--lengths", "128,256", "--depths", "0,100",
                 "--trials", "1", "--json", str(out), "--no-log"]) == 0
    text = capsys.readouterr().out
    assert "passkey accuracy by length (tokens) and depth" in text and "accuracy_len_128" in text
    report = json.loads(out.read_text())
    assert report["n"] == 4 and report["settings"]["passkey_depths"] == [0.0, 1.0]
    assert main(["eval", "--ckpt", str(ckpt), "--suite", "passkey", "--data", "x"]) == 2


def test_pretrain_document_mask_changes_the_first_step(tmp_path, tok):
    src = write_jsonl(tmp_path / "pt.jsonl", [{"text": t} for t in texts(60)])
    losses = {}
    for flag in ("--no-document-mask", "--document-mask"):
        run = tmp_path / flag
        assert main(["pretrain", "--data", str(src), "--out", str(run), "--seq-len", "64", "--batch-size", "2",
                     "--max-steps", "1", "--device", "cpu", "--eval-batches", "0", "--num-samples", "0",
                     "--no-progress", flag]) == 0
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        losses[flag] = first["loss"]
    assert losses["--document-mask"] != losses["--no-document-mask"]
