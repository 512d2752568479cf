"""Hugging Face interop: exported folders load natively in transformers with identical logits,
transformers-made models load in MiniMind with identical logits, and round trips are bit-exact."""

import json

import pytest
import torch

from minimind import MiniMindLM, ModelConfig, load_model
from minimind.checkpoint import model_state_dict, save_model
from minimind.cli import main
from minimind.errors import UserError
from minimind.interop import export_hf, hf_architecture, import_hf
from minimind.locator import CheckpointError

transformers = pytest.importorskip("transformers")

V = 97
BASE = dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=256)
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
# preset family -> (config overrides, the native transformers class it must load as)
FAMILIES = {
    "dense": ({}, "LlamaForCausalLM"),
    "qkv_bias": (dict(qkv_bias=True), "Qwen2ForCausalLM"),
    "all_biases": (dict(qkv_bias=True, o_bias=True), "LlamaForCausalLM"),
    "qk_norm": (dict(qk_norm=True, rms_norm_eps=1e-6), "Qwen3ForCausalLM"),
    "moe_qk_norm": (dict(qk_norm=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
                    "Qwen3MoeForCausalLM"),
    "moe_shared": (dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=32),
                   "Ernie4_5_MoeForCausalLM"),
    "yarn": (dict(rope_scaling=YARN), "LlamaForCausalLM"),
    "yarn_qk_norm": (dict(rope_scaling=YARN, qk_norm=True), "Qwen3ForCausalLM"),
    "untied": (dict(tie_word_embeddings=False), "LlamaForCausalLM"),
}


def random_model(kw, seed=0) -> MiniMindLM:
    torch.manual_seed(seed)
    model = MiniMindLM(ModelConfig(**BASE, **kw)).eval()
    with torch.no_grad():  # perturb the ones-initialised norms too, so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_load(folder):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True, dtype=torch.float32)
    return model.eval(), info


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_natively_with_identical_logits(family, tmp_path):
    kw, cls = FAMILIES[family]
    ours = random_model(kw)
    export_hf(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config  # no remote code
    theirs, info = hf_load(tmp_path)
    assert type(theirs).__name__ == cls
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    x = torch.randint(0, V, (2, 200))  # past YaRN's original 64-token context
    with torch.no_grad():
        diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    assert diff <= 1e-4, f"{family}: max-abs logit difference {diff}"


@pytest.mark.parametrize("family", FAMILIES)
def test_export_then_import_is_bit_exact(family, tmp_path):
    ours = random_model(FAMILIES[family][0])
    export_hf(ours, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt")
    assert back.config.to_dict() | {"extra": {}} == ours.config.to_dict() | {"extra": {}}
    a, b = model_state_dict(ours), model_state_dict(back)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def hf_made(kind: str, tmp_path, rope: dict | None = None):
    """A model created and randomly initialised by transformers itself, then saved."""
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common, head_dim=16)
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**common)
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(**common, head_dim=32)  # head_dim != hidden / heads
    else:
        cfg = transformers.Qwen3MoeConfig(**common, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32, norm_topk_prob=True)
    if rope is not None:  # the 5.x spelling of RoPE settings
        cfg.rope_parameters = rope
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "qwen3_moe"])
def test_transformers_made_model_loads_with_identical_logits(kind, tmp_path):
    theirs = hf_made(kind, tmp_path)
    ours = load_model(tmp_path)
    x = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        diff = (ours(x).logits - theirs(x).logits).abs().max().item()
    assert diff <= 1e-4, f"{kind}: max-abs logit difference {diff}"
    if kind == "qwen2":
        assert ours.config.qkv_bias and not ours.config.o_bias


def test_transformers_yarn_rope_parameters_are_read(tmp_path):
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}
    theirs = hf_made("qwen3", tmp_path, rope=rope)
    ours = load_model(tmp_path)
    assert ours.config.rope_scaling["factor"] == 4.0 and ours.config.rope_theta == 10000.0
    x = torch.randint(0, V, (1, 120))
    with torch.no_grad():
        assert (ours(x).logits - theirs(x).logits).abs().max().item() <= 1e-4


def test_legacy_rope_scaling_keys_are_read(tmp_path):
    ours = random_model(dict(rope_scaling=YARN))
    export_hf(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]  # a 4.x-era folder has only rope_theta + rope_scaling
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path).config.rope_scaling["factor"] == 4.0


def test_unsupported_models_give_clear_errors(tmp_path):
    model = random_model(dict(qk_norm=True, num_experts=4, num_shared_experts=1, moe_intermediate_size=32))
    with pytest.raises(UserError, match="no transformers architecture computes this MoE exactly"):
        hf_architecture(model.config)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="model_type 'gpt2' is not supported"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nowhere")


def test_checkpoint_rejects_weights_of_another_shape(tmp_path):
    save_model(random_model({}), tmp_path)
    cfg = json.loads((tmp_path / "model_config.json").read_text())
    cfg["hidden_size"] = 32
    cfg["intermediate_size"] = None
    cfg["moe_intermediate_size"] = None
    cfg["head_dim"] = None
    (tmp_path / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        load_model(tmp_path)


def test_cli_export_and_import(tmp_path, capsys):
    ours = random_model(dict(qk_norm=True))
    save_model(ours, tmp_path / "ckpt")
    assert main(["export", "hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        assert (tmp_path / "hf" / name).is_file()
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back")
    assert all(torch.equal(a, b) for a, b in zip(model_state_dict(ours).values(), model_state_dict(back).values()))
    assert main(["export", "hf", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_model_list_prints_every_preset(capsys):
    assert main(["model", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    names = [r.split()[0] for r in rows]
    assert names == ["tiny", "small", "base", "moe", "minimind3", "qwen3-0.6b"]
    small = rows[1].split()
    assert small[1] == "25.8M"
    moe = rows[3].split()
    assert moe[1] == "145.0M" and moe[2] == "91.9M"  # total and active
