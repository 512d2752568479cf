"""What the user sees during training: a progress bar and metric sinks.

Contract:
- `MetricsLogger(run_dir, tensorboard=False, wandb_project=None, config=None, tags=None)` appends one
  JSON object per call of `log(record)` to `RUN_DIR/metrics.jsonl` (flushed at once, so a killed run
  keeps its history), `tags` added to every record (a recipe phase: {"phase": "general"}),
  and mirrors numeric values to TensorBoard / Weights & Biases when asked. Those two are imported
  lazily and never required: asking for a missing one is a `UserError` saying what to install
  (`check_optional_loggers`, which the trainer calls before it writes anything).
- `read_metrics(path)` returns the records, skipping lines that are not JSON objects (a line cut
  by a kill, bytes that are not UTF-8); `truncate_metrics(path, step)` drops records past `step`
  (used on resume, so the file never holds two versions of a step).
- `peak_flops(device, dtype)` is one device's dense bf16 matmul peak (a table of known GPUs, matched
  by `gpu_peak_flops`; None elsewhere); `model_flops_utilization` divides by the peak of *all*
  ranks, since the trainer's tokens/s counts every rank's tokens. `measured_matmul_flops` times square matmuls, the
  reference `minimind bench train` uses on CPU.
- `Progress(total, initial, enabled)` wraps tqdm: loss, LR, tokens/s, MFU in the postfix; tqdm
  itself shows the ETA.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..locator import METRICS
from ..model.cpu_linear import matmul_nt, onednn_usable

# Dense bf16 tensor-core peaks per GPU (no sparsity), FLOP/s, from the vendors' data sheets. fp32
# peaks are far lower; we only use this table for bf16/fp16 runs and measure otherwise. Keys are
# matched as whole words of the device name (`gpu_peak_flops`), most specific first: "H100 PCIe"
# must not read as an SXM H100, nor "L40" as "L4".
GPU_PEAK_BF16 = (
    ("GB200", 2500e12), ("B200", 2250e12), ("B100", 1750e12),
    ("GH200", 989e12), ("H200 NVL", 835e12), ("H200", 989e12),
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),  # plain "H100 80GB HBM3" is SXM
    ("H800 PCIe", 756e12), ("H800", 989e12), ("H20", 148e12),
    ("A100", 312e12), ("A800", 312e12), ("A30", 165e12), ("A10G", 70e12), ("A10", 125e12),
    ("L40S", 362e12), ("L40", 181e12), ("L20", 119e12), ("L4", 121e12),
    ("RTX 5090", 209e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
)


def gpu_peak_flops(name: str) -> float | None:
    """Dense bf16 peak of the GPU called `name` (as `torch.cuda.get_device_name` spells it), or None.

    Keys match whole words ("NVIDIA L40" is not an "L4"), in table order (specific variants first)."""
    words = re.split(r"[\s_-]+", name.upper())
    for key, value in GPU_PEAK_BF16:
        k = key.upper().split()
        if any(words[i:i + len(k)] == k for i in range(len(words) - len(k) + 1)):
            return value
    return None


def model_flops_utilization(tokens_per_s: float, flops_per_token: float, peak_per_device: float | None,
                            world_size: int) -> float | None:
    """MFU: achieved model FLOP/s over the peak of all `world_size` devices that produced them.

    `tokens_per_s` counts the tokens of every rank, so the denominator is the peak of every GPU."""
    if not peak_per_device:
        return None
    return tokens_per_s * flops_per_token / (peak_per_device * world_size)


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 512,
                          seconds: float = 0.2) -> float:
    """Time square matmuls for about `seconds`; return the FLOP/s of the fastest one.

    The fastest, not the mean: on a shared machine other jobs slow some iterations down, and the
    best one is the closest to what the hardware can do.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    # On the CPU, the faster of PyTorch's default (MKL) and oneDNN, which the trainer uses there.
    fns = [torch.matmul] + ([matmul_nt] if onednn_usable(a, b) else [])
    best = float("inf")
    for fn in fns:
        fn(a, b)  # warm up
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / len(fns):
            t0 = time.perf_counter()
            fn(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return gpu_peak_flops(torch.cuda.get_device_name(device))
    # On a CPU (often shared, with turbo clocks) no fixed peak is meaningful: the trainer shows no
    # MFU there, and `minimind bench train` measures its own matmul reference instead.
    return None


def check_optional_loggers(tensorboard: bool, wandb_project: str | None) -> None:
    """UserError saying what to install, if a logger asked for is missing (checked before step 1)."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard")
    if wandb_project and importlib.util.find_spec("wandb") is None:
        raise UserError("--wandb needs the wandb package: pip install wandb")


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = False, wandb_project: str | None = None,
                 config: dict[str, Any] | None = None, tags: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / METRICS
        self.tags = dict(tags or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = self._wandb = None
        check_optional_loggers(tensorboard, wandb_project)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, dir=str(run_dir), config=config or {})

    def log(self, record: dict[str, Any]) -> None:
        record = {**record, **self.tags}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        step = record.get("step", 0)
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        # Plain keys get their split as a prefix ("train/loss", "val/loss"); keys that already
        # name their group ("eval/mcq_accuracy") are logged as they are.
        prefix = "val/" if record.get("split") == "val" else "train/"
        named = {(k if "/" in k else prefix + k): v for k, v in numeric.items()}
        if self._tb is not None:
            for k, v in named.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(named, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a metrics file; lines that are not (cut short by a kill -9, or
    damaged bytes that are not UTF-8) are skipped, never fatal."""
    records = []
    if Path(path).is_file():
        for raw in Path(path).read_bytes().splitlines():
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only records with step <= `step` (a resumed run re-does the steps after it)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)


class Progress:
    """A tqdm bar over optimizer steps; silent when disabled (other ranks, --no-progress)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, smoothing=0.1)

    def update(self, loss: float, lr: float, tok_s: float, mfu: float | None) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
        if mfu is not None:
            post["mfu"] = f"{100 * mfu:.1f}%"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
