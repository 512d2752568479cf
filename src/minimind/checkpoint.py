"""Model checkpoints on disk: a folder with the config as JSON and the weights as safetensors.

Contract:
- A *model checkpoint* is a folder holding `model_config.json` (a `ModelConfig`) and
  `model.safetensors`, plus the tokenizer files it was trained with when known
  (`tokenizer.json`, `tokenizer_config.json`). Everything else (optimizer, RNG, data position)
  belongs to the trainer and lives beside these files.
- Where each file sits (checkpoint folders, run directories and their `latest`, Hugging Face and
  adapter folders, the tokenizer beside the weights) is decided in `minimind.locator`; this
  module reads and writes what the locator points at.
- `save_model` writes each file to a temporary name and renames it into place, so a crash
  never leaves a half-written file under the real name. Loading never unpickles (safetensors).
- `load_model` accepts our checkpoints, run directories and the Hugging Face folders whose
  model_type has a registered importer (`locator.register_importer`: `minimind.interop` reads
  Llama/Qwen/Ernie folders, `minimind.upstream` upstream MiniMind ones; `minimind.load_model`
  imports both, this module imports neither). Whatever is wrong with one of them -- a config
  value of the wrong type or out of range, a truncated or corrupt weights file, weights of another
  shape -- is a `UserError` (a `ConfigError` or `CheckpointError`) naming the file, raised before
  the model is allocated.
- `read_safetensors` is the one way every loader (checkpoints, HF folders, LoRA adapters) reads a
  weights file; `check_tokenizer_files` the one way exports and imports vet tokenizer files.
- `read_hf_weights(folder)` reads a Hugging Face folder's weights from exactly the files its
  `*.safetensors.index.json` names (or its single weights file); stray files are never read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from .config import ModelConfig, count_params
from .errors import UserError
from .locator import (CONFIG_NAME, TOKENIZER_JSON, WEIGHTS_NAME, CheckpointError, importer_for, is_hf_folder,
                      resolve_checkpoint, tokenizer_files)
from .model import MiniMindLM

def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) then rename tmp over `path`: readers see the old file or the new.

    An OSError without a file name (Python's own writes, e.g. a full disk) gets `path`, so the
    CLI can say which file could not be written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_safetensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    """save_file, with a failed write (full disk, no permission) raised as an OSError naming `path`."""
    try:
        save_file(sd, str(path), metadata={"format": "pt"})
    except SafetensorError as err:
        found = re.search(r"I/O error: (.*) \(os error (\d+)\)", str(err))
        if found is None:
            raise
        raise OSError(int(found.group(2)), found.group(1), str(path)) from None


def model_state_dict(model: MiniMindLM) -> dict[str, torch.Tensor]:
    """The weights to store: tied lm_head is dropped (it *is* the embedding), tensors made contiguous."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_model(model: MiniMindLM, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
               state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a model checkpoint folder; `state_dict` overrides the model's own (e.g. gathered FSDP)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model_state_dict(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    atomic_write(out / WEIGHTS_NAME, lambda p: write_safetensors(sd, p))
    atomic_write(out / CONFIG_NAME, lambda p: model.config.save(p))
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    return out


def read_safetensors(path: str | Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Read the tensors of a .safetensors file (all, or `keys`); a damaged file is a CheckpointError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = set(handle.keys())
            missing = sorted(set(keys or ()) - stored)
            if missing:
                raise CheckpointError(f"{path}: tensor {missing[0]} is missing ({len(missing)} missing in all)")
            return {k: handle.get_tensor(k) for k in (keys if keys is not None else sorted(stored))}
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); the file is truncated "
                              f"or corrupt, save or download it again") from None
    except OSError as err:  # a folder, no permission, an I/O error (safetensors gives no filename)
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None


def check_tokenizer_files(folder: str | Path) -> None:
    """Raise CheckpointError if a tokenizer file in `folder` would not load (before it is copied)."""
    for path in tokenizer_files(folder):
        if path.suffix != ".json":
            continue
        try:
            if path.name == TOKENIZER_JSON:
                Tokenizer.from_file(str(path))
            else:
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for any bad file
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{path}: not a valid tokenizer file ({first})") from None


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer files of `src` into `dst` (each atomically); nothing when they are the same."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return
    for file in tokenizer_files(src):
        atomic_write(dst / file.name, lambda p, f=file: shutil.copyfile(f, p))


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> MiniMindLM:
    """Build and load a model from a checkpoint folder, a run directory or a Hugging Face folder."""
    p = Path(path)
    if is_hf_folder(p):
        model = importer_for(p)(p)
    else:
        ckpt = resolve_checkpoint(p)
        config = ModelConfig.load(ckpt / CONFIG_NAME)
        weights = ckpt / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{ckpt}: {WEIGHTS_NAME} is missing")
        sd = read_safetensors(weights)
        check_fits(config, sd, source=str(weights))
        model = MiniMindLM(config)
        load_weights(model, sd, source=str(weights))
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def check_fits(config: ModelConfig, sd: dict[str, torch.Tensor], source: str) -> None:
    """Compare parameter counts *before* building the model: an absurd config must not allocate."""
    expected = count_params(config)[0]
    found = sum(v.numel() for k, v in sd.items() if not (config.tie_word_embeddings and k == "lm_head.weight"))
    if found != expected:
        raise CheckpointError(f"{source}: weights do not fit the config (the file holds {found:,} "
                              f"parameters, the config describes {expected:,})")


def load_weights(model: MiniMindLM, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly, allowing only the tied lm_head to be absent."""
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not fit the config: {str(err).splitlines()[-1].strip()}") from None
    if model.config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the config (missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )


def hf_weight_files(folder: Path) -> dict[Path, list[str] | None]:
    """The files holding the model's weights -> the tensors to read from each (None: all of them)."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise UserError(f"{folder}: several weight indexes ({', '.join(i.name for i in indexes)}); keep one")
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError):  # ValueError: bad JSON or bad UTF-8
            weight_map = None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise UserError(f"{indexes[0]}: not a valid safetensors index (needs a \"weight_map\" of "
                            f"tensor name -> file name)")
        files: dict[Path, list[str] | None] = {}
        for name, shard in sorted(weight_map.items()):
            if Path(shard).name != shard or shard in (".", ".."):  # a plain name, never a path out of the folder
                raise UserError(f"{indexes[0]}: shard name {shard!r} is not a file name in this folder")
            if not (folder / shard).is_file():
                raise UserError(f"{indexes[0]} names {shard}, which is missing from {folder}")
            files.setdefault(folder / shard, []).append(name)
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return {folder / WEIGHTS_NAME: None}
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return {found[0]: None}
    if not found:
        raise UserError(f"{folder}: no .safetensors weights (pytorch_model.bin is not read: it would unpickle)")
    raise UserError(f"{folder}: {len(found)} .safetensors files but no model.safetensors and no "
                    f"*.safetensors.index.json saying which hold the weights")


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder, read from exactly the files `hf_weight_files` names."""
    sd: dict[str, torch.Tensor] = {}
    for path, keys in hf_weight_files(folder).items():
        sd.update(read_safetensors(path, keys))
    return sd
