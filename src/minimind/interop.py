"""Conversion to and from Hugging Face `transformers` folders, with exact math on both sides.

Contract:
- `export_hf(ckpt, out_dir)` writes config.json, model.safetensors, generation_config.json (and
  the checkpoint's tokenizer files) as a *native* transformers architecture, so
  `AutoModelForCausalLM.from_pretrained(out_dir)` needs no remote code (and vLLM, llama.cpp and
  friends can read it). The mapping is chosen per model so the math is identical:
    dense, no QK-norm          -> LlamaForCausalLM  (Qwen2ForCausalLM when only q/k/v have biases)
    dense, QK-norm             -> Qwen3ForCausalLM
    MoE, QK-norm, no shared    -> Qwen3MoeForCausalLM
    MoE, no QK-norm, top-k renormalised (shared experts or not) -> Ernie4_5_MoeForCausalLM
  Any other combination raises a UserError that says why no exact mapping exists.
- `hf_to_config(hf_config)` / `load_hf_model(dir)` / `import_hf(dir, out)`: the reverse, for Llama,
  Qwen2, Qwen3, Qwen3-MoE and Ernie-4.5-MoE folders, with RoPE/YaRN read from either the 4.x
  `rope_scaling`/`rope_theta` keys or the 5.x `rope_parameters` dict. transformers itself is
  not needed to import or export; it is only the reference that tests compare against.
- Both directions write a *new* folder through `minimind.fsutil.replace_dir`: a non-empty `out`
  is refused unless `force`, one of our checkpoints or run directories is never written into,
  and the result appears in one rename (a failed or killed export leaves `out` as it was).
  Tokenizer files are loaded once before they are copied, so a corrupt one is refused.
- An HF folder's weights are exactly what its `*.safetensors.index.json` names (each tensor from
  the shard the index gives; a missing shard is an error), or its single weights file when it
  has no index; stray `.safetensors` files beside them are never read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (check_fits, check_tokenizer_files, copy_tokenizer, load_model, load_weights,
                         model_state_dict, read_hf_weights, save_model, write_safetensors)
from .config import ConfigError, ModelConfig
from .devices import torch_dtype
from .errors import UserError
from .fsutil import check_output_dir, replace_dir
from .locator import HF_CONFIG, WEIGHTS_NAME, register_importer, resolve_checkpoint, tokenizer_files
from .model import MiniMindLM


# -- choosing the architecture ---------------------------------------------------------------


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers `model_type` whose math equals this config, or a UserError."""
    if not cfg.is_moe:
        if cfg.qk_norm:
            return "qwen3"
        if cfg.qkv_bias and not cfg.o_bias and cfg.head_dim * cfg.num_heads == cfg.hidden_size:
            return "qwen2"
        return "llama"
    if cfg.qk_norm and cfg.num_shared_experts == 0:
        return "qwen3_moe"
    if not cfg.qk_norm and cfg.norm_topk_prob and not (cfg.qkv_bias or cfg.o_bias):
        return "ernie4_5_moe"
    raise UserError(
        "no transformers architecture computes this MoE exactly: QK-norm with shared experts, or "
        "un-normalised top-k without QK-norm, or attention biases (supported: QK-norm without shared "
        "experts -> Qwen3-MoE; no QK-norm with renormalised top-k -> Ernie-4.5-MoE)"
    )


# transformers' own default for a config.json without max_position_embeddings (LlamaConfig uses 2048, most
# newer architectures 4096 or more): the longer one, since it only sizes RoPE tables and the KV cache bound.
HF_DEFAULT_CONTEXT = 4096

ARCH_CLASSES = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
}


def _rope_dicts(cfg: ModelConfig) -> dict[str, Any]:
    """RoPE settings in both spellings: 4.x reads rope_theta/rope_scaling, 5.x rope_parameters."""
    out: dict[str, Any] = {"rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is None:
        out["rope_scaling"] = None
        out["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    else:
        scaling = {k: v for k, v in cfg.rope_scaling.items() if k not in ("type", "rope_type") and v is not None}
        out["rope_scaling"] = {"rope_type": "yarn", "type": "yarn", **scaling}
        out["rope_parameters"] = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, **scaling}
    return out


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json contents for the architecture chosen by `hf_architecture`."""
    arch = hf_architecture(cfg)
    out: dict[str, Any] = {
        "architectures": [ARCH_CLASSES[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
        **_rope_dicts(cfg),
    }
    if arch in ("llama", "qwen3", "qwen3_moe"):
        out["attention_bias"] = cfg.qkv_bias or cfg.o_bias  # Llama/Qwen3 put it on q, k, v and o
    if arch == "llama":
        out["mlp_bias"] = False
    if arch in ("qwen2", "qwen3", "qwen3_moe"):
        out["use_sliding_window"] = False
        out["sliding_window"] = None
    if arch == "qwen3_moe":
        out.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                   moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
                   decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=cfg.aux_loss_coef,
                   output_router_logits=False)
    if arch == "ernie4_5_moe":
        out.update(use_bias=False, moe_num_experts=cfg.num_experts, moe_k=cfg.num_experts_per_tok,
                   moe_num_shared_experts=cfg.num_shared_experts, moe_intermediate_size=cfg.moe_intermediate_size,
                   moe_layer_start_index=0, moe_layer_end_index=cfg.num_layers - 1, moe_layer_interval=1,
                   moe_norm_min=1e-12, router_aux_loss_coef=cfg.aux_loss_coef, output_router_logits=False)
    return out


def interleave_perm(head_dim: int) -> torch.Tensor:
    """Row order that turns rotate-half RoPE pairs (i, i + D/2) into adjacent pairs (2i, 2i + 1).

    Ernie applies RoPE to adjacent pairs. Permuting the rows of q_proj and k_proj the same way
    inside every head leaves every q.k dot product unchanged, so the model is exactly the same.
    """
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()


def permute_heads(w: torch.Tensor, head_dim: int, perm: torch.Tensor) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(rows // head_dim, head_dim, *w.shape[1:])[:, perm].reshape(w.shape)


# -- export ----------------------------------------------------------------------------------


def to_hf_state_dict(model: MiniMindLM) -> dict[str, torch.Tensor]:
    """Our parameter names -> transformers names for the chosen architecture."""
    cfg = model.config
    arch = hf_architecture(cfg)
    out: dict[str, torch.Tensor] = {}
    perm = interleave_perm(cfg.head_dim) if arch == "ernie4_5_moe" else None
    for name, tensor in model_state_dict(model).items():
        hf_name = name if name.startswith("lm_head.") else f"model.{name}"
        if perm is not None and re.search(r"self_attn\.[qk]_proj\.", name):
            tensor = permute_heads(tensor, cfg.head_dim, perm)
        if arch == "ernie4_5_moe" and name.endswith("mlp.gate.weight"):
            tensor = tensor.float()  # Ernie keeps its router in float32
        out[hf_name] = tensor
    if cfg.o_bias is False and arch in ("llama", "qwen3", "qwen3_moe") and cfg.qkv_bias:
        # Llama/Qwen3 attention_bias also biases o_proj: a zero bias keeps the math identical.
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(cfg.hidden_size)
    if cfg.o_bias and not cfg.qkv_bias:
        for i in range(cfg.num_layers):
            for p, n in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", cfg.num_kv_heads)):
                out[f"model.layers.{i}.self_attn.{p}_proj.bias"] = torch.zeros(n * cfg.head_dim)
    if arch == "ernie4_5_moe":
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.mlp.moe_statics.e_score_correction_bias"] = torch.zeros(1, cfg.num_experts)
    return out


def generation_config(cfg: ModelConfig) -> dict[str, Any]:
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id, "do_sample": True, "temperature": 0.85, "top_p": 0.85}


def export_hf(ckpt: str | Path | MiniMindLM, out_dir: str | Path, dtype: str | None = None,
              tokenizer_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write a transformers folder for a checkpoint (folder, run dir) or an in-memory model.

    `out_dir` must be new or empty (or, with `force`, a folder of files to replace); `dtype` is a
    --dtype name in either spelling (`devices.DTYPES`), None keeps float32."""
    stored = torch.float32 if dtype is None else torch_dtype(dtype)
    source = None if isinstance(ckpt, MiniMindLM) else resolve_checkpoint(ckpt)
    inputs = [p for p in (source, tokenizer_dir) if p is not None]
    check_output_dir(out_dir, force, sources=inputs)  # before the (slow) load
    model = ckpt if source is None else load_model(source)
    cfg = model.config
    sd = to_hf_state_dict(model)
    if dtype is not None:
        sd = {k: (v if k.endswith("mlp.gate.weight") else v.to(stored)) for k, v in sd.items()}
    config = hf_config(cfg)
    config["torch_dtype"] = str(stored).removeprefix("torch.")  # transformers' spelling: "bfloat16"
    sd = {k: v.contiguous() for k, v in sd.items()}
    tok_src = tokenizer_dir or source
    has_tok = tok_src is not None and bool(tokenizer_files(tok_src))
    if has_tok:
        check_tokenizer_files(tok_src)
    with replace_dir(out_dir, force, sources=inputs) as tmp:
        write_safetensors(sd, tmp / WEIGHTS_NAME)
        for name, data in ((HF_CONFIG, config), ("generation_config.json", generation_config(cfg))):
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        if has_tok:
            copy_tokenizer(tok_src, tmp)
    return Path(out_dir)


# -- import ----------------------------------------------------------------------------------


# Our field -> the config.json key it is read from, so an error names the key the user can see.
HF_KEYS = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
           "num_kv_heads": "num_key_value_heads", "max_seq_len": "max_position_embeddings",
           "aux_loss_coef": "router_aux_loss_coef"}


def _need(hf: dict[str, Any], key: str, source: str) -> Any:
    if hf.get(key) is None:
        raise ConfigError(f"{source}: required key {key!r} is missing")
    return hf[key]


def _rope_from_hf(hf: dict[str, Any], source: str) -> tuple[Any, dict[str, Any] | None]:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: rope_scaling / rope_parameters must be an object, got {params!r:.40}")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))  # its type is checked by ModelConfig
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind != "yarn":
        raise ConfigError(f"{source}: RoPE type {kind!r} is not supported (only default and yarn)")
    scaling = {k: params[k] for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                                      "attention_factor", "truncate") if params.get(k) is not None}
    scaling.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings")
                       or hf.get("max_position_embeddings", HF_DEFAULT_CONTEXT))
    for k in ("mscale", "mscale_all_dim"):
        if params.get(k):
            raise ConfigError(f"{source}: YaRN with {k} (DeepSeek style) is not supported")
    return theta, {"type": "yarn", **scaling}


def hf_to_config(hf: dict[str, Any], source: str = HF_CONFIG) -> ModelConfig:
    """A transformers config.json dict -> ModelConfig, or a ConfigError naming the file and the key."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{source}: a model config must be a JSON object, got {type(hf).__name__}")
    arch = hf.get("model_type")
    if arch not in ARCH_CLASSES:
        hint = " (an upstream MiniMind folder: use `minimind import minimind`)" if arch == "minimind" else ""
        raise ConfigError(f"{source}: model_type {arch!r} is not supported{hint}; "
                          f"supported: {', '.join(ARCH_CLASSES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu / SwiGLU)")
    if hf.get("mlp_bias") or (arch == "ernie4_5_moe" and hf.get("use_bias")):
        raise ConfigError(f"{source}: MLP biases are not supported")
    if hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: sliding-window attention is not supported")
    theta, scaling = _rope_from_hf(hf, source)
    attention_bias = bool(hf.get("attention_bias", False))
    heads = _need(hf, "num_attention_heads", source)
    kw: dict[str, Any] = dict(
        vocab_size=_need(hf, "vocab_size", source), hidden_size=_need(hf, "hidden_size", source),
        num_layers=_need(hf, "num_hidden_layers", source), num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim"),
        intermediate_size=hf.get("intermediate_size"), max_seq_len=hf.get("max_position_embeddings", HF_DEFAULT_CONTEXT),
        rope_theta=theta, rope_scaling=scaling, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        qk_norm=arch in ("qwen3", "qwen3_moe"), qkv_bias=arch == "qwen2" or attention_bias,
        o_bias=attention_bias, tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = hf.get(key)
        if isinstance(value, list):  # several stop ids: the first is the end of a turn
            value = value[0] if value else None
        if value is not None:
            kw[key] = value
    if arch == "qwen3_moe":
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise ConfigError(f"{source}: Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step) "
                              f"is not supported")
        # transformers 5.x calls it num_local_experts; 4.x folders say num_experts.
        num_experts = hf.get("num_experts", hf.get("num_local_experts"))
        kw.update(num_experts=num_experts, num_experts_per_tok=_need(hf, "num_experts_per_tok", source),
                  moe_intermediate_size=_need(hf, "moe_intermediate_size", source),
                  norm_topk_prob=hf.get("norm_topk_prob", False), aux_loss_coef=hf.get("router_aux_loss_coef", 0.001))
    if arch == "ernie4_5_moe":
        last = kw["num_layers"] - 1 if isinstance(kw["num_layers"], int) else -1
        if hf.get("moe_layer_start_index", 1) != 0 or hf.get("moe_layer_interval", 1) != 1 or \
                hf.get("moe_layer_end_index", -1) not in (-1, last):
            raise ConfigError(f"{source}: Ernie-4.5-MoE with dense layers is not supported")
        kw.update(num_experts=_need(hf, "moe_num_experts", source), num_experts_per_tok=_need(hf, "moe_k", source),
                  num_shared_experts=hf.get("moe_num_shared_experts", 0),
                  moe_intermediate_size=_need(hf, "moe_intermediate_size", source), norm_topk_prob=True,
                  aux_loss_coef=hf.get("router_aux_loss_coef", 0.001))
    try:
        return ModelConfig(**kw)
    except ConfigError as err:
        key = HF_KEYS.get(err.field or "", err.field)
        where = f" (read from {key!r})" if key and key != err.field else ""
        raise ConfigError(f"{source}: {err}{where}", err.field) from None


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """transformers names -> ours, undoing fused experts and Ernie's interleaved RoPE rows."""
    out: dict[str, torch.Tensor] = {}
    perm = interleave_perm(cfg.head_dim) if arch == "ernie4_5_moe" else None
    inverse = torch.argsort(perm) if perm is not None else None
    for name, tensor in sd.items():
        name = re.sub(r"^model\.", "", name)
        if name.endswith(("moe_statics.e_score_correction_bias", "rotary_emb.inv_freq")):
            if name.endswith("e_score_correction_bias") and tensor.abs().max() > 0:
                raise UserError("Ernie expert-score correction biases are not supported")
            continue
        if name.endswith("mlp.experts.gate_up_proj"):  # transformers 5.x fused layout [E, 2I, h]
            prefix = name[: -len("gate_up_proj")]
            for e, w in enumerate(tensor):
                out[f"{prefix}{e}.gate_proj.weight"], out[f"{prefix}{e}.up_proj.weight"] = w.chunk(2, dim=0)
            continue
        if name.endswith("mlp.experts.down_proj"):  # [E, h, I]
            prefix = name[: -len("down_proj")]
            for e, w in enumerate(tensor):
                out[f"{prefix}{e}.down_proj.weight"] = w
            continue
        if inverse is not None and re.search(r"self_attn\.[qk]_proj\.", name):
            tensor = permute_heads(tensor, cfg.head_dim, inverse)
        out[name] = tensor
    if not cfg.tie_word_embeddings and "lm_head.weight" not in out:
        raise UserError("lm_head.weight is missing and the config does not tie embeddings")
    return out


def load_hf_model(folder: str | Path) -> MiniMindLM:
    """Build a MiniMindLM from a transformers folder (config.json + its safetensors weights)."""
    folder = Path(folder)
    path = folder / HF_CONFIG
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise ConfigError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    cfg = hf_to_config(hf, source=str(path))
    sd = from_hf_state_dict(read_hf_weights(folder), cfg, hf["model_type"])
    check_fits(cfg, sd, source=str(folder))
    model = MiniMindLM(cfg)
    load_weights(model, sd, source=str(folder))
    return model.eval()


def import_hf(folder: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Convert a transformers folder into a MiniMind checkpoint folder (tokenizer included).

    `out_dir` must be new or empty (or, with `force`, a folder of files to replace)."""
    check_output_dir(out_dir, force, sources=[folder])  # before the (slow) load
    model = load_hf_model(folder)
    tok = folder if tokenizer_files(folder) else None
    if tok is not None:
        check_tokenizer_files(tok)
    with replace_dir(out_dir, force, sources=[folder]) as tmp:
        save_model(model, tmp, tokenizer_dir=tok)
    return Path(out_dir)


# `minimind.load_model` reads every Hugging Face folder through this module (upstream MiniMind's
# model_type "minimind" excepted, which `minimind.upstream` registers for itself).
register_importer(load_hf_model)
