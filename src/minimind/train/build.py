"""What a run trains, built from its config: compute dtype, tokenizer and model.

Contract:
- `load_tokenizer_for(cfg, init_path)`: --tokenizer, else the one beside the --init checkpoint,
  else the shipped one.
- `build_model(cfg, init_path, tokenizer)`: the --init checkpoint / HF folder (whose context,
  --max-seq-len / --rope-scaling, may be changed), or a fresh model of --preset / --model-config
  whose vocabulary and special ids follow the tokenizer, with the shape flags applied (shapes.py).
- `check_context(seq_len, config)`: the one check that training sequences fit the model's context;
  `build_model` runs it for both kinds of model, before any data is read.
- `check_vocabulary(model, tokenizer)`: `tokenizer.check_model_fit` (more ids than embedding rows, or
  a different eos id, is a UserError naming --vocab-size / --tokenizer).
- `enable_activation_checkpointing(model)`: recompute blocks in the backward pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as recompute

from .. import load_model
from ..config import ModelConfig
from ..errors import UserError
from ..locator import has_tokenizer
from ..model import MiniMindLM
from ..model.rope import RotaryTables
from ..shapes import base_config
from ..tokenizer import check_model_fit, load_tokenizer
from .config import TrainConfig


def enable_activation_checkpointing(model: MiniMindLM) -> None:
    """Recompute each block's forward during backward instead of storing its activations.

    We replace the bound `forward` of every block instance (parameter names are unchanged, so
    checkpoints are unaffected): memory drops from O(layers) block activations to O(1) at the
    price of one extra forward pass.
    """
    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, _block=block):
            if _block.training and torch.is_grad_enabled():
                return recompute(_inner, *args, use_reentrant=False)
            return _inner(*args)

        block.forward = forward


def load_tokenizer_for(cfg: TrainConfig, init_path: Path | None) -> Any:
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if init_path is not None and has_tokenizer(init_path):
        return load_tokenizer(init_path)
    return load_tokenizer(None)


def build_model(cfg: TrainConfig, init_path: Path | None, tokenizer: Any) -> MiniMindLM:
    if init_path is not None:
        model = load_model(init_path)
        cfg.overrides().check_for_init(str(init_path))  # validate() did too; a caller may skip it
        set_context(model, cfg.overrides().apply(model.config))
        check_context(cfg.seq_len, model.config)
        model.train()
        return model
    config = base_config(cfg.preset, cfg.model_config)
    if tokenizer is not None:  # --vocab-size may add spare rows, never fewer: checked before replace() re-validates
        vocab = cfg.vocab_size or tokenizer.vocab_size
        check_model_fit(tokenizer, vocab)
        config = dataclasses.replace(config, vocab_size=vocab, pad_token_id=tokenizer.pad_id,
                                     bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    config = cfg.overrides().apply(config)
    check_context(cfg.seq_len, config)
    return MiniMindLM(config)


def set_context(model: MiniMindLM, config: ModelConfig) -> None:
    """Give a built model a new context (max_seq_len, rope_scaling): only the RoPE tables depend on it."""
    if config is model.config:
        return
    model.config = config
    model.rope = RotaryTables(config.head_dim, config.max_seq_len, config.rope_theta, config.rope_scaling)


def check_context(seq_len: int, config: ModelConfig) -> None:
    """Training windows must fit the model's context (the RoPE tables stop at max_seq_len)."""
    if seq_len > config.max_seq_len:
        raise UserError(f"--seq-len {seq_len} exceeds the model's context {config.max_seq_len} "
                        "(--max-seq-len / the checkpoint's max_seq_len)")


def check_vocabulary(model: MiniMindLM, tokenizer: Any) -> None:
    """Where the model and the tokenizer meet: every id needs an embedding row, and both must agree on eos."""
    if tokenizer is not None:
        check_model_fit(tokenizer, model.config.vocab_size, model.config.eos_token_id)
