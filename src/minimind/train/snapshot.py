"""The trainer's checkpoints: what one holds, how a run continues from one.

Contract (all take the `Trainer` whose state they read or set, like `step.py`):
- `save(trainer) -> Path | None`: every rank calls it (FSDP gathers shards); rank 0 writes
  `checkpoints/step-N` (`checkpointing.save_checkpoint`: atomic, then `latest`) with the weights
  (the stage decides which), the optimizer, scaler and every rank's RNG and data position, and
  trainer_state.json: step, tokens seen, total steps, the phase (name and first step) and the
  train config. Returns the folder on rank 0.
- `restore(trainer, folder)`: `--resume`: everything `save` wrote, so the next step is the one an
  uninterrupted run would take (the weights were loaded by the stage before wrapping).
- `continue_phase(trainer, folder)`: the first step of a recipe phase after the previous phase's
  final checkpoint: its weights (loaded before wrapping, like a resume) and its optimizer moments,
  with this phase's hyperparameters (lr, betas, weight decay) - the data, the RNG streams (seeded
  afresh by the config) and the LR schedule start anew. The step count goes on from there.
- `record_val_loss(trainer, folder, val_loss)`: the held-out loss of a checkpoint already written,
  and the best one so far.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..locator import STATE_PT, CheckpointError
from . import checkpointing as ckpt
from . import distributed as D
from .state import full_state, load_optimizer_state

if TYPE_CHECKING:
    from .trainer import Trainer


def save(trainer: Trainer) -> Path | None:
    """See the module docstring; the val loss of the step is added afterwards (`record_val_loss`)."""
    t = trainer
    model_sd, optim_sd = full_state(t.model, t.optimizer, t.dist)
    loaders = D.all_gather_objects(t.batches.state_dict(), t.dist)
    rngs = D.all_gather_objects(ckpt.rng_state(t.device), t.dist)
    written: list[Path] = []

    def write(folder: Path) -> None:
        t.stage.save_weights(t.model, model_sd, folder, t.ctx)
        tensors = {"optimizer": optim_sd, "scaler": t.scaler.state_dict() if t.scaler else {}, "rng": rngs}
        ckpt.save_tensors(folder / STATE_PT, tensors)

    state = {"stage": t.stage.name, "tokens_seen": t.tokens_seen, "loader": loaders, "val_loss": None,
             "best_val": t.best_val, "world_size": t.dist.world_size, "total_steps": t.total_steps,
             "phase": t.phase.name, "phase_start": t.phase.start_step, "train_config": t.cfg.to_dict()}
    # Also the barrier: a write that fails on rank 0 (full disk) stops every rank with its message.
    t.on_main(lambda: written.append(ckpt.save_checkpoint(t.run_dir, t.step, write, state, t.cfg.keep_last)))
    return written[0] if written else None


def _check_world(trainer: Trainer, folder: Path, meta: dict) -> None:
    saved_world = meta.get("world_size", 1)
    if saved_world != trainer.dist.world_size:
        raise CheckpointError(f"{folder} was written by {saved_world} process(es); resume it with the same number "
                              f"(now {trainer.dist.world_size}) so every rank finds its data position")


def restore(trainer: Trainer, folder: Path) -> None:
    t = trainer
    tensors, meta = ckpt.load_trainer_state(folder)
    _check_world(t, folder, meta)
    load_optimizer_state(t.model, t.optimizer, tensors["optimizer"], t.dist)
    if t.scaler is not None and tensors.get("scaler"):
        t.scaler.load_state_dict(tensors["scaler"])
    ckpt.set_rng_state(tensors["rng"][t.dist.rank], t.device)
    t.batches.load_state_dict(meta["loader"][t.dist.rank])
    t.step, t.tokens_seen = meta["step"], meta.get("tokens_seen", 0)
    t.best_val = meta.get("best_val")
    t.saved_total = meta.get("total_steps")


def continue_phase(trainer: Trainer, folder: Path) -> None:
    t = trainer
    tensors, meta = ckpt.load_trainer_state(folder)
    _check_world(t, folder, meta)
    # The moments carry over; the hyperparameters are this phase's (the saved groups hold the last ones).
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in t.optimizer.param_groups]
    load_optimizer_state(t.model, t.optimizer, tensors["optimizer"], t.dist)
    for group, own in zip(t.optimizer.param_groups, hyper):
        group.update(own)
    if t.scaler is not None and tensors.get("scaler"):
        t.scaler.load_state_dict(tensors["scaler"])
    t.step, t.tokens_seen, t.best_val = meta["step"], meta.get("tokens_seen", 0), meta.get("best_val")


def record_val_loss(trainer: Trainer, folder: Path | None, val_loss: float | None) -> None:
    if val_loss is None:
        return
    if trainer.best_val is None or val_loss < trainer.best_val:
        trainer.best_val = val_loss
    if folder is not None:
        ckpt.record_val_loss(folder, val_loss, trainer.best_val)
