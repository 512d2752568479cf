"""Supervised fine-tuning on conversations (`minimind sft`).

The `sft` loader renders each conversation with the ChatML template and sets labels to
IGNORE_INDEX (-100) everywhere except assistant content and its closing <|im_end|>, so the
default loss (mean cross-entropy over label tokens) trains only on what the assistant says. This
module adds the SFT defaults (lower LR, fine-tuning needs --init) and chat-formatted sample
prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...chat import render_prompt
from ..config import TrainConfig, knob
from .base import Stage, TrainContext, with_defaults

QUESTIONS = ("你好，你是谁？", "Who are you?", "What is 2 + 3?", "请介绍一下你自己。")


@dataclass
@with_defaults(lr=5e-5)
class SFTConfig(TrainConfig):
    thinking: bool = knob(False, "sample prompts open a <think> block (reasoning models)")


class SFTStage(Stage):
    name = "sft"
    help = "supervised fine-tuning on conversations (loss on assistant tokens only); needs --init"
    order = 20
    config_class = SFTConfig
    data_kind = "sft"
    requires_init = True

    def sample_prompts(self, ctx: TrainContext) -> list[list[int]]:
        thinking = getattr(self.config, "thinking", False)
        return [render_prompt(ctx.tokenizer, [{"role": "user", "content": q}], thinking=thinking) for q in QUESTIONS]


STAGE = SFTStage
