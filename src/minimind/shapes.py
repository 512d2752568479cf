"""Model shape flags: a preset (or a ModelConfig JSON file) plus per-field overrides.

Contract:
- `ModelOverrides` is one dataclass of optional fields; every training config inherits it, so
  `minimind pretrain --preset small --hidden-size 384 --num-layers 6` works with no CLI code, and
  `minimind model show` generates the same flags from it. `None` means "keep the base value".
- `base_config(preset, model_config)`: the `--model-config FILE.json` if given, else the preset.
- `ModelOverrides.apply(cfg)` returns a new, validated `ModelConfig`; a bad shape raises a one-line
  `UserError` naming the flags (`--num-kv-heads 3: num_heads (8) must be a multiple of ...`).
- Sizes derived in the base (`head_dim` = hidden/heads, `intermediate_size` = SwiGLU 8/3 * hidden,
  the MoE expert width = intermediate) are derived again from the new values; sizes the base set
  explicitly (Qwen3's head_dim 128) are kept unless their own flag is given.
- `check_for_init(init)`: a checkpoint's weights fix its shape, so with `--init` only the context
  fields (`--max-seq-len`, `--rope-scaling`) may change; any other shape flag is refused.
- `parse_rope_scaling(text, max_seq_len)` reads `--rope-scaling`: `none`, `yarn:FACTOR`,
  `yarn:FACTOR:ORIGINAL` or a JSON object in transformers' `rope_scaling` form. `yarn:4` means "this
  context is 4x the one the model was trained at": original_max_position_embeddings =
  max_seq_len / 4 (Qwen's convention: max_position_embeddings = factor * original).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, ModelConfig, get_preset, swiglu_width
from .errors import UserError

# Flag field -> ModelConfig field, where the flag reads better than the config's name.
CONFIG_FIELD = {"experts_per_token": "num_experts_per_tok", "shared_experts": "num_shared_experts"}
# The fields that only describe the context, not the weights: the ones --init may change.
CONTEXT_FIELDS = ("max_seq_len", "rope_scaling")
ROPE_SCALING_HELP = ("YaRN context extension: none | yarn:FACTOR[:ORIGINAL] (ORIGINAL default: max-seq-len/FACTOR) "
                     "| a JSON object like transformers' rope_scaling")


def _opt(help: str) -> Any:
    return field(default=None, metadata={"help": help})


@dataclass
class ModelOverrides:
    """Shape flags applied over --preset (or --model-config); None keeps the base value."""

    model_config: str | None = _opt("model shape from this ModelConfig JSON (e.g. a checkpoint's model_config.json) "
                                     "instead of --preset; the flags below still override it")
    hidden_size: int | None = _opt("model width (override of the preset)")
    num_layers: int | None = _opt("transformer blocks (upstream: --num_hidden_layers)")
    num_heads: int | None = _opt("attention (query) heads")
    num_kv_heads: int | None = _opt("key/value heads (GQA); must divide --num-heads")
    head_dim: int | None = _opt("width of one head (default: hidden-size / num-heads)")
    intermediate_size: int | None = _opt("SwiGLU MLP width (default: 8/3 * hidden-size rounded up to 64)")
    vocab_size: int | None = _opt("model vocabulary (default: the tokenizer's; may be larger, never smaller)")
    qk_norm: bool | None = _opt("RMSNorm on q and k per head (Qwen3)")
    num_experts: int | None = _opt("routed MoE experts per layer (0: dense MLP; upstream --use_moe 1 = 4)")
    experts_per_token: int | None = _opt("experts each token is routed to (top-k)")
    shared_experts: int | None = _opt("experts every token always uses")
    max_seq_len: int | None = _opt("the model's context: longest sequence its RoPE tables cover")
    rope_scaling: str | None = _opt(ROPE_SCALING_HELP)

    def given(self) -> dict[str, Any]:
        """The override fields that were set (model_config excluded), in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelOverrides)
                if f.name != "model_config" and getattr(self, f.name) is not None}

    def describe(self) -> str:
        """The given flags as the user typed them: `--num-layers 12 --qk-norm`."""
        return " ".join(_flag_text(name, value) for name, value in self.given().items())

    def check_for_init(self, init: str | None, source: str = "--init") -> None:
        """Refuse shape flags that a checkpoint's weights fix; the context fields may change."""
        if not init:
            return
        fixed = [n for n in self.given() if n not in CONTEXT_FIELDS] + (["model_config"] if self.model_config else [])
        if fixed:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in fixed)
            raise UserError(f"{flags} cannot be combined with {source}: the checkpoint's weights fix its shape "
                            "(only --max-seq-len and --rope-scaling, the context, may change)")

    def check_shape_flags(self, preset: str, init: str | None) -> None:
        """Fail before any work on a refused or invalid shape. The vocabulary is checked when the
        tokenizer is known (it replaces the preset's vocabulary and special ids)."""
        self.check_for_init(init)
        if self.rope_scaling is not None:  # the grammar; the values are checked with the full shape
            parse_rope_scaling(self.rope_scaling, self.max_seq_len or 1 << 20)
        if not init:
            dataclasses.replace(self.overrides(), vocab_size=None).apply(base_config(preset, self.model_config))

    def overrides(self) -> "ModelOverrides":
        """Just the shape flags (a TrainConfig is a ModelOverrides with the training knobs added)."""
        return ModelOverrides(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelOverrides)})

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """A new validated config: `cfg` with every given override; derived sizes follow their inputs."""
        given = self.given()
        if not given:
            return cfg
        data = cfg.to_dict()  # a deep copy: the base config stays as it was
        _rederive(data, cfg, given)
        for name, value in given.items():
            if name != "rope_scaling":
                data[CONFIG_FIELD.get(name, name)] = value
        if "rope_scaling" in given:
            data["rope_scaling"] = parse_rope_scaling(self.rope_scaling, data["max_seq_len"])
        # A note for readers of model_config.json; like a command line, later flags win.
        data["extra"]["overrides"] = f"{cfg.extra.get('overrides', '')} {self.describe()}".strip()
        try:
            return ModelConfig(**data)
        except ConfigError as err:
            raise UserError(f"{self._blame(err)}: {err}") from None

    def _blame(self, err: ConfigError) -> str:
        """Name the flags behind a config error: its field's flag, else the given flags it mentions."""
        by_config = {CONFIG_FIELD.get(n, n): n for n in self.given()}
        named = [by_config[err.field]] if err.field in by_config else \
            [n for c, n in by_config.items() if c in str(err)] or list(by_config.values())
        return " ".join(_flag_text(n, getattr(self, n)) for n in named)


def _flag_text(name: str, value: Any) -> str:
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value}"


def _rederive(data: dict[str, Any], base: ModelConfig, given: dict[str, Any]) -> None:
    """Clear the sizes the base derived from fields that now change, so ModelConfig derives them again."""
    if "head_dim" not in given and ({"hidden_size", "num_heads"} & set(given)) \
            and base.head_dim == base.hidden_size // base.num_heads:
        data["head_dim"] = None
    inter_derived = base.intermediate_size == swiglu_width(base.hidden_size)
    if "intermediate_size" not in given and "hidden_size" in given and inter_derived:
        data["intermediate_size"] = None
    if base.moe_intermediate_size == base.intermediate_size and \
            ("intermediate_size" in given or data["intermediate_size"] is None):
        data["moe_intermediate_size"] = None


def parse_rope_scaling(text: str, max_seq_len: int) -> dict[str, Any] | None:
    """`none` | `yarn:FACTOR[:ORIGINAL]` | a JSON object -> a rope_scaling dict (or None)."""
    text = text.strip()
    if text.lower() in ("none", "null", "off"):
        return None
    if text.startswith("{"):
        try:
            scaling = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--rope-scaling: not valid JSON ({err})") from None
        if not isinstance(scaling, dict):
            raise UserError("--rope-scaling: the JSON form must be an object")
        return scaling
    kind, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    if kind != "yarn" or not 1 <= len(parts) <= 2:
        raise UserError(f"--rope-scaling must be none, yarn:FACTOR, yarn:FACTOR:ORIGINAL or a JSON object, got {text!r}")
    try:
        factor = float(parts[0])
        original = int(parts[1]) if len(parts) == 2 else int(max_seq_len / factor)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--rope-scaling {text}: FACTOR must be a number and ORIGINAL an integer") from None
    if not factor >= 1 or original < 1:
        raise UserError(f"--rope-scaling {text}: FACTOR must be at least 1 and leave an original context of "
                        f"at least 1 token (max_seq_len {max_seq_len} / {factor})")
    return {"type": "yarn", "factor": factor, "original_max_position_embeddings": original}


def base_config(preset: str, model_config: str | None) -> ModelConfig:
    """--model-config FILE.json if given, else the preset (both validated)."""
    if model_config:
        try:
            return ModelConfig.load(model_config)
        except ConfigError as err:
            raise UserError(f"--model-config {err}") from None
    return get_preset(preset)
