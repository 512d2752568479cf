"""`minimind export gguf`: the file's contents, its refusals, and -- with llama-cpp-python installed
(CI installs it: .ci/run) -- the real llama.cpp runtime tokenising, generating and rendering chats
exactly as we do."""

import importlib
import json
import os
import shutil

import pytest
import torch

from minimind import MiniMindLM, ModelConfig
from minimind.chat import render_text
from minimind.checkpoint import model_state_dict, save_model
from minimind.cli import main
from minimind.errors import UserError
from minimind.interop import interleave_perm, permute_heads
from minimind.tokenizer import default_tokenizer_dir, load_tokenizer



def runtime(name: str):
    """Import an external runtime; skip without it, except in CI (.ci/run), where it must be there."""
    if os.environ.get("MINIMIND_REQUIRE_LLAMA_CPP"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


gguf = runtime("gguf")
from minimind.gguf import export_gguf, gguf_architecture  # noqa: E402 - needs the gguf package

BASE = dict(vocab_size=6400, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=512)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
# family -> (config overrides, llama.cpp architecture)
FAMILIES = {
    "dense": ({}, "llama"),
    "untied": (dict(tie_word_embeddings=False), "llama"),
    "qkv_bias": (dict(qkv_bias=True), "qwen2"),
    "all_biases": (dict(qkv_bias=True, o_bias=True), "llama"),  # llama with q/k biases reordered too
    "qk_norm": (dict(qk_norm=True, rms_norm_eps=1e-6), "qwen3"),
    "moe_qk_norm": (dict(qk_norm=True, **MOE), "qwen3moe"),
    "moe_shared": (dict(num_shared_experts=1, **MOE), "ernie4_5-moe"),
    "yarn": (dict(rope_scaling=YARN), "llama"),
    "yarn_qk_norm": (dict(qk_norm=True, rope_scaling=dict(YARN, attention_factor=1.0)), "qwen3"),  # upstream's
}
# Mixed scripts, emoji, digit runs, contractions in any case, punctuation glued to words, CR/LF and
# space runs, punctuation before CJK: where llama.cpp's pre-tokenizers disagree (its "default",
# "deepseek-llm" and "gpt-2" give other ids here; "qwen2" uses our regex verbatim).
TEXT = ("MiniMind 训练小模型 in 2 hours! 价格是 12345 元 🚀🎉 emoji, naïve café\n\ttabs   and  spaces 你好，世界。"
        "It's DON'T we'LL (括号)word,word...!!! a\r\nb   \n  x。我们，而且.\n\n你 https://x.com")


def family_model(kw: dict, seed: int = 0) -> MiniMindLM:
    """Random unit-gain weights: every layer changes the residual stream as much as the embedding
    does (so attention, RoPE and routing decide the next token, not just the current token's own
    embedding), and logits are sharp, so greedy picks are far from ties."""
    torch.manual_seed(seed)
    model = MiniMindLM(ModelConfig(**BASE, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 1:  # biases
                p.copy_(0.1 * torch.randn_like(p))
            elif name == "embed_tokens.weight":
                p.normal_()
            else:  # [out, in]: unit gain; the router 3x sharper so routing is decisive but varied
                p.normal_(std=(3.0 if name.endswith("mlp.gate.weight") else 1.0) / p.shape[1] ** 0.5)
    return model


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata_and_tensors(family, tmp_path):
    kw, arch = FAMILIES[family]
    model = family_model(kw)
    path = export_gguf(model, tmp_path / "m.gguf")
    fields, tensors = read(path)
    assert fields["general.architecture"] == arch
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "qwen2"
    tok = json.loads((default_tokenizer_dir() / "tokenizer.json").read_text())
    assert len(fields["tokenizer.ggml.tokens"]) == 6400
    assert fields["tokenizer.ggml.tokens"][300] == {i: t for t, i in tok["model"]["vocab"].items()}[300]
    assert fields["tokenizer.ggml.merges"][0] == " ".join(tok["model"]["merges"][0])
    types = fields["tokenizer.ggml.token_type"]
    assert types[2] == gguf.TokenType.CONTROL and types[3] == gguf.TokenType.USER_DEFINED  # <|im_end|>, <think>
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.chat_template"] == load_tokenizer().chat_template
    assert fields[f"{arch}.attention.head_count_kv"] == 2 and fields[f"{arch}.block_count"] == 2
    assert ("output.weight" in tensors) == (family == "untied")
    # llama.cpp's llama/ernie rotate adjacent pairs: q rows must be reordered within each head.
    ours = model_state_dict(model)["layers.1.self_attn.q_proj.weight"]
    stored = torch.from_numpy(tensors["blk.1.attn_q.weight"].data.copy()).reshape(ours.shape)
    expected = permute_heads(ours, 16, interleave_perm(16)) if arch in ("llama", "ernie4_5-moe") else ours
    assert torch.equal(stored, expected)
    if kw.get("num_experts"):
        experts = tensors["blk.0.ffn_up_exps.weight"].data
        assert experts.shape == (4, 64, 64)
        expert3 = model_state_dict(model)["layers.0.mlp.experts.3.up_proj.weight"]
        assert torch.equal(torch.from_numpy(experts[3].copy()), expert3)


def test_q8_0_quantises_matrices_only(tmp_path):
    path = export_gguf(family_model(FAMILIES["moe_qk_norm"][0]), tmp_path / "m.gguf", dtype="q8_0")
    fields, tensors = read(path)
    Q8, F32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"].tensor_type == Q8 and tensors["token_embd.weight"].tensor_type == Q8
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type == F32  # the router decides discretely: kept exact
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type == F32
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0


@pytest.mark.parametrize("kw, message", [
    (dict(qk_norm=True, norm_topk_prob=False, **MOE), "always renormalise"),
    (dict(norm_topk_prob=False, **MOE), "always renormalise"),
    (dict(qkv_bias=True, **MOE), "no attention biases"),
    (dict(qk_norm=True, num_shared_experts=1, **MOE), "its qwen3moe has no shared experts"),
    (dict(rope_scaling=dict(YARN, beta_fast=16.0)), "YaRN always uses beta_fast 32"),
])
def test_unsupported_models_are_refused_before_writing(kw, message, tmp_path):
    with pytest.raises(UserError, match=message):
        export_gguf(family_model(kw), tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_refusal_names_the_checkpoint(tmp_path, capsys):
    kw = dict(qk_norm=True, num_shared_experts=1, **MOE)
    ckpt = save_model(family_model(kw), tmp_path / "ckpt", tokenizer_dir=default_tokenizer_dir())
    assert main(["export", "gguf", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ckpt}: llama.cpp cannot run this model exactly") and err.count("\n") == 1
    assert not (tmp_path / "m.gguf").exists()


def test_other_pre_tokenizer_is_refused(tmp_path):
    tok_dir = tmp_path / "tok"
    shutil.copytree(default_tokenizer_dir(), tok_dir)
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,3}| ?\p{L}+|\s+"
    (tok_dir / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="would tokenize differently"):
        export_gguf(family_model({}), tmp_path / "m.gguf", tokenizer_dir=tok_dir)
    assert not (tmp_path / "m.gguf").exists()


def test_cli_writes_file_and_modelfile_and_refuses_overwrite(tmp_path, capsys):
    ckpt = save_model(family_model({}), tmp_path / "ckpt", tokenizer_dir=default_tokenizer_dir())
    out = tmp_path / "mini.gguf"
    assert main(["export", "gguf", "--ckpt", str(ckpt), "--out", str(out), "--dtype", "q8_0", "--modelfile"]) == 0
    modelfile = (tmp_path / "mini.Modelfile").read_text()
    assert modelfile.startswith("FROM ./mini.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    before = out.read_bytes()
    assert main(["export", "gguf", "--ckpt", str(ckpt), "--out", str(out)]) == 2
    assert "exists; choose a new file name or pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["export", "gguf", "--ckpt", str(ckpt), "--out", str(out), "--force"]) == 0
    assert read(out)[0]["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mini.Modelfile", "mini.gguf"]  # no temp files


def test_architecture_choice_matches_families():
    for kw, arch in FAMILIES.values():
        assert gguf_architecture(ModelConfig(**BASE, **kw)) == arch


# -- the real runtime --------------------------------------------------------------------------


def greedy(model: MiniMindLM, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Our greedy continuation and the smallest top-1/top-2 logit margin along it."""
    ids, margin = list(prompt), float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            top = logits.topk(2).values
            margin = min(margin, (top[0] - top[1]).item())
            ids.append(int(logits.argmax()))
    return ids[len(prompt):], margin


def llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == n:
            break
    return out


CONVERSATION = [
    {"role": "system", "content": "你是 MiniMind，一个乐于助人的助手。"},
    {"role": "user", "content": "What is 12 + 30? 请用中文回答 🙂"},
    {"role": "assistant", "content": "等于 42。", "reasoning_content": "12 加 30 是 42。"},
    {"role": "user", "content": "And times 2?"},
]


@pytest.mark.slow
def test_llama_cpp_tokenises_upstream_style_tokenizer(tmp_path):
    """Upstream MiniMind's tokenizer.json has a lone ByteLevel(use_regex=true) pre-tokenizer: exported
    with pre "gpt-2", llama.cpp must split and merge exactly as `tokenizers` does."""
    llama_cpp = runtime("llama_cpp")
    from tokenizers import Tokenizer

    tok_dir = tmp_path / "tok"
    shutil.copytree(default_tokenizer_dir(), tok_dir)
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (tok_dir / "tokenizer.json").write_text(json.dumps(data))
    path = export_gguf(family_model({}), tmp_path / "m.gguf", tokenizer_dir=tok_dir)
    assert read(path)[0]["tokenizer.ggml.pre"] == "gpt-2"
    expected = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    assert expected != load_tokenizer().encode(TEXT)  # the split really differs from ours
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == expected
    llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_runtime_matches_ours(family, tmp_path):
    llama_cpp = runtime("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model = family_model(FAMILIES[family][0])
    tok = load_tokenizer()
    prompt = tok.encode(TEXT)
    ours, margin = greedy(model, prompt, 32)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0]
    assert margin > 1e-3, "test model too close to a tie for a fair comparison"
    for dtype, n in (("f32", 32), ("q8_0", 8)):
        path = export_gguf(model, tmp_path / f"{family}-{dtype}.gguf", dtype=dtype)
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False,
                              type_k=0, type_v=0)  # 0: GGML_TYPE_F32 (the default f16 KV cache rounds)
        # (a) tokenisation: id for id, with no BOS added and markers not parsed
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == prompt
        assert llm.detokenize(prompt).decode() == TEXT
        # (b) every position's logits (which sees RoPE/YaRN and routing details greedy tokens may
        # hide), then greedy generation: all 32 tokens in f32, the first 8 in q8_0
        llm.eval(prompt)
        theirs = torch.from_numpy(llm.scores[:len(prompt)].copy())
        err = ((theirs - logits).abs().max() / logits.abs().max()).item()
        assert err < (1e-5 if dtype == "f32" else 0.05), f"{family} {dtype}: relative logit error {err:.2e}"
        llm.reset()
        assert llama_greedy(llm, prompt, n) == ours[:n], f"{family} {dtype}"
        # (c) the GGUF's chat template, rendered the way llama-cpp-python's chat handler does
        template = llm.metadata["tokenizer.chat_template"]
        rendered = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|im_start|>")(
            messages=CONVERSATION).prompt
        assert rendered == render_text(CONVERSATION, add_generation_prompt=True)
        llm.close()
