"""Print the Hugging Face parity table: max-abs logit difference per preset family, both directions.

    .venv/bin/python benchmarks/hf_parity.py [--dtype float32]

For each family a tiny random MiniMind model is exported with `minimind.interop.export_hf`, loaded
by `transformers.AutoModelForCausalLM` (no remote code) and both are run on the same 200 tokens.
The reverse direction builds a model with transformers, saves it and loads it with
`minimind.load_model`. Needs the `hf` (or `dev`) extra.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers

from minimind import MiniMindLM, ModelConfig, get_preset, load_model
from minimind.devices import torch_dtype
from minimind.interop import export_hf

BASE = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=256)
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
FAMILIES = {
    "dense (small/base)": {},
    "QK-norm (minimind3, qwen3)": dict(qk_norm=True, rms_norm_eps=1e-6),
    "MoE + shared (moe preset)": dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                                      moe_intermediate_size=32),
    "MoE + QK-norm": dict(qk_norm=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "YaRN (factor 4, 200 > 64 tokens)": dict(rope_scaling=YARN),
    "q/k/v biases (qwen2)": dict(qkv_bias=True),
}


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = torch_dtype(args.dtype)
    torch.manual_seed(0)
    x = torch.randint(0, 97, (2, 200))
    print(f"| family | transformers class | max-abs diff ({args.dtype}) |\n|---|---|---|")
    for name, kw in FAMILIES.items():
        ours = perturbed(MiniMindLM(ModelConfig(**BASE, **kw))).to(dtype)
        with tempfile.TemporaryDirectory() as d:
            export_hf(ours, d)
            theirs = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=dtype).eval()
            with torch.no_grad():
                diff = (ours(x).logits.float() - theirs(x).logits.float()).abs().max().item()
        print(f"| {name} | {type(theirs).__name__} | {diff:.2e} |")
    # The other direction: transformers builds and initialises, MiniMind loads.
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    reverse = {
        "LlamaForCausalLM": transformers.LlamaConfig(**common),
        "Qwen2ForCausalLM": transformers.Qwen2Config(**common),
        "Qwen3ForCausalLM": transformers.Qwen3Config(**common, head_dim=32),
        "Qwen3MoeForCausalLM": transformers.Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                                           moe_intermediate_size=32),
    }
    for name, cfg in reverse.items():
        theirs = perturbed(transformers.AutoModelForCausalLM.from_config(cfg)).to(dtype)
        with tempfile.TemporaryDirectory() as d:
            theirs.save_pretrained(d)
            ours = load_model(d, dtype=dtype)
            with torch.no_grad():
                diff = (ours(x[:, :64]).logits.float() - theirs(x[:, :64]).logits.float()).abs().max().item()
        print(f"| transformers -> MiniMind | {name} | {diff:.2e} |")
    total = sum(p.numel() for p in MiniMindLM(get_preset("tiny")).parameters())
    print(f"\n(tiny preset built for reference: {total / 1e6:.2f}M parameters)")


if __name__ == "__main__":
    main()
