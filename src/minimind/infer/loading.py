"""Building an Engine from a path: the checkpoint's model plus its tokenizer.

Contract: `load_engine(ckpt, ...)` accepts what `minimind.load_model` accepts (a checkpoint
folder, a run directory, a Hugging Face folder) and loads the tokenizer saved beside the
weights, falling back to the shipped default tokenizer when there is none. It raises a
`UserError` if the tokenizer and the model disagree on the vocabulary, and -- before anything is
loaded -- if `device` is not a device name or names one this machine does not have (the same
check, `minimind.train.distributed.pick_device`, as the training commands').
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .engine import Engine


def tokenizer_folder(ckpt: str | Path) -> Path | None:
    """The folder holding the checkpoint's tokenizer.json, or None."""
    from ..checkpoint import is_hf_folder, resolve_checkpoint

    p = Path(ckpt)
    folder = p if (p.is_dir() and is_hf_folder(p) and not (p / "model_config.json").is_file()) else resolve_checkpoint(p)
    return folder if (folder / "tokenizer.json").is_file() else None


def load_engine(ckpt: str | Path, max_batch_size: int = 16, max_len: int | None = None,
                device: str = "cpu", dtype: torch.dtype | None = None, compile: bool = False) -> Engine:
    from .. import load_model
    from ..tokenizer import load_tokenizer
    from ..train.distributed import pick_device

    try:
        device = pick_device(str(device))
    except RuntimeError as err:  # torch's own parser, for a name pick_device lets through
        raise UserError(f"--device {device}: not a device name ({err})") from None
    model = load_model(ckpt, device=device, dtype=dtype)
    tok = load_tokenizer(tokenizer_folder(ckpt))
    if tok.vocab_size > model.config.vocab_size:
        raise UserError(f"{ckpt}: the tokenizer has {tok.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}; pass the checkpoint the tokenizer was trained with")
    return Engine(model, tok, max_batch_size=max_batch_size, max_len=max_len, compile=compile)
