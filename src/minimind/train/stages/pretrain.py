"""Pretraining: next-token prediction on packed raw text (`minimind pretrain`).

Everything is the Stage default (all parameters, the `pretrain` loader that packs documents into
full windows separated by EOS, mean cross-entropy); this module only adds sample prompts.
"""

from __future__ import annotations

from .base import Stage, TrainContext

PROMPTS = ("The meaning of life is", "人工智能是", "Once upon a time", "中国的首都")


class PretrainStage(Stage):
    name = "pretrain"
    help = "pretrain a model from scratch (or continue from --init) on raw text"
    order = 10
    data_kind = "pretrain"

    def sample_prompts(self, ctx: TrainContext) -> list[list[int]]:
        return [ctx.tokenizer.encode(p) for p in PROMPTS]


STAGE = PretrainStage
