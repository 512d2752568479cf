"""Import checkpoints of upstream MiniMind (jingyaogong/minimind): `.pth` state dicts and its folders.

Contract:
- `load_upstream_model(path, **flags)` builds a `MiniMindLM` computing exactly upstream's function
  from either a `.pth` file saved by upstream's training scripts (`torch.save(model.state_dict())`,
  read with `torch.load(weights_only=True)`: never a full unpickle) or an upstream Transformers
  folder (`config.json` with `"model_type": "minimind"`, weights in model.safetensors or
  pytorch_model.bin). `import_upstream(path, out, ...)` writes it as one of our checkpoints
  through `fsutil.replace_dir` (nothing half-written at `out`), the tokenizer folder copied in.
- The shape comes from the tensors: vocabulary, widths, layers, experts, QK-norm, head size
  (from the QK-norm weight) and tied or untied head. What tensors cannot tell is read from
  config.json or given as a flag (`UpstreamFlags`), and a missing one is a UserError naming the
  flag (`--num-heads` for a model without QK-norm, `--experts-per-tok` for an MoE `.pth`); an
  upstream config.json can also be given for a `.pth` (`--config`).
- Upstream's names are ours with a `model.` prefix, except shared experts: upstream keeps a list
  (`mlp.shared_experts.{s}.*`), we keep one SwiGLU of width n_shared * I (rows stacked).
- Where upstream departs from the Llama/Qwen convention (docs/interop.md):
  * minimind2-era MoE (no QK-norm) renormalises the top-k weights only when k > 1; minimind-3
    (QK-norm) renormalises for any k (top-1 weight 1.0). Mapped to our `norm_topk_prob`.
  * YaRN (`inference_rope_scaling`) uses attention factor 1.0 (not 0.1 ln s + 1), clamps the ramp's
    upper end at D/2 - 1 (transformers: D - 1) and is skipped when max_position_embeddings is
    within the original context: mapped to our rope_scaling when the two give the same
    frequencies, a UserError otherwise.
- Any bad input (not a state dict, missing or unexpected tensors, shapes fitting no configuration)
  is a UserError naming the file and the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import check_fits, check_tokenizer_files, load_weights, read_safetensors, save_model
from .config import ConfigError, ModelConfig
from .errors import UserError
from .fsutil import check_output_dir, replace_dir
from .locator import (HF_CONFIG, WEIGHTS_NAME, CheckpointError, has_tokenizer, hf_config, read_json,
                      register_importer, require_tokenizer)
from .model import MiniMindLM

MODEL_TYPE = "minimind"
BUFFERS = ("freqs_cos", "freqs_sin", "rotary_emb.inv_freq")  # recomputed, never weights
# Upstream's YaRN switch (`inference_rope_scaling: true`) means exactly these settings.
UPSTREAM_YARN = {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 2048,
                 "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}


@dataclass
class UpstreamFlags:
    """What the tensors do not say; None means "from config.json, else upstream's default"."""

    num_heads: int | None = None
    experts_per_tok: int | None = None
    rms_norm_eps: float | None = None
    rope_theta: float | None = None
    max_seq_len: int | None = None
    yarn: bool | None = None
    config: Path | None = None  # an upstream config.json to read beside a .pth (flags still win)


def is_upstream_folder(path: Path) -> bool:
    """True for a Hugging Face folder whose config.json says model_type "minimind" (upstream's code)."""
    config = hf_config(path)
    return config is not None and config["model_type"] == MODEL_TYPE


# -- reading ---------------------------------------------------------------------------------


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file, loaded with weights_only=True (no code runs)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    # On corrupt input the weights-only unpickler raises about anything (a KeyError for a text file).
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a PyTorch state dict that loads safely (weights_only): "
                              f"{_load_error(err)}") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):  # upstream's *_resume.pth
        data = data["model"]
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a dict of tensor names to tensors, "
                              f"got {type(data).__name__})")
    return data


def _load_error(err: Exception) -> str:
    """One line for a torch.load failure; a refused pickle names the object it would have built."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    refused = [line for line in lines if "Unsupported global" in line or "WeightsUnpickler error" in line]
    if refused:
        return f"it holds Python objects, not only tensors ({refused[0][:120]})"
    return f"{type(err).__name__} {(lines or [''])[0][:160]}".rstrip()


def _folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS_NAME).is_file():
        return read_safetensors(folder / WEIGHTS_NAME)
    if (folder / "pytorch_model.bin").is_file():
        return read_pth(folder / "pytorch_model.bin")
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin beside config.json")


def _clean_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop torch.compile / DDP prefixes and the recomputed RoPE buffers."""
    out = {}
    for name, tensor in sd.items():
        name = re.sub(r"^(_orig_mod\.|module\.)+", "", name)
        if not name.endswith(BUFFERS):
            out[name] = tensor
    return out


# -- shape -----------------------------------------------------------------------------------


def _get(sd: dict[str, torch.Tensor], name: str, source: str) -> torch.Tensor:
    if name not in sd:
        raise CheckpointError(f"{source}: tensor {name} is missing (not an upstream MiniMind checkpoint?)")
    return sd[name]


def _yarn_scaling(head_dim: int, theta: float, max_seq_len: int, source: str) -> dict[str, Any] | None:
    """Upstream's YaRN as our rope_scaling, or None where upstream leaves the frequencies alone."""
    orig, beta_slow = UPSTREAM_YARN["original_max_position_embeddings"], UPSTREAM_YARN["beta_slow"]
    if max_seq_len <= orig:
        return None  # upstream applies YaRN only when max_position_embeddings exceeds 2048
    high = math.ceil(head_dim * math.log(orig / (beta_slow * 2 * math.pi)) / (2 * math.log(theta)))
    if high > head_dim // 2 - 1:  # upstream clamps to D/2 - 1, transformers (and we) to D - 1
        raise UserError(f"{source}: upstream's YaRN ramp is clamped at pair {head_dim // 2 - 1} for head size "
                        f"{head_dim} and rope_theta {theta:g}, which our YaRN cannot express")
    return dict(UPSTREAM_YARN)


def infer_config(sd: dict[str, torch.Tensor], flags: UpstreamFlags, source: str,
                 json_config: dict[str, Any] | None = None) -> ModelConfig:
    """The ModelConfig of an upstream state dict (names already cleaned), or a UserError naming a flag."""
    cfg = json_config or {}
    vocab, hidden = _get(sd, "model.embed_tokens.weight", source).shape
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{source}: layers are not numbered 0..n-1 (found {layers[:5]})")
    q_rows = _get(sd, "model.layers.0.self_attn.q_proj.weight", source).shape[0]
    kv_rows = _get(sd, "model.layers.0.self_attn.k_proj.weight", source).shape[0]
    qk_norm = "model.layers.0.self_attn.q_norm.weight" in sd
    heads = flags.num_heads or cfg.get("num_attention_heads")
    if qk_norm:
        head_dim = sd["model.layers.0.self_attn.q_norm.weight"].shape[0]
    elif heads is None:
        raise UserError(f"{source}: the number of attention heads is not in the tensors of a model without "
                        f"QK-norm (q_proj has {q_rows} rows); pass --num-heads (upstream minimind2 models use 8)")
    else:
        head_dim = q_rows // heads
    if head_dim == 0 or q_rows % head_dim or kv_rows % head_dim:
        raise CheckpointError(f"{source}: q_proj ({q_rows} rows) and k_proj ({kv_rows} rows) do not split into "
                              f"heads of {head_dim}; check --num-heads")
    kw: dict[str, Any] = dict(vocab_size=vocab, hidden_size=hidden, num_layers=len(layers),
                              num_heads=q_rows // head_dim, num_kv_heads=kv_rows // head_dim, head_dim=head_dim,
                              qk_norm=qk_norm)
    lm_head = sd.get("lm_head.weight")
    kw["tie_word_embeddings"] = lm_head is None or torch.equal(lm_head, sd["model.embed_tokens.weight"])
    # Defaults of upstream's two generations: minimind-3 has QK-norm and eps 1e-6, minimind2 1e-5.
    kw["rms_norm_eps"] = flags.rms_norm_eps or cfg.get("rms_norm_eps") or (1e-6 if qk_norm else 1e-5)
    kw["rope_theta"] = flags.rope_theta or cfg.get("rope_theta") or 1e6
    kw["max_seq_len"] = flags.max_seq_len or cfg.get("max_position_embeddings") or 32768
    yarn = flags.yarn if flags.yarn is not None else bool(cfg.get("inference_rope_scaling") or cfg.get("rope_scaling"))
    if yarn:
        kw["rope_scaling"] = _yarn_scaling(head_dim, kw["rope_theta"], kw["max_seq_len"], source)
    kw.update(_mlp_shape(sd, flags, cfg, qk_norm, source))
    try:
        return ModelConfig(**kw)
    except ConfigError as err:
        raise CheckpointError(f"{source}: the tensors fit no valid configuration: {err}") from None


def _mlp_shape(sd, flags: UpstreamFlags, cfg: dict[str, Any], qk_norm: bool, source: str) -> dict[str, Any]:
    prefix = "model.layers.0.mlp."
    if f"{prefix}gate.weight" not in sd:
        return {"intermediate_size": _get(sd, f"{prefix}gate_proj.weight", source).shape[0]}
    experts = sd[f"{prefix}gate.weight"].shape[0]
    inner = _get(sd, f"{prefix}experts.0.gate_proj.weight", source).shape[0]
    shared = len({k.split(".")[5] for k in sd if k.startswith(f"{prefix}shared_experts.")})
    k = flags.experts_per_tok or cfg.get("num_experts_per_tok")
    if k is None:
        raise UserError(f"{source}: how many experts each token uses is not in the tensors; pass "
                        f"--experts-per-tok (upstream: 1 for minimind-3 MoE, 2 for minimind2-moe)")
    norm = bool(cfg.get("norm_topk_prob", True))
    if not qk_norm and k == 1:
        norm = False  # minimind2 renormalises only when k > 1: a single expert keeps its probability
    aux = cfg.get("router_aux_loss_coef", cfg.get("aux_loss_alpha", 5e-4 if qk_norm else 0.01))
    return dict(num_experts=experts, num_experts_per_tok=k, num_shared_experts=shared, moe_intermediate_size=inner,
                intermediate_size=cfg.get("intermediate_size") or inner, norm_topk_prob=norm, aux_loss_coef=aux)


# -- mapping ---------------------------------------------------------------------------------


def to_our_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """Upstream names -> ours; shared experts merged into one wide SwiGLU; unknown names refused."""
    out: dict[str, torch.Tensor] = {}
    shared: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in sd.items():
        if name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out[name] = tensor
            continue
        if not name.startswith("model."):
            raise CheckpointError(f"{source}: unexpected tensor {name} (not in upstream MiniMind's layout)")
        name = name[len("model."):]
        m = re.match(r"(layers\.\d+\.mlp\.shared_experts)\.(\d+)\.(\w+_proj\.weight)$", name)
        if m:
            shared.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = tensor
            continue
        out[name] = tensor
    for name, parts in shared.items():
        if sorted(parts) != list(range(cfg.num_shared_experts)):
            raise CheckpointError(f"{source}: shared experts of {name} are numbered {sorted(parts)}")
        stacked = [parts[i] for i in range(len(parts))]
        out[name] = torch.cat(stacked, dim=1 if name.endswith("down_proj.weight") else 0)
    expected = set(expected_keys(cfg))
    extra = sorted(set(out) - expected)
    missing = sorted(expected - set(out))
    if extra or missing:
        what = f"unexpected tensor model.{extra[0]}" if extra else f"tensor model.{missing[0]} is missing"
        raise CheckpointError(f"{source}: {what} ({len(extra)} unexpected, {len(missing)} missing in all)")
    return {k: v.float() for k, v in out.items()}


def expected_keys(cfg: ModelConfig) -> list[str]:
    """Our parameter names for a config, without building the model (meta device: no memory)."""
    with torch.device("meta"):
        model = MiniMindLM(cfg)
    keys = list(model.state_dict())
    return [k for k in keys if not (cfg.tie_word_embeddings and k == "lm_head.weight")]


# -- public entry points ---------------------------------------------------------------------


def load_upstream_model(path: str | Path, flags: UpstreamFlags | None = None) -> MiniMindLM:
    """An upstream `.pth` file or Transformers folder as a MiniMindLM (float32, eval mode)."""
    path, flags = Path(path), flags or UpstreamFlags()
    json_config = read_json(Path(flags.config), "an upstream config.json") if flags.config is not None else None
    if path.is_dir():
        if not is_upstream_folder(path):
            raise CheckpointError(f"{path}: not an upstream MiniMind folder (config.json with model_type "
                                  f"\"minimind\")")
        json_config = json_config or read_json(path / HF_CONFIG, "an upstream config.json")
        sd = _folder_weights(path)
    else:
        sd = read_pth(path)
    sd = _clean_names(sd)
    cfg = infer_config(sd, flags, str(path), json_config)
    ours = to_our_state_dict(sd, cfg, str(path))
    check_fits(cfg, ours, source=str(path))
    model = MiniMindLM(cfg)
    load_weights(model, ours, source=str(path))
    return model.eval()


def import_upstream(path: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
                    flags: UpstreamFlags | None = None, force: bool = False) -> Path:
    """Convert an upstream checkpoint into one of our checkpoint folders (tokenizer copied in)."""
    path = Path(path)
    sources = [p for p in (path, tokenizer_dir) if p is not None]
    check_output_dir(out_dir, force, sources=sources)  # before the (slow) load
    if tokenizer_dir is None and path.is_dir() and has_tokenizer(path):
        tokenizer_dir = path  # upstream folders carry their tokenizer
    if tokenizer_dir is not None:
        check_tokenizer_files(require_tokenizer(tokenizer_dir, "--tokenizer names a tokenizer folder"))
    model = load_upstream_model(path, flags)
    with replace_dir(out_dir, force, sources=sources) as tmp:
        save_model(model, tmp, tokenizer_dir=tokenizer_dir)
    return Path(out_dir)


# `minimind.load_model` reads upstream Transformers folders (model_type "minimind") through this module.
register_importer(load_upstream_model, [MODEL_TYPE])
