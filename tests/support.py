"""Small helpers shared by test modules (imported directly: `from support import write_jsonl`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import torch

from minimind.checkpoint import save_model
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.model import MiniMindLM


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON object a line (UTF-8, Chinese kept readable); a str record is written as is."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port nobody listens on now, for a test's torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_process_group_env(rank: int, world: int, port: int) -> None:
    """What torchrun would set for this rank; one thread each, so two ranks share two cores."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def cli_rank(rank: int, port: int, argv: list[str]) -> None:
    """One rank of a 2-process `minimind ...` run (torch.multiprocessing.spawn's target)."""
    join_process_group_env(rank, 2, port)
    assert main(argv) == 0


def tiny_model_config(context: int, **kw) -> ModelConfig:
    """A 2-layer, 64-wide model over a 101-token vocabulary: every code path, in milliseconds.
    `context` is the default max_seq_len; any field in `kw` (max_seq_len included) wins."""
    base = dict(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=context)
    return ModelConfig(**{**base, **kw})


def model_families(yarn_original: int) -> dict[str, dict]:
    """The architecture variants every model test runs over (YaRN stretching `yarn_original` 4x)."""
    return {
        "dense": {},
        "qk_norm": dict(qk_norm=True),
        "moe": dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=32),
        "yarn": dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": yarn_original}),
    }


def save_tiny_policy(folder: Path, tok, max_seq_len: int) -> str:
    """A seeded 2-layer, 32-wide model with the shipped tokenizer, saved as an RL stage's --init."""
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=max_seq_len)
    torch.manual_seed(0)
    save_model(MiniMindLM(cfg), folder, tokenizer_dir=tok.path)
    return str(folder)


def train_records(run: Path) -> list[dict]:
    """The training lines of a run's metrics.jsonl."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def killed_copy(run: Path, dest: Path, step: int) -> Path:
    """A copy of finished run `run` as if it had been killed right after saving `step`: later
    checkpoints are gone and `latest` names that step (what `--resume` then finds)."""
    shutil.copytree(run, dest)
    keep = f"step-{step:07d}"
    for folder in (dest / "checkpoints").glob("step-*"):
        if folder.name > keep:
            shutil.rmtree(folder)
    (dest / "checkpoints" / "latest").write_text(keep + "\n")
    return dest
