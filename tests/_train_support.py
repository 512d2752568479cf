"""Shared helpers for the training tests: a tiny model and a synthetic data stream.

`SyntheticBatches` obeys the `minimind.data.make_loader` contract (endless, state_dict /
load_state_dict, rank/world_size sharding, split="val") without any tokenizer or files, so the
engine is tested on its own. Row n of the global stream is a pure function of (seed, n): an
arithmetic progression mod the vocabulary (learnable), with the first few labels masked (-100)
by a row-dependent amount, like SFT prompts. Rank r of w takes micro-batch k*w + r, so w ranks
with batch b see exactly the micro-batches of one process with batch b and grad_accum w.
"""

from __future__ import annotations

import torch

from minimind.config import ModelConfig
from minimind.train.config import TrainConfig
from minimind.train.stages.base import Stage, step_seed

VOCAB = 64


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def synthetic_row(seed: int, n: int, seq_len: int, masked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step_seed(seed, n))
    start, stride = torch.randint(0, VOCAB, (2,), generator=g).tolist()
    stride = stride % 5 + 1
    ids = (start + stride * torch.arange(seq_len)) % VOCAB
    labels = ids.clone()
    if masked:
        labels[: int(torch.randint(1, seq_len // 2, (1,), generator=g))] = -100
    return ids, labels


class SyntheticBatches:
    def __init__(self, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 split: str = "train", masked: bool = False) -> None:
        self.seq_len, self.batch_size, self.rank, self.world_size = seq_len, batch_size, rank, world_size
        self.seed = seed + (7919 if split == "val" else 0)
        self.masked, self.index, self.epoch = masked, 0, 0

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return 1000

    def __next__(self) -> dict:
        k = self.index * self.world_size + self.rank
        rows = [synthetic_row(self.seed, k * self.batch_size + i, self.seq_len, self.masked) for i in range(self.batch_size)]
        self.index += 1
        return {"input_ids": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}

    def state_dict(self) -> dict:
        return {"index": self.index, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.epoch = state["index"], state["epoch"]


class SyntheticStage(Stage):
    """The default causal-LM stage, fed by SyntheticBatches."""

    name = "synthetic"
    masked = False

    def batches(self, ctx, split="train"):
        cfg = ctx.config
        return SyntheticBatches(cfg.seq_len, cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size, split, self.masked)


class MaskedStage(SyntheticStage):
    masked = True


def train_config(out, **kw) -> TrainConfig:
    base = dict(out=str(out), seq_len=16, batch_size=4, max_steps=6, lr=3e-3, progress=False, eval_batches=2,
                num_samples=0)
    base.update(kw)
    return TrainConfig(**base)


def run(stage_cls, out, model_kw=None, **kw):
    """Train a fresh tiny model (seeded init) and return (trainer, result)."""
    from minimind.model import MiniMindLM
    from minimind.train.trainer import Trainer

    cfg = train_config(out, **kw)
    torch.manual_seed(cfg.seed)
    model = MiniMindLM(tiny_config(**(model_kw or {})))
    trainer = Trainer(stage_cls(cfg), model=model, tokenizer=None)
    return trainer, trainer.fit()
