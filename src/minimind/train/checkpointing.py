"""Trainer checkpoints inside a run directory: atomic writes, `latest`, keep-last-N and best.

Layout (see also `minimind.checkpoint`):

    RUN_DIR/checkpoints/step-0000100/
        model.safetensors, model_config.json, tokenizer files   (or adapter files, for LoRA)
        trainer_state.pt     tensors only: optimizer state, grad-scaler state, RNG states
        trainer_state.json   step, tokens seen, data-loader positions, val loss, train config
    RUN_DIR/checkpoints/latest   text file naming the newest complete checkpoint
    RUN_DIR/checkpoints/best     text file naming the checkpoint with the lowest val loss

Contract:
- `save_checkpoint` writes everything into a hidden temporary folder, renames it into place, and
  only then rewrites `latest` (itself via temp file + rename). A `kill -9` at any instant leaves
  `latest` naming a complete checkpoint: either the previous one or the new one.
- `load_trainer_state` reads the tensors with `torch.load(weights_only=True)`, which refuses to
  unpickle anything but tensors and plain containers, so a checkpoint cannot run code.
- After each save, older checkpoints beyond the newest `keep_last` are deleted, except `best`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, atomic_write

STATE_PT = "trainer_state.pt"
STATE_JSON = "trainer_state.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder `checkpoints/latest` names, or None if the run has no checkpoint yet."""
    latest = checkpoints_dir(run_dir) / "latest"
    if not latest.is_file():
        return None
    target = checkpoints_dir(run_dir) / latest.read_text().strip()
    if not (target / STATE_JSON).is_file():
        raise CheckpointError(f"{latest} names {target.name}, which is not a complete trainer checkpoint")
    return target


def clean_partial(run_dir: Path) -> None:
    """Delete temporary folders left by a run killed in the middle of a save."""
    ckdir = checkpoints_dir(run_dir)
    if ckdir.is_dir():
        for p in ckdir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], state_json: dict[str, Any],
                    keep_last: int) -> Path:
    """Create checkpoints/step-N atomically; `write(folder)` fills in model and tensor files."""
    ckdir = checkpoints_dir(run_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    # The JSON goes last: a folder with trainer_state.json is complete by construction.
    (tmp / STATE_JSON).write_text(json.dumps({**state_json, "step": step}, indent=2) + "\n")
    _fsync_dir(tmp)
    final = ckdir / name
    if final.exists():  # e.g. killed after the rename but before `latest` moved: replace it
        trash = ckdir / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(ckdir / "latest", lambda p: p.write_text(name + "\n"))
    _update_best(ckdir, name, state_json.get("val_loss"))
    _prune(ckdir, keep_last)
    return final


def _fsync_dir(folder: Path) -> None:
    """Flush file contents to disk before the rename publishes them (matters on power loss)."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _read_val_loss(folder: Path) -> float | None:
    try:
        value = json.loads((folder / STATE_JSON).read_text()).get("val_loss")
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _update_best(ckdir: Path, name: str, val_loss: float | None) -> None:
    if val_loss is None or not math.isfinite(val_loss):
        return
    best_file = ckdir / "best"
    if best_file.is_file():
        current = _read_val_loss(ckdir / best_file.read_text().strip())
        if current is not None and current <= val_loss:
            return
    atomic_write(best_file, lambda p: p.write_text(name + "\n"))


def _prune(ckdir: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
    keep = {p.name for p in steps[-keep_last:]}
    for pointer in ("latest", "best"):
        if (ckdir / pointer).is_file():
            keep.add((ckdir / pointer).read_text().strip())
    for p in steps:
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    torch.save(tensors, path)


def load_trainer_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor state, JSON state) of a trainer checkpoint; never unpickles arbitrary objects."""
    try:
        meta = json.loads((ckpt / STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{ckpt}: unreadable {STATE_JSON} ({err})") from None
    pt = ckpt / STATE_PT
    if not pt.is_file():
        raise CheckpointError(f"{ckpt}: {STATE_PT} is missing")
    try:
        tensors = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{pt}: cannot be loaded safely ({err})") from None
    return tensors, meta
