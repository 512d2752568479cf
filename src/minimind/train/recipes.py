"""Run a training stage from code, idempotently; read recipe files.

This is the one way code runs a stage: `minimind <stage>` (cli/train_cmds.py), `minimind
quickstart`, the phases of `minimind pretrain --recipe` and the benchmarks all come here.

Contract:
- `run_stage(name, config_file=None, *, reuse=True, **options) -> TrainResult | None` builds the
  config of stage `name` from defaults < `config_file` (JSON) < `options` (validated), then:
    reuse=True (code): the run directory `options["out"]` decides. No checkpoint yet: a fresh run.
      A final checkpoint whose saved options match: reused, nothing trains (`result.reused`). An
      unfinished run whose options match: resumed. A run of another stage or with other options:
      refused with a one-line `UserError` naming the options that differ.
    reuse=False (the CLI): the config's own `resume` flag decides, as `Trainer` does (a run
      directory that holds a run needs --resume; with it, changed options are only noted).
  Options that say how a run is carried out, not what it trains (`RUN_ONLY`: device, logging,
  evaluation, checkpoint frequency, --max-minutes, ...), never count as a difference. Returns
  None when the stage did a non-training job instead (`Stage.run_instead_of_training`).
- `run_state(run_dir, stage, cfg)` is that decision on its own: "fresh", "resume" or "done";
  `differences(saved, cfg)` the options that make a saved run another one.
- `finished(meta, max_steps)`: a checkpoint's trainer_state.json is the end of its run: it reached
  `max_steps`, or the earlier end the run's wall-clock limit set (`total_steps`).
Recipe files themselves are read by `minimind.recipes.read_recipe` (torch-free, for the CLI);
`train/phases.py` runs the multi-phase pretraining ones, `quickstart.py` the quickstart's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..locator import STATE_JSON, CheckpointError, latest_checkpoint
from . import distributed as D
from .config import TrainConfig, load_config
from .stages import get_stage
from .trainer import Trainer, TrainResult

# How a run is carried out, not what it trains: a finished run is reused whatever these say.
RUN_ONLY = frozenset({
    "out", "resume", "device", "dtype", "compile", "onednn", "activation_checkpointing", "fsdp", "max_minutes",
    "save_every", "keep_last", "eval_every", "eval_batches", "eval_suite", "eval_data", "eval_limit",
    "num_samples", "sample_tokens", "log_every", "progress", "tensorboard", "wandb",
})


def finished(meta: dict[str, Any], max_steps: int | None) -> bool:
    """Whether a checkpoint (its trainer_state.json) is the end of its run (module docstring)."""
    ends = [n for n in (max_steps, meta.get("total_steps")) if n]
    return bool(ends) and meta.get("step", 0) >= min(ends)


def differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """`option: saved -> new` for every option that changes what the run trains (not RUN_ONLY)."""
    defaults = {k: v for k, v in type(cfg)().to_dict().items()}  # options added since the run was saved
    old = {**defaults, **saved}
    return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in cfg.to_dict().items() if k not in RUN_ONLY and old.get(k) != v]


def latest_state(run_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """The run's latest checkpoint and its trainer_state.json, or (None, {}) before the first one."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None, {}
    path = latest / STATE_JSON
    try:
        return latest, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None


def run_state(run_dir: Path, stage: str, cfg: TrainConfig) -> str:
    """"fresh", "resume" or "done" for `cfg` in `run_dir`; a UserError if the run there is another one."""
    latest, meta = latest_state(run_dir)
    if latest is None:
        return "fresh"
    if meta.get("stage") != stage:
        raise UserError(f"{run_dir} holds a {meta.get('stage')!r} run, not {stage!r}; choose another output folder")
    diff = differences(meta.get("train_config", {}), cfg)
    if diff:
        raise UserError(f"{run_dir} holds a {stage} run with other options ({'; '.join(diff[:3])}); "
                        f"choose another output folder or delete it")
    return "done" if finished(meta, cfg.max_steps) else "resume"


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a single process: the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def _reused(run_dir: Path) -> TrainResult:
    """The result of a finished run, read back from its final checkpoint."""
    latest, meta = latest_state(run_dir)
    return TrainResult(run_dir, meta["step"], None, meta.get("val_loss"), latest, [], reused=True)


def run_stage(name: str, config_file: str | Path | None = None, *, reuse: bool = True,
              **options: Any) -> TrainResult | None:
    """Run stage `name` with these options (TrainConfig fields); see the module docstring."""
    stage_cls = get_stage(name)
    cfg = load_config(stage_cls.config_class, config_file, options)
    stage = stage_cls(cfg)
    if stage.run_instead_of_training():
        return None
    if reuse:
        if not cfg.out:
            raise UserError("--out is required: the run directory for checkpoints and metrics")
        state = run_state(Path(cfg.out), name, cfg)
        if state == "done":
            if is_main_process():
                print(f"== {name}: already done in {cfg.out}, skipping")
            return _reused(Path(cfg.out))
        cfg.resume = state == "resume"
        if is_main_process():
            limit = f" (at most {cfg.max_minutes:.2g} min)" if cfg.max_minutes else ""
            budget = f"{cfg.max_steps} steps" if cfg.max_steps else "its budget"
            print(f"== {name}: {budget}{limit} -> {cfg.out}" + (" (resuming)" if cfg.resume else ""))
    trainer = Trainer(stage)
    try:
        return trainer.fit()
    finally:
        if getattr(trainer, "dist", None) is not None:  # not set when the config was refused
            D.cleanup(trainer.dist)
