"""Training configuration: one dataclass holds every knob of a run.

Contract:
- `TrainConfig` is the single source of truth for the loop (optimizer, schedule, budget, precision,
  checkpointing, logging). A stage that needs more knobs subclasses it (`SFTConfig`, `DPOConfig`,
  ...; `stages.base.with_defaults` gives an inherited knob a new default); the CLI turns every
  field into a `--flag` automatically, using the `help` in the field's metadata, so a new stage
  never writes argument-parsing code.
- `load_config(cls, json_file, overrides)` builds a config from defaults < JSON file < flags, and
  raises `UserError` naming the bad key or value.
- `validate()` checks every value a run could only trip over later (types, ranges, NaN, the device
  name), so a bad flag fails before any work and never after training (`docs/reliability.md`).
  Subclasses extend it with `super().validate()`; every float knob of every stage must be finite.
- A config round-trips through JSON (`to_dict` / `from_dict`); the run directory stores it as
  `train_config.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..devices import TRAINING_DTYPES, check_device_name
from ..errors import UserError
from ..eval.run import DEMO_TASKS, TASKS
from ..shapes import ModelOverrides


def knob(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with CLI help text (lists get a default_factory automatically)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig(ModelOverrides):  # the model shape flags (--hidden-size, ...): shapes.py
    # -- what to train on / where to write --------------------------------------------------------
    data: list[str] = knob([], "training data: JSONL/.jsonl.gz/Parquet files or a prepared directory")
    out: str = knob("", "run directory (checkpoints, metrics.jsonl, plots, tokenizer)")
    preset: str = knob("tiny", "model preset when starting from scratch (see `minimind model list`)")
    init: str | None = knob(None, "start from this checkpoint folder, run directory or Hugging Face folder")
    tokenizer: str | None = knob(None, "tokenizer folder (default: the one in --init, else the shipped one)")
    # -- batch and budget -------------------------------------------------------------------------
    seq_len: int = knob(256, "tokens per training sequence")
    batch_size: int = knob(16, "sequences per micro-batch on each process")
    grad_accum: int = knob(1, "micro-batches accumulated into one optimizer step")
    max_steps: int | None = knob(None, "stop after this many optimizer steps")
    epochs: int | None = knob(None, "stop after this many passes over the data (needs a sized loader)")
    max_tokens: int | None = knob(None, "stop after this many training tokens (all processes together)")
    max_minutes: float | None = knob(None, "also stop after this many minutes of wall clock: the step budget (and "
                                           "the LR decay with it) shrinks to what the measured step time allows")
    # -- optimizer and schedule -------------------------------------------------------------------
    lr: float = knob(5e-4, "peak learning rate")
    min_lr_ratio: float = knob(0.1, "cosine decays to lr * min_lr_ratio")
    warmup_steps: int = knob(0, "linear warmup steps before the cosine decay")
    schedule: str = knob("cosine", "LR after the warmup: cosine (decays over the whole run) | wsd (warmup-stable-"
                                   "decay: the peak LR, then a linear decay over the last --decay-frac of the steps)")
    decay_frac: float = knob(0.2, "--schedule wsd: the share of the steps that decay to lr * min_lr_ratio "
                                  "(0: no decay, e.g. a phase that a later one anneals)")
    weight_decay: float = knob(0.1, "AdamW weight decay (never applied to norms, biases, embeddings)")
    beta1: float = knob(0.9, "AdamW beta1")
    beta2: float = knob(0.95, "AdamW beta2")
    grad_clip: float = knob(1.0, "clip the global gradient norm to this (0 = off)")
    # -- hardware ---------------------------------------------------------------------------------
    device: str = knob("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = knob("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA if supported, else fp32)")
    compile: bool = knob(False, "torch.compile the model")
    onednn: bool = knob(True, "CPU, fp32, where PyTorch's BLAS is MKL: run the linear layers (forward and backward) "
                              "on oneDNN instead: the same fp32 math, steps ~1.5x faster on AMD CPUs (not with --compile)")
    activation_checkpointing: bool = knob(False, "recompute each block in the backward pass to save memory")
    document_mask: bool = knob(False, "packed rows: attend only within each document (positions restart per "
                                      "document; the first token of each document is not a target)")
    fsdp: bool = knob(False, "under torchrun: shard parameters with FSDP2 instead of DDP")
    seed: int = knob(0, "seed for model init, data order and dropout")
    # -- checkpoints, evaluation, logging ---------------------------------------------------------
    save_every: int = knob(0, "save a checkpoint every N steps (0: only at the end)")
    keep_last: int = knob(2, "keep the newest N checkpoints (plus the best by val loss)")
    resume: bool = knob(False, "continue the run in --out from its latest checkpoint")
    eval_every: int = knob(0, "evaluate on the held-out split every N steps (0: only at the end)")
    eval_batches: int = knob(4, "held-out batches per evaluation (0: no evaluation)")
    eval_suite: str | None = knob(None, "also run an eval suite at each evaluation: demo (all four embedded suites), "
                                        "ppl, mcq, ceval, cmmlu, gen or toolcall; logged as eval/<task>_<metric>")
    eval_data: str | None = knob(None, "--eval-suite's file (a C-Eval/CMMLU folder for ceval, cmmlu or a C-Eval-layout "
                                       "mcq); default: the embedded demo suite of that name")
    eval_limit: int | None = knob(None, "--eval-suite: only the first N documents/prompts/cases (questions per subject "
                                        "for C-Eval layouts)")
    num_samples: int = knob(2, "sample generations logged at each evaluation")
    sample_tokens: int = knob(40, "new tokens per sample generation")
    log_every: int = knob(1, "write a metrics line every N steps")
    progress: bool = knob(True, "show a progress bar")
    tensorboard: bool = knob(False, "also log to TensorBoard (needs `pip install tensorboard`)")
    wandb: str | None = knob(None, "also log to this Weights & Biases project (needs `pip install wandb`)")
    skip_bad: bool = knob(False, "skip malformed data records (and count them) instead of failing")

    # -- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise UserError(f"{source}: a training config must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"{source}: unknown training option(s): {', '.join(unknown)}")
        values = {k: coerce(v, field_type(cls, k), f"{source}: {k}") for k, v in data.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise UserError naming the first bad value."""
        for f in dataclasses.fields(self):  # NaN passes every `<` test below, so reject it first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{flag(f.name)} must be a finite number, got {value}")
        if self.seq_len < 2:
            raise UserError(f"--seq-len must be at least 2 (each token predicts the next one), got {self.seq_len}")
        for name, lowest in AT_LEAST.items():
            if getattr(self, name) < lowest:
                raise UserError(f"--{flag(name)} must be at least {lowest}, got {getattr(self, name)}")
        if self.seed > MAX_SEED:
            raise UserError(f"--seed must be at most {MAX_SEED}, got {self.seed}")
        for name in ("max_steps", "epochs", "max_tokens", "max_minutes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{flag(name)} must be positive, got {value}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        for name in ("beta1", "beta2"):  # Adam's moment decays: 1 would never forget, < 0 is meaningless
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError(f"--weight-decay and --grad-clip must not be negative, got {self.weight_decay}, {self.grad_clip}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.decay_frac <= 1:
            raise UserError(f"--decay-frac must be in [0, 1], got {self.decay_frac}")
        if self.dtype not in ("auto", *TRAINING_DTYPES):
            raise UserError(f"--dtype must be auto, {', '.join(TRAINING_DTYPES)}; got {self.dtype!r}")
        check_device_name(self.device)
        self.check_shape_flags(self.preset, self.init)
        if self.num_samples > 0 and self.sample_tokens < 1:
            raise UserError(f"--sample-tokens must be at least 1 when --num-samples is {self.num_samples} "
                            f"(or pass --num-samples 0), got {self.sample_tokens}")
        self._validate_eval_suite()
        if self.max_steps is None and self.epochs is None and self.max_tokens is None:
            raise UserError("give a training budget: --max-steps, --epochs or --max-tokens")


    def _validate_eval_suite(self) -> None:
        """--eval-suite/--eval-data/--eval-limit; the file's records are checked when the run opens it."""

        if self.eval_suite is None:
            if self.eval_data is not None or self.eval_limit is not None:
                raise UserError("--eval-data and --eval-limit need --eval-suite (demo, ppl, mcq, ...)")
            return
        suites = ("demo", *TASKS)
        if self.eval_suite not in suites:
            raise UserError(f"--eval-suite must be one of {', '.join(suites)}, got {self.eval_suite!r}")
        if self.eval_data is None and self.eval_suite not in ("demo", *DEMO_TASKS):
            raise UserError(f"--eval-suite {self.eval_suite} needs --eval-data (there is no embedded {self.eval_suite} suite)")
        if self.eval_data is not None:
            if self.eval_suite == "demo":
                raise UserError("--eval-suite demo runs the embedded suites; give one suite name with --eval-data")
            if not Path(self.eval_data).exists():
                raise UserError(f"--eval-data {self.eval_data}: no such file or folder")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise UserError(f"--eval-limit must be at least 1, got {self.eval_limit}")
        if self.fsdp:
            raise UserError("--eval-suite does not work with --fsdp: the eval runs on rank 0, which holds only a shard")


# Lowest allowed value of counts and periods (0 means "off" where allowed).
AT_LEAST = {"batch_size": 1, "grad_accum": 1, "log_every": 1, "keep_last": 1, "warmup_steps": 0, "save_every": 0,
            "eval_every": 0, "eval_batches": 0, "num_samples": 0, "seed": 0}
SCHEDULES = ("cosine", "wsd")  # learning-rate shapes after the warmup (optim.lr_at)
MAX_SEED = 2**32 - 1  # numpy's seed words are uint32; torch takes up to 2**64 - 1


def flag(name: str) -> str:
    return name.replace("_", "-")


def field_type(cls: type, name: str) -> Any:
    """The resolved type of a config field (`int | None`, `list[str]`, ...)."""
    return _type_hints(cls)[name]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # get_type_hints evaluates every annotation string of the class and its bases: ~1 ms per call,
    # and the CLI asks once per flag of every stage (hundreds of times), so resolve each class once.
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, True); `int` -> (int, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) != len(typing.get_args(tp))
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON or command-line value to a field's type, or raise UserError."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise UserError(f"{where}: a value is required")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        items = value if isinstance(value, list) else [value]
        return [coerce(v, item, where) for v in items]
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise UserError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")


def load_config(cls: type[TrainConfig], config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """defaults < JSON config file < explicit overrides (already parsed flags), validated."""
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"--config {path}: no such file") from None
        except json.JSONDecodeError as err:
            raise UserError(f"--config {path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise UserError(f"--config {path}: must be a JSON object")
    merged = {**data, **(overrides or {})}
    return cls.from_dict(merged, source=str(config_file) if config_file else "flags")
