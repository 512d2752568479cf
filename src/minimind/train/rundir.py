"""The run directory's own files, apart from checkpoints and metrics records.

Contract:
- `check_saved_config(run_dir, stage_name, cfg)`: on `--resume`, refuses a run directory of
  another stage and notes which options changed (the run will then not repeat exactly).
- `write_run_files(run_dir, stage_name, cfg, tokenizer, step)`: train_config.json (atomically),
  a copy of the tokenizer, and metrics.jsonl cut back to `step` (a fresh start drops records of
  an earlier attempt; a resume those past its step). The trainer calls it only once setup has
  fully succeeded, so a refused run changes nothing on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write, copy_tokenizer
from ..errors import UserError
from ..locator import METRICS, RUN_TOKENIZER, TRAIN_CONFIG
from .config import TrainConfig
from .metrics import truncate_metrics


def _config_record(stage_name: str, cfg: TrainConfig) -> dict[str, Any]:
    return {"stage": stage_name, **cfg.to_dict()}


def check_saved_config(run_dir: Path, stage_name: str, cfg: TrainConfig) -> None:
    saved = run_dir / TRAIN_CONFIG
    if not (cfg.resume and saved.is_file()):
        return
    old = json.loads(saved.read_text())
    new = _config_record(stage_name, cfg)
    changed = sorted(k for k in new if k != "resume" and old.get(k) != new[k])
    if old.get("stage") != stage_name:
        raise UserError(f"{saved}: this run was a {old.get('stage')!r} run, not {stage_name!r}")
    if changed:
        print(f"note: resuming with changed options: {', '.join(changed)} (the run will not repeat exactly)")


def write_run_files(run_dir: Path, stage_name: str, cfg: TrainConfig, tokenizer: Any, step: int) -> None:
    text = json.dumps(_config_record(stage_name, cfg), indent=2) + "\n"
    atomic_write(run_dir / TRAIN_CONFIG, lambda p: p.write_text(text))
    if tokenizer is not None:
        (run_dir / RUN_TOKENIZER).mkdir(exist_ok=True)
        copy_tokenizer(tokenizer.path, run_dir / RUN_TOKENIZER)
    truncate_metrics(run_dir / METRICS, step)
