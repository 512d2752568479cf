"""Trainer checkpoints inside a run directory: atomic writes, `latest`, keep-last-N and best.

The layout of a run directory (`checkpoints/step-N/`, `latest`, `best`, trainer_state.pt/.json)
is drawn and owned by `minimind.locator`, which also reads `latest` back (`latest_checkpoint`).

Contract:
- `save_checkpoint` writes everything into a hidden temporary folder, renames it into place, and
  only then rewrites `latest` (itself via temp file + rename). A `kill -9` at any instant leaves
  `latest` naming a complete checkpoint: either the previous one or the new one.
- `load_trainer_state` reads the tensors with `torch.load(weights_only=True)`, which refuses to
  unpickle anything but tensors and plain containers, so a checkpoint cannot run code.
- After each save, older checkpoints beyond the newest `keep_last` are deleted, except `best`.
  A folder is first renamed to a hidden `.tmp-` name and then deleted, so a kill in the middle
  never leaves a half-deleted `step-N` folder behind.
- `record_val_loss` adds the held-out loss to a checkpoint already written (the trainer saves the
  final checkpoint before it evaluates, so a failing evaluation cannot cost the run).
- `clean_partial` deletes what a killed run leaves (temporary folders and `.latest.tmp-PID`-style
  files); only names this module and `atomic_write` create, and only under the run lock.
- A write that fails for lack of space (or any OS error) raises `CheckpointWriteError`, a
  `UserError` naming the folder and the free space, after deleting the partial folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write
from ..errors import UserError
from ..locator import (BEST, CHECKPOINTS, LATEST, METRICS, STATE_JSON, STATE_PT, TRAIN_CONFIG, CheckpointError,
                       checkpoint_name, checkpoints_dir, read_json, read_pointer)

# Leftovers of a killed run, relative to the run directory: hidden temporary folders of saves and
# prunes, and the temporary files of `atomic_write` (".NAME.tmp-PID") and `truncate_metrics`.
PARTIAL = (f"{CHECKPOINTS}/.tmp-*", f"{CHECKPOINTS}/.{LATEST}.tmp-*", f"{CHECKPOINTS}/.{BEST}.tmp-*",
           f"{CHECKPOINTS}/step-*/.{STATE_JSON}.tmp-*", f".{TRAIN_CONFIG}.tmp-*", f"{METRICS}.tmp")


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, quota, permissions); the previous one is intact."""


def clean_partial(run_dir: Path) -> list[Path]:
    """Delete what a run killed in the middle of a save left behind; returns what was removed.

    Call it only while holding the run lock: then no live process is writing these files."""
    removed = []
    for pattern in PARTIAL:
        for p in sorted(Path(run_dir).glob(pattern)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _storage_failure(err: BaseException) -> str | None:
    """The reason, if `err` is a failed write to disk (not a bug in the code that wrote)."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, RuntimeError) and "inline_container" in text:  # torch.save's zip writer
        return text.split("] ", 1)[-1].lstrip(". ")  # e.g. "unexpected pos 576 vs 534"
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:
        return text
    return None


def save_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None], state_json: dict[str, Any],
                    keep_last: int) -> Path:
    """Create checkpoints/step-N atomically; `write(folder)` fills in model and tensor files."""
    ckdir = checkpoints_dir(run_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        # The JSON goes last: a folder with trainer_state.json is complete by construction.
        (tmp / STATE_JSON).write_text(json.dumps({**state_json, "step": step}, indent=2) + "\n")
        _fsync_dir(tmp)
    except Exception as err:
        reason = _storage_failure(err)
        shutil.rmtree(tmp, ignore_errors=True)  # the space it took may be what the user needs
        if reason is None:
            raise
        free = shutil.disk_usage(ckdir).free / 2**20
        raise CheckpointWriteError(
            f"could not write checkpoint {name} in {ckdir}: {reason} ({free:,.0f} MiB free there; a full disk?). "
            f"The previous checkpoint is intact: free some space, then rerun with --resume") from None
    final = ckdir / name
    if final.exists():  # e.g. killed after the rename but before `latest` moved: replace it
        trash = ckdir / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write(ckdir / LATEST, lambda p: p.write_text(name + "\n"))
    _update_best(ckdir, name, state_json.get("val_loss"))
    _prune(ckdir, keep_last)
    return final


def record_val_loss(folder: Path, val_loss: float, best_val: float | None) -> None:
    """Store the held-out loss of an already written checkpoint, and move `best` if it is lower."""
    meta = json.loads((folder / STATE_JSON).read_text())
    meta.update(val_loss=val_loss, best_val=best_val)
    atomic_write(folder / STATE_JSON, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    _update_best(folder.parent, folder.name, val_loss)


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
    best = _pointer(ckdir, BEST)
    if best is not None:
        current = _read_val_loss(best)
        if current is not None and current <= val_loss:
            return
    atomic_write(ckdir / BEST, lambda p: p.write_text(name + "\n"))


def _pointer(ckdir: Path, pointer: str) -> Path | None:
    """The folder `latest`/`best` names; None if absent or unreadable (a save never fails on it)."""
    try:
        return read_pointer(ckdir.parent, pointer)
    except CheckpointError:
        return None


def _prune(ckdir: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
    keep = {p.name for p in steps[-keep_last:]}
    keep |= {target.name for pointer in (LATEST, BEST) if (target := _pointer(ckdir, pointer)) is not None}
    for p in steps:
        if p.name not in keep:  # rename first: a kill mid-delete leaves a `.tmp-` folder, not a broken step
            trash = ckdir / f".tmp-del-{p.name}-{os.getpid()}"
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG stream a training step draws from (saved per rank, so resume is exact)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    torch.save(tensors, path)


def load_trainer_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor state, JSON state) of a trainer checkpoint; never unpickles arbitrary objects."""
    meta = read_json(ckpt / STATE_JSON, "the trainer state")
    pt = ckpt / STATE_PT
    if not pt.is_file():
        raise CheckpointError(f"{ckpt}: {STATE_PT} is missing")
    try:
        tensors = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{pt}: cannot be loaded safely ({err})") from None
    return tensors, meta
