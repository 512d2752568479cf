"""Where is what on disk: every folder MiniMind reads a model, an adapter or a run from.

    CHECKPOINT/                    a model checkpoint (`checkpoint.save_model` writes it)
        model_config.json          the ModelConfig as JSON                      CONFIG_NAME
        model.safetensors          the weights (a tied lm_head is not stored)   WEIGHTS_NAME
        tokenizer.json, ...        the tokenizer it was trained with            tokenizer.TOKENIZER_FILES
    ADAPTER/                       a LoRA adapter checkpoint (`train.lora.save_adapter`)
        adapter_config.json        rank, alpha, targets and "base": the model it adapts
        adapter.safetensors        <linear>.lora.A [r, in] and <linear>.lora.B [out, r]
        tokenizer.json, ...
    RUN_DIR/                       one training run (`minimind train STAGE --out RUN_DIR`)
        train_config.json          the stage and its options
        metrics.jsonl              one JSON record per logged step
        tokenizer/                 the tokenizer the run trains with
        checkpoints/
            step-0000100/          a CHECKPOINT (or an ADAPTER, for LoRA) plus the trainer state:
                trainer_state.pt   optimizer, grad-scaler and RNG tensors        STATE_PT
                trainer_state.json step, tokens, loader positions, val loss      STATE_JSON (written last)
            latest                 text file naming the newest complete step folder
            best                   text file naming the one with the lowest val loss
    HF_FOLDER/                     a Hugging Face transformers folder (not ours)
        config.json                a JSON object with "model_type"; no model_config.json beside it
        *.safetensors (+ index)    read by `checkpoint.read_hf_weights` or the importer's own reader
        tokenizer.json, ...

Contract:
- Wherever a model, an adapter or a trainer state is asked for, a run directory means the folder
  its `checkpoints/latest` names: `resolve_checkpoint`, `adapter_folder`, `latest_checkpoint`.
  A `latest` that is empty, unreadable, names no plain folder beside it, or names a folder that
  is not complete (no model_config.json / adapter_config.json / trainer_state.json) is a
  one-line `CheckpointError` naming the file.
- `is_hf_folder(path)` is the one test for "a Hugging Face folder": a folder whose config.json is
  a JSON object with "model_type" and which is not one of ours (no model_config.json).
- Foreign folders are read by importers that *register* here (`register_importer`), so this
  module and `checkpoint` import no converter: `minimind.interop` registers itself as the reader
  of any model_type, `minimind.upstream` for "minimind"; `importer_for(folder)` picks one.
- The tokenizer of a model sits beside its weights: `tokenizer_beside(path)` finds it (None when
  the folder has none), `require_tokenizer(folder, hint)` raises a UserError when it is absent.
- `read_json(path, what)` reads the layout's small JSON files (adapter config, trainer state,
  upstream config.json): a missing, unreadable or non-object file is a CheckpointError naming it.

Only the standard library and `tokenizer.TOKENIZER_FILES` are imported: every layer may use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import UserError
from .tokenizer import TOKENIZER_FILES, TOKENIZER_JSON

CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.safetensors"
HF_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
STATE_PT = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"
RUN_TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"

# The loaders of foreign folders: model_type -> load(folder) -> MiniMindLM, with the key None for
# "any other model_type". Filled by the converter modules when they are imported (see the module
# contract); the one registry in the package, so the layer below them can read their formats.
_IMPORTERS: dict[str | None, Callable[[Path], Any]] = {}


class CheckpointError(UserError):
    """A path is not a loadable checkpoint; the message says what was expected there."""


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from one of the layout's files, or a CheckpointError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"{path}: cannot read {what} ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


# -- run directories -------------------------------------------------------------------------


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def has_checkpoint(run_dir: str | Path) -> bool:
    """True if a run directory has saved a checkpoint (its `checkpoints/latest` exists)."""
    return (checkpoints_dir(run_dir) / LATEST).is_file()


def read_pointer(run_dir: str | Path, pointer: str = LATEST) -> Path | None:
    """The folder `checkpoints/<pointer>` names, or None when the run has no such file yet."""
    file = checkpoints_dir(run_dir) / pointer
    if not file.is_file():
        return None
    try:
        name = file.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as err:  # ValueError: not UTF-8
        raise CheckpointError(f"{file}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if not name or Path(name).name != name or name in (".", ".."):
        raise CheckpointError(f"{file} should name a checkpoint folder beside it, but holds {name!r:.60}")
    return file.parent / name


def _latest_with(run_dir: str | Path, marker: str, what: str) -> Path | None:
    """`read_pointer(run_dir)`, checked to hold `marker` (what makes that kind of folder complete)."""
    target = read_pointer(run_dir)
    if target is not None and not (target / marker).is_file():
        raise CheckpointError(f"{checkpoints_dir(run_dir) / LATEST} names {target.name}, which is not a "
                              f"complete {what}")
    return target


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The trainer checkpoint `checkpoints/latest` names (what --resume continues), or None."""
    return _latest_with(run_dir, STATE_JSON, "trainer checkpoint")


def run_dir_of(folder: str | Path) -> Path | None:
    """The run directory a checkpoint folder belongs to, or None for a stand-alone folder."""
    folder = Path(folder)
    return folder.parent.parent if folder.parent.name == CHECKPOINTS else None


# -- model checkpoints and Hugging Face folders ----------------------------------------------


def resolve_checkpoint(path: str | Path) -> Path:
    """Map a run directory to its latest checkpoint folder; return checkpoint folders unchanged."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if (p / CONFIG_NAME).is_file():
        return p
    target = _latest_with(p, CONFIG_NAME, "checkpoint")
    if target is None:
        raise CheckpointError(f"{p}: not a MiniMind checkpoint (no {CONFIG_NAME}) nor a run directory "
                              f"(no {CHECKPOINTS}/{LATEST})")
    return target


def hf_config(folder: str | Path) -> dict[str, Any] | None:
    """The config.json of a Hugging Face folder as a dict, or None if `folder` is not one."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / CONFIG_NAME).is_file():
        return None
    try:
        data = json.loads((folder / HF_CONFIG).read_text(encoding="utf-8"))
    except (ValueError, OSError):  # no file, bad JSON or bad UTF-8: not a folder we can read as HF
        return None
    return data if isinstance(data, dict) and "model_type" in data else None


def is_hf_folder(path: str | Path) -> bool:
    return hf_config(path) is not None


def model_folder(path: str | Path) -> Path:
    """The folder a model is read from: a Hugging Face folder as it is, else `resolve_checkpoint`."""
    return Path(path) if is_hf_folder(path) else resolve_checkpoint(path)


def register_importer(load: Callable[[Path], Any], model_types: Iterable[str] | None = None) -> None:
    """Make `load(folder)` the reader of Hugging Face folders of these model_types (None: any other)."""
    for key in (None,) if model_types is None else model_types:
        _IMPORTERS[key] = load


def importer_for(folder: str | Path) -> Callable[[Path], Any]:
    """The registered reader for a Hugging Face folder, or a CheckpointError naming its model_type."""
    config = hf_config(folder)
    if config is None:
        raise CheckpointError(f"{folder}: not a Hugging Face folder (no {HF_CONFIG} with a model_type)")
    load = _IMPORTERS.get(config["model_type"], _IMPORTERS.get(None))
    if load is None:
        raise CheckpointError(f"{folder}: no reader for Hugging Face model_type {config['model_type']!r} is "
                              f"loaded (minimind.load_model registers them)")
    return load


# -- LoRA adapters ---------------------------------------------------------------------------


def adapter_folder(path: str | Path) -> Path:
    """An adapter folder, or the one a LoRA run directory's `latest` names; else a UserError."""
    p = Path(path)
    if not (p / ADAPTER_CONFIG).is_file():
        p = _latest_with(p, ADAPTER_CONFIG, "LoRA adapter checkpoint") or p
    if not (p / ADAPTER_CONFIG).is_file() or not (p / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{path}: not a LoRA adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    return p


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """adapter_config.json of an adapter folder (or LoRA run directory) as a dict."""
    return read_json(adapter_folder(folder) / ADAPTER_CONFIG, "an adapter config")


def adapter_base(folder: str | Path) -> Path:
    """The model an adapter was trained on (its config's "base"), or a CheckpointError."""
    base = read_adapter_config(folder).get("base")
    if not isinstance(base, str) or not base:
        raise CheckpointError(f"{adapter_folder(folder) / ADAPTER_CONFIG}: no \"base\" model recorded; "
                              f"name the base model explicitly")
    return Path(base)


# -- tokenizers ------------------------------------------------------------------------------


def tokenizer_files(folder: str | Path) -> list[Path]:
    """The tokenizer files present in `folder` (any of tokenizer.TOKENIZER_FILES)."""
    return [Path(folder) / name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()]


def has_tokenizer(folder: str | Path) -> bool:
    return (Path(folder) / TOKENIZER_JSON).is_file()


def tokenizer_beside(path: str | Path) -> Path | None:
    """The folder holding a model's tokenizer (beside its weights), or None when there is none."""
    folder = model_folder(path)
    return folder if has_tokenizer(folder) else None


def require_tokenizer(folder: str | Path, hint: str) -> Path:
    """`folder` if it holds a tokenizer, else a UserError: "<folder>: no tokenizer.json there (<hint>)"."""
    if not has_tokenizer(folder):
        raise UserError(f"{folder}: no {TOKENIZER_JSON} there ({hint})")
    return Path(folder)
