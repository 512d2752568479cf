"""Reasoning SFT (`minimind reason`): think-then-answer, with a thinking on/off switch.

SFT on conversations whose assistant turns carry `reasoning_content` (rendered as
`<think>\\nreasoning\\n</think>\\n\\nanswer`). Two things differ from plain SFT:

1. Thinking on/off mix (Qwen3-style switch). The chat template's switch is the generation
   prompt: thinking on ends it with an open `<think>\\n`, thinking off with an empty block
   `<think>\\n\\n</think>\\n\\n`. To teach the "off" mode, a random `--no-think-ratio` of the rows
   have every think block emptied, so after an empty block the model learns to answer at once.
   This is done on token ids: `<think>` and `</think>` are added tokens, so the text between them
   is tokenised on its own, and replacing those tokens with the ids of "\\n\\n" gives exactly
   what the renderer writes for an empty block. It therefore works on prepared shards too.
   The choice is seeded by `step_seed(seed, batch counter)`; the resume state carries the counter.
2. Optional extra weight (`--tag-weight`) on the label tokens `<think>` and `</think>`: the few
   tokens that decide the format get more say in the loss. The loss stays normalised by the
   number of label tokens, so grad accumulation is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...config import IGNORE_INDEX
from ...errors import UserError
from ...tokenizer import THINK_END, THINK_START
from ..config import knob
from .base import DerivedBatches, TrainContext, forward_with_aux, step_seed, with_defaults
from .sft import SFTConfig, SFTStage


@dataclass
@with_defaults(thinking=True)
class ReasonConfig(SFTConfig):
    no_think_ratio: float = knob(0.3, "fraction of rows trained in thinking-off mode (think blocks emptied)")
    tag_weight: float = knob(1.0, "loss weight of the <think> / </think> label tokens (1 = plain SFT)")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.no_think_ratio <= 1:
            raise UserError(f"--no-think-ratio must be in [0, 1], got {self.no_think_ratio}")
        if self.tag_weight <= 0:
            raise UserError(f"--tag-weight must be positive, got {self.tag_weight}")


def empty_think_blocks(ids: list[int], labels: list[int], start: int, end: int, empty: list[int]) -> tuple[list[int], list[int]]:
    """Replace the tokens inside every complete <think>...</think> span by `empty` (ids of "\\n\\n").

    Labels of the replacement copy the label state of the span (trained or not). A block cut off
    by truncation (no closing tag) is left as it is.
    """
    out_ids, out_labels, i = [], [], 0
    while i < len(ids):
        out_ids.append(ids[i])
        out_labels.append(labels[i])
        if ids[i] == start and end in ids[i + 1 :]:
            j = ids.index(end, i + 1)
            trained = labels[i + 1] != IGNORE_INDEX if i + 1 < j else labels[i] != IGNORE_INDEX
            out_ids.extend(empty)
            out_labels.extend(empty if trained else [IGNORE_INDEX] * len(empty))
            i = j
            continue
        i += 1
    return out_ids, out_labels


class MixedThinking(DerivedBatches):
    """Wraps the sft loader: empties the think blocks of a seeded random subset of rows."""

    def __init__(self, loader, tokenizer, ratio: float, seed: int) -> None:
        super().__init__(loader)
        self.ratio, self.seed = ratio, seed
        self.start, self.end = tokenizer.token_to_id(THINK_START), tokenizer.token_to_id(THINK_END)
        self.empty, self.pad = tokenizer.encode("\n\n"), tokenizer.pad_id
        if self.start is None or self.end is None:
            raise UserError(f"{tokenizer.path}: the tokenizer has no {THINK_START}/{THINK_END} tokens; "
                            "reasoning training needs them")

    def make(self, batch: dict[str, Any]) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(step_seed(self.seed, self.count))
        off = (torch.rand(batch["input_ids"].shape[0], generator=gen) < self.ratio).tolist()
        if not any(off):
            return batch
        rows = []
        for k, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist())):
            rows.append(empty_think_blocks(ids, labels, self.start, self.end, self.empty) if off[k] else (ids, labels))
        # Rows only get shorter, so the old width still fits them all; pad the tails again.
        T = batch["input_ids"].shape[1]
        ids = torch.full((len(rows), T), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for k, (i, lab) in enumerate(rows):
            ids[k, : len(i)], labels[k, : len(lab)] = torch.tensor(i), torch.tensor(lab)
        return {"input_ids": ids, "labels": labels}


class ReasonStage(SFTStage):
    name = "reason"
    help = "reasoning SFT: <think> then answer, mixing thinking on/off rows; needs --init"
    order = 25
    config_class = ReasonConfig

    def batches(self, ctx: TrainContext, split: str = "train") -> MixedThinking:
        ratio = self.config.no_think_ratio if split == "train" else 0.0  # evaluate the thinking mode
        return MixedThinking(iter(super().batches(ctx, split)), ctx.tokenizer, ratio, self.config.seed)

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.config.tag_weight == 1.0:
            return super().loss(model, batch, ctx)
        # Token weights are built on the CPU copy of the labels and sent along: no device sync.
        labels = batch["labels"][:, 1:]
        tok = ctx.tokenizer
        tags = torch.tensor([tok.token_to_id(THINK_START), tok.token_to_id(THINK_END)])
        real = labels != IGNORE_INDEX
        weight = (torch.where(torch.isin(labels, tags), self.config.tag_weight, 1.0) * real).to(ctx.device, non_blocking=True)
        n = real.sum().clamp(min=1).to(ctx.device, non_blocking=True)
        f = forward_with_aux(model, batch["input_ids"], ctx, labels=batch["labels"].to(ctx.device, non_blocking=True))
        ce = -f.out.token_logps  # 0 where the label is IGNORE_INDEX
        return (ce * weight).sum() / n + f.aux, {"ce": ce.detach().sum() / n, **f.metrics}


STAGE = ReasonStage
