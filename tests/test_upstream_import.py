"""`minimind import minimind`: upstream MiniMind .pth state dicts and Transformers folders.

State dicts are built here with upstream's key names and layout (../shared/reference/upstream-facts.md),
and the imported model is compared with `reference_logits`, an independent forward pass written
from upstream's definition: rotate-half RoPE (optionally its YaRN), RMSNorm in float32, QK-norm
before RoPE, scores scaled by 1/sqrt(head_dim), softmax router with its top-k renormalisation rule,
shared experts added unweighted."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from minimind import load_model
from minimind.cli import main
from minimind.errors import UserError
from minimind.upstream import UpstreamFlags, import_upstream, load_upstream_model

V, H = 96, 64


def upstream_state_dict(layers=2, heads=4, kv_heads=2, head_dim=16, qk_norm=False, inner=96, experts=0,
                        shared=0, moe_inner=32, tied=True, seed=0, dtype=torch.float32):
    """Random weights under upstream's names; norms around 1 so that every weight matters."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.08):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    def norm(n):
        return (1 + torch.randn(n, generator=g) * 0.1).to(dtype)

    sd = {"model.embed_tokens.weight": w(V, H, scale=0.5), "model.norm.weight": norm(H)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": norm(H), p + "post_attention_layernorm.weight": norm(H),
                   p + "self_attn.q_proj.weight": w(heads * head_dim, H),
                   p + "self_attn.k_proj.weight": w(kv_heads * head_dim, H),
                   p + "self_attn.v_proj.weight": w(kv_heads * head_dim, H),
                   p + "self_attn.o_proj.weight": w(H, heads * head_dim)})
        if qk_norm:
            sd[p + "self_attn.q_norm.weight"], sd[p + "self_attn.k_norm.weight"] = norm(head_dim), norm(head_dim)
        mlps = [""] if not experts else ([f"experts.{e}." for e in range(experts)]
                                         + [f"shared_experts.{s}." for s in range(shared)])
        width = inner if not experts else moe_inner
        for m in mlps:
            sd.update({p + f"mlp.{m}gate_proj.weight": w(width, H), p + f"mlp.{m}up_proj.weight": w(width, H),
                       p + f"mlp.{m}down_proj.weight": w(H, width)})
        if experts:
            sd[p + "mlp.gate.weight"] = w(experts, H, scale=0.5)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] if tied else w(V, H)
    return sd


# -- the reference: upstream's function, written out -----------------------------------------


def rms(x, weight, eps):
    return weight.float() * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))


def rope_tables(head_dim, T, theta, yarn):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    scale = 1.0
    if yarn:  # upstream: factor 16 from 2048, beta 32/1, ramp clamped to D/2 - 1, attention factor 1.0
        orig, factor = 2048, 16

        def inv_dim(b):
            return head_dim * math.log(orig / (b * 2 * math.pi)) / (2 * math.log(theta))
        low, high = max(math.floor(inv_dim(32)), 0), min(math.ceil(inv_dim(1)), head_dim // 2 - 1)
        ramp = ((torch.arange(head_dim // 2).float() - low) / max(high - low, 0.001)).clamp(0, 1)
        freqs = freqs * (1 - ramp + ramp / factor)
    angles = torch.outer(torch.arange(T).float(), freqs)
    return torch.cat([angles.cos()] * 2, -1) * scale, torch.cat([angles.sin()] * 2, -1) * scale


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def swiglu(sd, p, x):
    return F.linear(F.silu(F.linear(x, sd[p + "gate_proj.weight"])) * F.linear(x, sd[p + "up_proj.weight"]),
                    sd[p + "down_proj.weight"])


def moe(sd, p, x, top_k, renorm_always, shared):
    probs = F.softmax(F.linear(x, sd[p + "gate.weight"]), -1)
    weights, ids = probs.topk(top_k, -1)
    if renorm_always or top_k > 1:  # minimind-3 renormalises for any k, minimind2 only when k > 1
        weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):  # token by token: nothing shared with our batched dispatch
        for w, e in zip(weights[t], ids[t]):
            out[t] += w * swiglu(sd, f"{p}experts.{int(e)}.", x[t:t + 1])[0]
    for s in range(shared):
        out += swiglu(sd, f"{p}shared_experts.{s}.", x)
    return out


def reference_logits(sd, ids, heads, kv_heads, head_dim, eps, theta=1e6, top_k=1, yarn=False, shared=0):
    sd = {k: v.float() for k, v in sd.items()}
    T = ids.shape[0]
    cos, sin = rope_tables(head_dim, T, theta, yarn)
    qk_norm = "model.layers.0.self_attn.q_norm.weight" in sd
    x = sd["model.embed_tokens.weight"][ids]
    layer = 0
    while f"model.layers.{layer}.input_layernorm.weight" in sd:
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"], eps)
        q = F.linear(h, sd[p + "self_attn.q_proj.weight"]).view(T, heads, head_dim)
        k = F.linear(h, sd[p + "self_attn.k_proj.weight"]).view(T, kv_heads, head_dim)
        v = F.linear(h, sd[p + "self_attn.v_proj.weight"]).view(T, kv_heads, head_dim)
        if qk_norm:
            q, k = rms(q, sd[p + "self_attn.q_norm.weight"], eps), rms(k, sd[p + "self_attn.k_norm.weight"], eps)
        q, k = rotate(q, cos[:, None], sin[:, None]), rotate(k, cos[:, None], sin[:, None])
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(head_dim)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        att = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, -1)
        x = x + F.linear(att, sd[p + "self_attn.o_proj.weight"])
        h = rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        is_moe = p + "mlp.gate.weight" in sd
        x = x + (moe(sd, p + "mlp.", h, top_k, qk_norm, shared) if is_moe else swiglu(sd, p + "mlp.", h))
        layer += 1
    x = rms(x, sd["model.norm.weight"], eps)
    return F.linear(x, sd.get("lm_head.weight", sd["model.embed_tokens.weight"]))


def ours(model, ids):
    with torch.no_grad():
        return model(ids[None]).logits[0]


IDS = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(1))


def save_pth(tmp_path, sd, name="full_sft_64.pth"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


# -- forward parity --------------------------------------------------------------------------


def test_minimind3_dense_pth_computes_upstreams_function(tmp_path):
    # head_dim 24 != hidden / heads: only the QK-norm weight tells it, and it must be read from there.
    sd = upstream_state_dict(qk_norm=True, head_dim=24, dtype=torch.float16)  # upstream saves half precision
    model = load_upstream_model(save_pth(tmp_path, sd))
    cfg = model.config
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qk_norm) == (4, 2, 24, True)
    assert cfg.rms_norm_eps == 1e-6 and cfg.tie_word_embeddings and cfg.intermediate_size == 96
    diff = (ours(model, IDS) - reference_logits(sd, IDS, 4, 2, 24, 1e-6)).abs().max().item()
    assert diff < 1e-4


def test_minimind2_dense_untied_needs_num_heads(tmp_path):
    sd = upstream_state_dict(tied=False)
    path = save_pth(tmp_path, sd)
    with pytest.raises(UserError, match="pass --num-heads"):
        load_upstream_model(path)
    model = load_upstream_model(path, UpstreamFlags(num_heads=4))
    assert not model.config.tie_word_embeddings and model.config.rms_norm_eps == 1e-5
    diff = (ours(model, IDS) - reference_logits(sd, IDS, 4, 2, 16, 1e-5)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("top_k", [1, 2])
def test_minimind3_moe_routing(top_k, tmp_path):
    sd = upstream_state_dict(qk_norm=True, experts=4)
    path = save_pth(tmp_path, sd)
    with pytest.raises(UserError, match="--experts-per-tok"):
        load_upstream_model(path)
    model = load_upstream_model(path, UpstreamFlags(experts_per_tok=top_k))
    assert model.config.num_experts == 4 and model.config.norm_topk_prob
    diff = (ours(model, IDS) - reference_logits(sd, IDS, 4, 2, 16, 1e-6, top_k=top_k)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("top_k", [1, 2])
def test_minimind2_moe_with_shared_experts(top_k, tmp_path):
    # minimind2 keeps a top-1 weight un-normalised (its probability): a different model from minimind-3's.
    sd = upstream_state_dict(experts=4, shared=2)
    model = load_upstream_model(save_pth(tmp_path, sd), UpstreamFlags(num_heads=4, experts_per_tok=top_k))
    assert model.config.num_shared_experts == 2 and model.config.norm_topk_prob == (top_k > 1)
    ref = reference_logits(sd, IDS, 4, 2, 16, 1e-5, top_k=top_k, shared=2)
    assert (ours(model, IDS) - ref).abs().max().item() < 1e-4


def test_yarn_switch_matches_upstreams_yarn(tmp_path):
    sd = upstream_state_dict(qk_norm=True)
    model = load_upstream_model(save_pth(tmp_path, sd), UpstreamFlags(yarn=True))
    assert model.config.rope_scaling["factor"] == 16 and model.config.rope_scaling["attention_factor"] == 1.0
    ref = reference_logits(sd, IDS, 4, 2, 16, 1e-6, yarn=True)
    assert (ours(model, IDS) - ref).abs().max().item() < 1e-4
    plain = reference_logits(sd, IDS, 4, 2, 16, 1e-6, yarn=False)
    assert (ref - plain).abs().max().item() > 1e-3  # the switch really changes the function


def test_config_json_beside_a_pth_supplies_what_tensors_cannot(tmp_path):
    sd = upstream_state_dict(experts=4, shared=1)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "minimind", "num_attention_heads": 4, "num_experts_per_tok": 2,
                                  "rms_norm_eps": 1e-6}))
    out = tmp_path / "ckpt"
    assert main(["import", "minimind", str(save_pth(tmp_path, sd)), "--out", str(out), "--config", str(config)]) == 0
    model = load_model(out)
    assert (model.config.num_heads, model.config.num_experts_per_tok, model.config.rms_norm_eps) == (4, 2, 1e-6)
    ref = reference_logits(sd, IDS, 4, 2, 16, 1e-6, top_k=2, shared=1)
    assert (ours(model, IDS) - ref).abs().max().item() < 1e-4


# -- Transformers folders, load_model, CLI, round trip ----------------------------------------


def upstream_folder(tmp_path, sd, **config):
    folder = tmp_path / "MiniMind2-hf"
    folder.mkdir()
    tied = config.get("tie_word_embeddings", True)
    weights = {k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight" or not tied}
    save_file(weights, str(folder / "model.safetensors"))
    cfg = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind",
           "auto_map": {"AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM"},
           "hidden_size": H, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": V,
           "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 4096, "use_moe": False, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_load_model_reads_an_upstream_folder(tmp_path):
    sd = upstream_state_dict(qk_norm=True, experts=4)
    folder = upstream_folder(tmp_path, sd, head_dim=16, use_moe=True, num_experts=4, num_experts_per_tok=2,
                             inference_rope_scaling=True, tie_word_embeddings=True)
    model = load_model(folder)
    assert model.config.max_seq_len == 4096 and model.config.num_experts_per_tok == 2
    ref = reference_logits(sd, IDS, 4, 2, 16, 1e-6, top_k=2, yarn=True)
    assert (ours(model, IDS) - ref).abs().max().item() < 1e-4


def test_import_hf_points_to_import_minimind(tmp_path, capsys):
    folder = upstream_folder(tmp_path, upstream_state_dict(qk_norm=True), head_dim=16)
    assert main(["import", "hf", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "use `minimind import minimind`" in capsys.readouterr().err


def test_cli_import_copies_tokenizer_and_result_loads(tmp_path, capsys):
    from minimind.tokenizer import default_tokenizer_dir

    sd = upstream_state_dict(qk_norm=True)
    path = save_pth(tmp_path, sd)
    out = tmp_path / "ckpt"
    assert main(["import", "minimind", str(path), "--out", str(out), "--tokenizer", str(default_tokenizer_dir())]) == 0
    assert (out / "tokenizer.json").is_file() and (out / "model_config.json").is_file()
    ref = reference_logits(sd, IDS, 4, 2, 16, 1e-6)
    assert (ours(load_model(out), IDS) - ref).abs().max().item() < 1e-4


def test_pth_to_ours_to_transformers_logits_equal(tmp_path):
    transformers = pytest.importorskip("transformers")
    from minimind.interop import export_hf

    sd = upstream_state_dict(qk_norm=True, experts=4)
    import_upstream(save_pth(tmp_path, sd), tmp_path / "ckpt", flags=UpstreamFlags(experts_per_tok=2))
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = theirs(IDS[None]).logits[0]
    ref = reference_logits(sd, IDS, 4, 2, 16, 1e-6, top_k=2)
    assert (hf_logits - ref).abs().max().item() < 1e-4
    assert (ours(load_model(tmp_path / "ckpt"), IDS) - hf_logits).abs().max().item() < 1e-4


# -- bad input: one-line errors, nothing at --out ----------------------------------------------


class NotAllowed:  # a pickled class: weights_only must refuse it, never import and run it
    pass


@pytest.mark.parametrize("content, message", [
    ("list", "not a state dict"),
    ("object", "loads safely \\(weights_only\\): it holds Python objects"),
    ("garbage", "not a PyTorch state dict that loads safely"),
    ("text", "not a PyTorch state dict that loads safely"),
    ("missing", "tensor model.layers.1.self_attn.v_proj.weight is missing"),
    ("extra", "unexpected tensor model.layers.0.self_attn.rotary.weight"),
    ("shape", "do not split into heads"),
])
def test_bad_pth_is_one_line_error_and_nothing_written(content, message, tmp_path):
    path = tmp_path / "bad.pth"
    sd = upstream_state_dict(qk_norm=True)
    if content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "object":
        torch.save({"x": NotAllowed()}, path)
    elif content == "garbage":
        path.write_bytes(b"\x00not a zip or a pickle")
    elif content == "text":  # the weights-only unpickler fails on this with a KeyError
        path.write_text("junk\n")
    else:
        if content == "missing":
            del sd["model.layers.1.self_attn.v_proj.weight"]
        if content == "extra":
            sd["model.layers.0.self_attn.rotary.weight"] = torch.zeros(3)
        if content == "shape":
            sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(20, H)
        torch.save(sd, path)
    with pytest.raises(UserError, match=message) as err:
        import_upstream(path, tmp_path / "out")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
