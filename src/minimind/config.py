"""Model configuration: one dataclass, its presets, and the arithmetic derived from it.

Contract:
- `ModelConfig` is the single source of truth for a model's shape. It round-trips through JSON
  (`to_dict` / `from_dict`), and every checkpoint stores it, so a model can always be rebuilt.
- `PRESETS` maps a preset name to a function returning a fresh `ModelConfig`.
- `count_params` and `flops_per_token` compute sizes from the config alone (no model is built),
  so `minimind model list` is instant even for the 0.6B preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

# The label that carries no loss (prompt tokens, padding, tool outputs, a packed document's first token).
# -100 is PyTorch's cross_entropy default ignore_index and what transformers' collators write, so our
# batches and theirs mean the same thing. Owned here because both the data (writes it) and the model
# (skips it) need it, and config is the one module below both.
IGNORE_INDEX = -100


class ConfigError(UserError):
    """A configuration value is invalid; the message says which one and why.

    `field` names the offending ModelConfig field (None for file-level problems), so a caller that
    read the values under other names (a Hugging Face config.json) can name its own key."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def swiglu_width(hidden_size: int, multiple_of: int = 64) -> int:
    """SwiGLU hidden width: 8/3 * h rounded *up* to a multiple of 64.

    A SwiGLU MLP has three matrices instead of two, so 2/3 of the classic 4*h width keeps
    the parameter count equal to a GELU MLP: 3 * h * (8h/3) == 2 * h * 4h.
    """
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


# Inclusive range of every numeric ModelConfig field, declared once (the type comes from the
# field's annotation). Bounds are generous -- every published model fits -- but stop absurd values
# (a vocabulary of 1e11, a 0-token context) before they allocate memory or train on nothing.
LIMITS: dict[str, tuple[float, float]] = {
    "vocab_size": (2, 1 << 24),
    "hidden_size": (1, 1 << 16),
    "num_layers": (1, 1024),
    "num_heads": (1, 1024),
    "num_kv_heads": (1, 1024),
    "head_dim": (2, 4096),
    "intermediate_size": (1, 1 << 20),
    "max_seq_len": (2, 1 << 22),  # a 1-token context leaves nothing to predict
    "rope_theta": (1.0, 1e12),
    "rms_norm_eps": (1e-12, 1.0),
    "dropout": (0.0, 0.99),
    "initializer_range": (0.0, 10.0),
    "num_experts": (0, 1024),
    "num_experts_per_tok": (1, 1024),
    "num_shared_experts": (0, 1024),
    "moe_intermediate_size": (1, 1 << 20),
    "aux_loss_coef": (0.0, 100.0),
    "pad_token_id": (0, (1 << 24) - 1),  # and below vocab_size, checked with the other relations
    "bos_token_id": (0, (1 << 24) - 1),
    "eos_token_id": (0, (1 << 24) - 1),
}
# Keys of `rope_scaling` (transformers' names) and the type each must have.
YARN_KEYS = {"type": str, "rope_type": str, "factor": float, "original_max_position_embeddings": int,
             "beta_fast": float, "beta_slow": float, "attention_factor": float, "truncate": bool}
_KIND_WORDS = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
               "dict": "an object"}


def _type_ok(kind: str, value: Any) -> bool:
    """Is `value` of the JSON-level kind int/float/bool/str/dict? bool is not a number, 4.0 not an int."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"bool": bool, "str": str, "dict": dict}[kind])


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class ModelConfig:
    """Shape and hyper-parameters of a MiniMind decoder-only transformer.

    One name per length concept, everywhere in the code base:
    - `max_seq_len`: the model's context, the longest sequence its RoPE tables (and a KV cache) cover.
      An inference engine may serve a shorter one (`Engine(max_seq_len=...)`), never a longer one.
      Hugging Face calls it `max_position_embeddings` (translated only in `interop.py`).
    - `seq_len`: the training window, tokens per training sequence (`--seq-len`); it must fit in
      `max_seq_len` (checked once, in `train/build.py`). Upstream MiniMind's `--max_seq_len` is this.
    - `max_new_tokens`: how many tokens one generation may add after its prompt.
    Shape flags over a preset (`--hidden-size`, ...) live in `shapes.py`.
    """

    vocab_size: int = 6400
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int | None = None  # None -> hidden_size // num_heads
    intermediate_size: int | None = None  # None -> swiglu_width(hidden_size)
    max_seq_len: int = 32768  # longest sequence the RoPE tables (and KV caches) cover by default
    rope_theta: float = 1e6
    # YaRN context extension, same keys and meaning as transformers' rope_scaling:
    # {"type": "yarn", "factor": 16, "original_max_position_embeddings": 2048,
    #  "beta_fast": 32, "beta_slow": 1, "attention_factor": None}
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm on each head's q and k before RoPE (Qwen3)
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2)
    o_bias: bool = False  # bias on the output projection (some Llama variants)
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    initializer_range: float = 0.02
    # Mixture of experts: num_experts == 0 means a dense SwiGLU MLP in every layer.
    num_experts: int = 0
    num_experts_per_tok: int = 2
    num_shared_experts: int = 0
    moe_intermediate_size: int | None = None  # None -> intermediate_size
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1
    aux_loss_coef: float = 0.01
    aux_loss_level: str = "seq"  # "seq": balance within each sequence, "batch": over the batch
    # Special token ids (match the shipped ChatML tokenizer).
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the preset name)

    def __post_init__(self) -> None:
        # Types and ranges first: the derived sizes below divide by num_heads.
        self._check_values()
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                                  f"({self.num_heads}), or head_dim must be given", "hidden_size")
            self.head_dim = self.hidden_size // self.num_heads
        if self.intermediate_size is None:
            self.intermediate_size = swiglu_width(self.hidden_size)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field of a wrong type, out of range or inconsistent."""
        self._check_values()
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})", "num_heads"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}", "head_dim")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ConfigError(f"{name} ({getattr(self, name)}) is outside the vocabulary "
                                  f"(vocab_size {self.vocab_size})", name)
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            raise ConfigError(f"num_experts_per_tok must be in 1..{self.num_experts}, "
                              f"got {self.num_experts_per_tok}", "num_experts_per_tok")
        if self.aux_loss_level not in ("seq", "batch"):
            raise ConfigError(f"aux_loss_level must be 'seq' or 'batch', got {self.aux_loss_level!r}",
                              "aux_loss_level")
        if self.rope_scaling is not None:
            self._check_rope_scaling(self.rope_scaling)

    def _check_values(self) -> None:
        """Every field against its annotated type and its LIMITS range; ints become floats where declared."""
        for f in dataclasses.fields(self):
            value, annotation = getattr(self, f.name), str(f.type)
            kind = annotation.split("[")[0].split(" |")[0]
            if value is None and annotation.endswith("| None"):
                continue
            if not _type_ok(kind, value):
                none = " or null" if annotation.endswith("| None") else ""
                raise ConfigError(f"{f.name} must be {_KIND_WORDS[kind]}{none}, got {_shown(value)}", f.name)
            if kind == "float":
                setattr(self, f.name, float(value))  # JSON 10000 means 10000.0
            lo, hi = LIMITS.get(f.name, (None, None))
            if lo is not None and not lo <= value <= hi:
                raise ConfigError(f"{f.name} must be in {_num(lo)}..{_num(hi)}, got {_shown(value)}", f.name)

    @staticmethod
    def _check_rope_scaling(scaling: dict[str, Any]) -> None:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind != "yarn":
            raise ConfigError(f"only YaRN rope_scaling is supported, got type {kind!r}", "rope_scaling")
        for key, value in scaling.items():
            if key not in YARN_KEYS:
                raise ConfigError(f"rope_scaling has an unknown key {key!r} (known: {', '.join(YARN_KEYS)})",
                                  "rope_scaling")
            if value is not None and not _type_ok(YARN_KEYS[key].__name__, value):
                raise ConfigError(f"rope_scaling.{key} must be {_KIND_WORDS[YARN_KEYS[key].__name__]}, "
                                  f"got {_shown(value)}", "rope_scaling")
        if not isinstance(scaling.get("factor"), (int, float)) or scaling["factor"] <= 0:
            raise ConfigError("rope_scaling.factor must be a positive number", "rope_scaling")
        if not isinstance(scaling.get("original_max_position_embeddings"), int) or \
                scaling["original_max_position_embeddings"] <= 0:
            raise ConfigError("rope_scaling.original_max_position_embeddings must be a positive integer",
                              "rope_scaling")

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> "ModelConfig":
        """Build and validate a config; errors start with `source` (the file it came from)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model config keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}", err.field) from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
        return cls.from_dict(data, source=str(path))

    # -- derived quantities --------------------------------------------------------------------

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def kv_groups(self) -> int:
        """How many query heads share one key/value head (GQA)."""
        return self.num_heads // self.num_kv_heads


# -- presets -----------------------------------------------------------------------------------


def _tiny() -> ModelConfig:
    # ~2.9M parameters: fast enough to pretrain + SFT on a 2-core laptop CPU in minutes.
    return ModelConfig(hidden_size=192, num_layers=4, num_heads=4, num_kv_heads=2, max_seq_len=2048)


def _small() -> ModelConfig:
    return ModelConfig(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2)


def _base() -> ModelConfig:
    return ModelConfig(hidden_size=768, num_layers=16, num_heads=8, num_kv_heads=2)


def _moe() -> ModelConfig:
    return ModelConfig(
        hidden_size=640, num_layers=8, num_heads=8, num_kv_heads=2,
        num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
    )


def _minimind3() -> ModelConfig:
    return ModelConfig(
        hidden_size=768, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=2432,
        qk_norm=True, rms_norm_eps=1e-6,
    )


def _qwen3_06b() -> ModelConfig:
    return ModelConfig(
        vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
        head_dim=128, intermediate_size=3072, qk_norm=True, rms_norm_eps=1e-6, max_seq_len=40960,
        pad_token_id=151643, bos_token_id=151643, eos_token_id=151645,
    )


PRESETS = {
    "tiny": _tiny,
    "small": _small,
    "base": _base,
    "moe": _moe,
    "minimind3": _minimind3,
    "qwen3-0.6b": _qwen3_06b,
}


def get_preset(name: str) -> ModelConfig:
    """Return a fresh config for a preset name, or raise ConfigError listing the valid names."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    cfg.extra["preset"] = name
    return cfg


# -- sizes and FLOPs ---------------------------------------------------------------------------


def _layer_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """Return (attention params, total MLP params, active MLP params) of one layer."""
    h, d = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * d, cfg.num_kv_heads * d
    attn = h * q_out + 2 * h * kv_out + q_out * h
    if cfg.qkv_bias:
        attn += q_out + 2 * kv_out
    if cfg.o_bias:
        attn += h
    if cfg.qk_norm:
        attn += 2 * d
    if not cfg.is_moe:
        mlp = 3 * h * cfg.intermediate_size
        return attn, mlp, mlp
    expert = 3 * h * cfg.moe_intermediate_size
    router = h * cfg.num_experts
    total = router + expert * (cfg.num_experts + cfg.num_shared_experts)
    active = router + expert * (cfg.num_experts_per_tok + cfg.num_shared_experts)
    return attn, total, active


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """Return (total, active) parameter counts; active counts only the experts a token uses."""
    attn, mlp_total, mlp_active = _layer_counts(cfg)
    norms = 2 * cfg.hidden_size
    embed = cfg.vocab_size * cfg.hidden_size
    head = 0 if cfg.tie_word_embeddings else embed
    shared = embed + head + cfg.hidden_size  # embeddings, lm head, final norm
    total = shared + cfg.num_layers * (attn + mlp_total + norms)
    active = shared + cfg.num_layers * (attn + mlp_active + norms)
    return total, active


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM-paper estimate used for MFU.

    Every weight a token touches costs 2 FLOPs (multiply + add) forward and 4 backward: 6 * N,
    where N counts the matmul weights a token really uses (active experts, the lm head, but not
    the embedding lookup, which is a gather). Attention scores and the weighted sum add
    2 * 2 * seq_len * (heads * head_dim) per layer forward, so 12 * L * T * H * D in total.
    """
    attn, _, mlp_active = _layer_counts(cfg)
    n_matmul = cfg.num_layers * (attn + mlp_active) + cfg.vocab_size * cfg.hidden_size
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    return 6.0 * n_matmul + attention


def human(n: float) -> str:
    """Format a count as 25.8M / 1.2B / 512K."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))
