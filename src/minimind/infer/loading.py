"""Building an Engine from a path: the checkpoint's model plus its tokenizer.

Contract: `load_engine(ckpt, ...)` accepts what `minimind.load_model` accepts (a checkpoint
folder, a run directory, a Hugging Face folder) and loads the tokenizer saved beside the
weights (`locator.tokenizer_beside`), falling back to the shipped default tokenizer when there is none. It raises a
`UserError` if the tokenizer and the model disagree on the vocabulary, and -- before anything is
loaded -- if `device` is not a device name or names one this machine does not have. Device and
dtype default to "auto" (`minimind.devices`: a CUDA GPU in bf16 when there is one, else the CPU
in the stored dtype), the same rules as every other command.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import load_model
from ..devices import inference_dtype, pick_device, prepare_device
from ..errors import UserError
from ..locator import tokenizer_beside
from ..tokenizer import load_tokenizer
from .engine import Engine


def load_engine(ckpt: str | Path, max_batch_size: int = 16, max_seq_len: int | None = None,
                device: str = "auto", dtype: torch.dtype | str | None = "auto", compile: bool = False) -> Engine:
    """`dtype`: a torch dtype, a name ("auto", "float32", "bfloat16", "float16") or None (as stored)."""
    device = pick_device(str(device))
    if dtype is not None and not isinstance(dtype, torch.dtype):
        dtype = inference_dtype(device, dtype)
    prepare_device(device)
    model = load_model(ckpt, device=device, dtype=dtype)
    tok = load_tokenizer(tokenizer_beside(ckpt))
    if tok.vocab_size > model.config.vocab_size:
        raise UserError(f"{ckpt}: the tokenizer has {tok.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}; pass the checkpoint the tokenizer was trained with")
    return Engine(model, tok, max_batch_size=max_batch_size, max_seq_len=max_seq_len, compile=compile)
