"""Which device and which compute dtype: the one place every command decides them.

Contract:
- `check_device_name(name)`: the grammar every `--device` flag accepts (auto, cpu, mps, cuda,
  cuda:N); a UserError otherwise. Whether the device exists is checked by `pick_device`.
- `pick_device(pref, local_rank=0)`: the torch.device `pref` names, or a UserError naming the flag
  when it is absent on this machine. "auto" is CUDA when present (GPU `local_rank`: under torchrun
  each process takes its own GPU), else the CPU. MPS is never picked by "auto": several ops
  the model uses still fall back to the CPU there, so it is opt-in.
- `inference_dtype(device, name)`: the compute dtype for generate/chat/serve/eval. "auto" is bf16
  on a CUDA GPU that supports it (else fp16) and the stored dtype elsewhere (fp32 on the CPU: on
  CPUs without native bf16 its matmuls were 4-6x slower than fp32, and even with AVX512-BF16
  decoding gained at most 12%, docs/benchmarks.md).
- `training_dtype(device, name)`: the compute dtype for training. "auto" is bf16 on a CUDA GPU
  that supports it, else fp32; fp16 needs CUDA (it relies on a gradient scaler).
- `torch_dtype(name)`: the torch dtype a `--dtype` name means. Two spellings are user-facing:
  training flags say fp32/bf16/fp16 (`TRAINING_DTYPES`, the mixed-precision words), inference
  and export flags say float32/bfloat16/float16 (`INFERENCE_DTYPES`, torch's and Hugging Face's
  words); `DTYPES` maps both, and is the only such table.
- `prepare_device(device)`: per-process settings for fast math on that device (TF32 on CUDA).
"""

from __future__ import annotations

import re

import torch

from .errors import UserError

DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
INFERENCE_DTYPES = ("float32", "bfloat16", "float16")
TRAINING_DTYPES = ("fp32", "bf16", "fp16")
# Every --dtype name, in both spellings, -> the torch dtype it means.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device_name(name: str) -> None:
    """The device grammar every command accepts; whether it exists is checked when it is opened."""
    if not DEVICE_NAME.fullmatch(name):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """The device `pref` names, or a UserError if it is absent here (see the module docstring)."""
    check_device_name(pref)
    if pref == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {pref}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {pref}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {pref}: MPS is not available on this machine")
    return dev


def inference_dtype(device: torch.device, name: str | None) -> torch.dtype | None:
    """The dtype to run a model in for inference; None keeps the dtype it was stored in."""
    if name in (None, "auto"):
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in INFERENCE_DTYPES:
        raise UserError(f"--dtype must be auto, {', '.join(INFERENCE_DTYPES)}; got {name!r}")
    return torch_dtype(name)


def training_dtype(device: torch.device, name: str) -> torch.dtype:
    """The dtype to train in: "auto" is bf16 on CUDA where supported, else fp32 (see the contract)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in TRAINING_DTYPES:
        raise UserError(f"--dtype must be auto, {', '.join(TRAINING_DTYPES)}; got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise UserError("--dtype fp16 needs CUDA (it relies on a gradient scaler); use bf16 or fp32")
    return torch_dtype(name)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a --dtype name in either spelling ("bf16" or "bfloat16"); a UserError otherwise."""
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def prepare_device(device: torch.device) -> None:
    """Per-process math settings: on CUDA, fp32 matmuls may use TF32 tensor cores (~8x faster on
    Ampere and later; 10-bit mantissa inputs with fp32 accumulation, as PyTorch's "high")."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
