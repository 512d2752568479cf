"""Export a checkpoint as one GGUF file, the format llama.cpp, Ollama and LM Studio run.

Contract:
- `export_gguf(ckpt, out, dtype)` writes `out` (one file, renamed into place when complete, so a
  failed export leaves nothing half-written) with the weights in f32, f16, bf16 or q8_0 and the
  tokenizer and chat template inside; `write_modelfile` writes an Ollama Modelfile beside it.
- The llama.cpp architecture is the one whose math equals ours, the same choice as the
  transformers export (`minimind.interop.hf_architecture`):
    dense                      -> llama   (q/k rows permuted: llama.cpp's llama rotates adjacent pairs)
    dense, q/k/v biases        -> qwen2
    dense, QK-norm             -> qwen3
    MoE, QK-norm, no shared    -> qwen3moe
    MoE, no QK-norm            -> ernie4_5-moe (shared experts or not; q/k rows permuted likewise)
  Anything llama.cpp cannot compute exactly is a UserError that says why, raised before `out` is
  touched (e.g. un-normalised top-k routing: llama.cpp's qwen3moe/ernie4_5-moe always renormalise).
  YaRN goes in as llama.cpp's rope.scaling keys, with the attention factor rescaled (`_write_yarn`).
- The tokenizer goes in as llama.cpp's byte-level BPE ("gpt2") with the pre-tokenizer whose split
  regex is ours (`PRE_TOKENIZERS`: llama.cpp's "qwen2" regex is `tokenizer.SPLIT_PATTERN`, written
  case-insensitively by hand; upstream MiniMind's lone ByteLevel split is llama.cpp's "gpt-2");
  a tokenizer with any other split is refused rather than exported
  to tokenize differently. Added special tokens are CONTROL, the other added ones USER_DEFINED.
- Only 2-D weights are converted to `dtype`; norms, biases and the MoE router stay f32 (as
  llama.cpp's own converter does); a q8_0 row length not divisible by 32 falls back to f16.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write, load_model, model_state_dict
from .config import ModelConfig
from .errors import UserError
from .interop import hf_architecture, interleave_perm, permute_heads
from .locator import TOKENIZER_JSON, has_tokenizer, resolve_checkpoint
from .model import MiniMindLM
from .tokenizer import SPLIT_PATTERN, default_tokenizer_dir

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3moe",
             "ernie4_5_moe": "ernie4_5-moe"}
# llama.cpp rotates adjacent pairs (ROPE_TYPE_NORM) for these: our rotate-half q/k rows are reordered.
INTERLEAVED_ROPE = ("llama", "ernie4_5-moe")
# GGUF storage types of `export gguf --dtype` (llama.cpp's names; q8_0 is a quantisation, not a torch dtype).
FILE_TYPES = ("f32", "f16", "bf16", "q8_0")
# Split regex of a tokenizer.json -> llama.cpp's `tokenizer.ggml.pre` name with the same regex
# (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2). Proven id for id by tests/test_gguf.py.
# A lone ByteLevel(use_regex=true) splits with GPT-2's regex, llama.cpp's "gpt-2" (its regex verbatim).
GPT2_SPLIT = "<ByteLevel use_regex>"
PRE_TOKENIZERS = {SPLIT_PATTERN: "qwen2", GPT2_SPLIT: "gpt-2"}
# Ours -> llama.cpp's tensor names (gguf-py's TENSOR_NAMES), per layer after "layers.{i}.".
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.gate": "ffn_gate_inp", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj": "ffn_up_shexp", "mlp.shared_experts.down_proj": "ffn_down_shexp",
}
TOP_NAMES = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_architecture(cfg: ModelConfig) -> str:
    """llama.cpp's architecture name for this config, or a UserError saying why there is none."""
    why = None
    if cfg.is_moe and not cfg.norm_topk_prob:
        why = "its qwen3moe and ernie4_5-moe always renormalise the top-k router weights (norm_topk_prob is false)"
    elif cfg.is_moe and cfg.qk_norm and cfg.num_shared_experts:
        why = "QK-norm with shared experts: its qwen3moe has no shared experts, its ernie4_5-moe no QK-norm"
    elif cfg.is_moe and (cfg.qkv_bias or cfg.o_bias):
        why = "its MoE architectures (qwen3moe, ernie4_5-moe) have no attention biases"
    elif cfg.rope_scaling is not None and (
            cfg.rope_scaling.get("beta_fast") not in (None, 32) or cfg.rope_scaling.get("beta_slow") not in (None, 1)
            or cfg.rope_scaling.get("truncate") is False):
        why = ("its YaRN always uses beta_fast 32, beta_slow 1 and whole-pair ramp ends (GGUF has no key for "
               "them), and this model's rope_scaling differs")
    if why is not None:
        raise UserError(f"llama.cpp cannot run this model exactly: {why}")
    hf = hf_architecture(cfg)
    return GGUF_ARCH[hf]


# -- weights ---------------------------------------------------------------------------------


def gguf_tensors(model: MiniMindLM) -> dict[str, torch.Tensor]:
    """Our state dict -> llama.cpp names; experts stacked to [E, out, in]; q/k rows reordered if needed."""
    cfg = model.config
    arch = gguf_architecture(cfg)
    perm = interleave_perm(cfg.head_dim) if arch in INTERLEAVED_ROPE else None
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in model_state_dict(model).items():
        tensor = tensor.float()
        if name in TOP_NAMES:
            out[TOP_NAMES[name]] = tensor
            continue
        _, layer, rest = name.split(".", 2)  # "layers", "3", "self_attn.q_proj.weight"
        module, kind = rest.rsplit(".", 1)
        if perm is not None and module in ("self_attn.q_proj", "self_attn.k_proj"):
            tensor = permute_heads(tensor, cfg.head_dim, perm)
        if module.startswith("mlp.experts."):  # mlp.experts.{e}.gate_proj -> ffn_gate_exps
            _, _, expert, proj = module.split(".")
            experts.setdefault(f"blk.{layer}.ffn_{proj.split('_')[0]}_exps.{kind}", {})[int(expert)] = tensor
            continue
        out[f"blk.{layer}.{LAYER_NAMES[module]}.{kind}"] = tensor
    for name, parts in experts.items():
        out[name] = torch.stack([parts[e] for e in range(cfg.num_experts)])
    return out


def _convert(name: str, tensor: torch.Tensor, dtype: str):
    """(numpy data, its GGML type) for one tensor in the requested dtype."""
    import gguf

    data = tensor.numpy().astype(np.float32)
    keep_f32 = data.ndim == 1 or name.endswith("ffn_gate_inp.weight")
    if dtype == "f32" or keep_f32:
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, qtype), qtype
    if dtype == "bf16":
        qtype = gguf.GGMLQuantizationType.BF16
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


# -- tokenizer -------------------------------------------------------------------------------


def _split_regex(pre: dict | None, path: Path) -> str:
    """The split a byte-level pre-tokenizer makes: its one Split regex, or GPT2_SPLIT for a lone
    ByteLevel(use_regex=true) (upstream MiniMind's tokenizer); anything else is a UserError."""
    parts = (pre or {}).get("pretokenizers", [pre] if pre else [])
    regexes = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if len(parts) == 1 and byte_level and byte_level[0].get("use_regex", True) \
            and not byte_level[0].get("add_prefix_space", False):
        return GPT2_SPLIT
    if len(regexes) != 1 or regexes[0] is None or len(byte_level) != 1 or byte_level[0].get("use_regex", True):
        raise UserError(f"{path}: llama.cpp's byte-level BPE needs one Split regex then ByteLevel "
                        f"(use_regex false), or ByteLevel alone; this tokenizer's pre-tokenizer is different")
    return regexes[0]


def tokenizer_fields(folder: Path, vocab_size: int) -> dict:
    """Everything the GGUF tokenizer keys need, read from a tokenizer folder."""
    import gguf

    path = folder / TOKENIZER_JSON
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE" or data.get("normalizer") is not None:
        raise UserError(f"{path}: llama.cpp export needs a byte-level BPE tokenizer without a normalizer")
    regex = _split_regex(data.get("pre_tokenizer"), path)
    if regex not in PRE_TOKENIZERS:
        raise UserError(f"{path}: no llama.cpp pre-tokenizer splits text like this tokenizer's regex "
                        f"{regex[:40]!r}..., so llama.cpp would tokenize differently")
    by_id = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id.update({i: t["content"] for i, t in added.items()})
    if max(by_id) >= vocab_size:
        raise UserError(f"{path}: the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} rows")
    tokens, types = [], []
    for i in range(vocab_size):  # rows the tokenizer never produces get placeholder names
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template = config.get("chat_template") or ""
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return dict(tokens=tokens, types=types, merges=merges, pre=PRE_TOKENIZERS[regex], chat_template=template)


# -- writing ---------------------------------------------------------------------------------


def _write_hparams(w, cfg: ModelConfig, arch: str, dtype: str, name: str) -> None:
    import gguf

    w.add_type("model")
    w.add_name(name)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if cfg.rope_scaling is not None:
        _write_yarn(w, cfg.rope_scaling)
    if cfg.is_moe:
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if arch == "ernie4_5-moe":
        w.add_interleave_moe_layer_step(1)
        w.add_leading_dense_block_count(0)
        w.add_expert_shared_count(cfg.num_shared_experts)
        # One shared SwiGLU of width n_shared * I holds all shared experts (model/moe.py).
        w.add_expert_shared_feed_forward_length(cfg.num_shared_experts * cfg.moe_intermediate_size)


def _write_yarn(w, scaling: dict) -> None:
    """YaRN keys. llama.cpp scales cos/sin by attn_factor * (0.1 ln s + 1) (src/llama-context.cpp and
    ggml's rope_yarn), so an explicit attention factor A is stored as A / (0.1 ln s + 1)."""
    import gguf

    factor = float(scaling["factor"])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(factor)
    w.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
    if scaling.get("attention_factor") is not None:
        implied = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        w.add_rope_scaling_attn_factors(scaling["attention_factor"] / implied)


def _write_tokenizer(w, cfg: ModelConfig, tok: dict) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_add_bos_token(False)  # our prompts carry their own <|im_start|>; nothing is prepended
    w.add_add_eos_token(False)
    if tok["chat_template"]:
        w.add_chat_template(tok["chat_template"])


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out names the .gguf file to write")
    if out.exists() and not force:
        raise UserError(f"{out} exists; choose a new file name or pass --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such folder for the output file")


def export_gguf(ckpt: str | Path | MiniMindLM, out: str | Path, dtype: str = "f32",
                tokenizer_dir: str | Path | None = None, force: bool = False) -> Path:
    """Write `out` as a GGUF file for llama.cpp; see the module contract."""
    import gguf

    out = Path(out)
    if dtype not in FILE_TYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(FILE_TYPES)}")
    _check_out(out, force)
    source = None if isinstance(ckpt, MiniMindLM) else resolve_checkpoint(ckpt)
    model = ckpt if source is None else load_model(source)
    cfg = model.config
    try:
        arch = gguf_architecture(cfg)  # refuses before anything is converted or written
    except UserError as err:
        raise UserError(f"{source or 'this model'}: {err}") from None
    if tokenizer_dir is None:
        tokenizer_dir = source if source is not None and has_tokenizer(source) else default_tokenizer_dir()
    tok = tokenizer_fields(Path(tokenizer_dir), cfg.vocab_size)
    tensors = {k: _convert(k, v, dtype) for k, v in gguf_tensors(model).items()}
    name = source.name if source is not None else out.stem

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), arch)
        _write_hparams(w, cfg, arch, dtype, name)
        _write_tokenizer(w, cfg, tok)
        for key, (data, qtype) in tensors.items():
            w.add_tensor(key, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(out, write)
    return out


def modelfile_text(gguf_name: str) -> str:
    """An Ollama Modelfile for a GGUF file in the same folder: our ChatML template in Go syntax.

    Past assistant turns get the empty think block our template gives them; the prompt ends with
    an open `<think>` as our generation prompt does with thinking on."""
    template = (
        '{{- range .Messages }}{{- if eq .Role "assistant" }}<|im_start|>assistant\n<think>\n\n</think>\n\n'
        '{{ .Content }}<|im_end|>\n{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        '{{ end }}{{- end }}<|im_start|>assistant\n<think>\n'
    )
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{template}"""\n'
            'PARAMETER stop "<|im_end|>"\n'
            'PARAMETER stop "<|endoftext|>"\n'
            "PARAMETER temperature 0.85\n"
            "PARAMETER top_p 0.85\n")


def write_modelfile(gguf_path: str | Path) -> Path:
    """Write `<name>.Modelfile` beside the GGUF file (`ollama create NAME -f <it>`)."""
    gguf_path = Path(gguf_path)
    path = gguf_path.with_name(gguf_path.stem + ".Modelfile")
    atomic_write(path, lambda tmp: tmp.write_text(modelfile_text(gguf_path.name), encoding="utf-8"))
    return path
