"""Knowledge distillation (`minimind distill`): a student learns a teacher's token distributions.

White-box (the default): on SFT conversations, the loss is
    alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)
over assistant tokens (`losses.distill_loss`), so the student learns from the teacher's whole
distribution ("dark knowledge": which wrong tokens are almost right), not only the one label.
The teacher may be any size or kind (dense, MoE, a `base` checkpoint) as long as its vocabulary is
the student's.

What this stage supplies to the one loop:
(a) parameters: the whole student. `--init` is a checkpoint OR a preset name (`--init tiny`):
    a preset starts the student from scratch, with the teacher's tokenizer;
(c) loss: student forward (trained, plus its MoE balance loss) + teacher forward (no_grad) on
    the same batch, both with labels so they return final hidden states, not [B, T, V] logits;
    the loss turns the supervised rows into logits chunk by chunk (`losses.distill_loss_from_hidden`);
(d) extra models: the frozen teacher from `--teacher`.

Black-box distillation (SFT on teacher-written answers) needs no stage of its own:
`generate_teacher_answers` writes the teacher's replies as SFT conversations with the inference
engine, and `minimind sft` trains on that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...chat import render_prompt, split_reasoning
from ...checkpoint import atomic_write
from ...config import PRESETS
from ...data.formats import iter_examples
from ...devices import pick_device
from ...errors import UserError
from ...infer import SamplingParams
from ...infer.loading import load_engine
from ...locator import tokenizer_beside
from ...tokenizer import THINK_START
from ..config import knob
from ..losses import distill_loss_from_hidden
from .base import TrainContext, forward_with_aux, step_seed, with_defaults
from .dpo import load_frozen
from .sft import SFTConfig, SFTStage


@dataclass
@with_defaults(lr=1e-4)
class DistillConfig(SFTConfig):
    teacher: str | None = knob(None, "teacher checkpoint folder, run directory or HF folder (required)")
    temperature: float = knob(1.5, "softening temperature T of both distributions")
    alpha: float = knob(0.5, "weight of the KL-to-teacher term; 1 - alpha goes to the label cross-entropy")
    generate: str | None = knob(None, "black-box distillation: write the teacher's answers to the prompts "
                                      "of --data to this JSONL file instead of training (then `minimind sft` on it)")
    max_new_tokens: int = knob(256, "with --generate: token budget of each teacher answer")
    thinking: bool = knob(False, "with --generate: let the teacher think first (kept as reasoning_content)")

    def __post_init__(self) -> None:
        # `--init tiny`: a preset name that is not a path means "a fresh student of that preset".
        if self.init and self.init in PRESETS and not Path(self.init).exists():
            self.preset, self.init = self.init, None
            if self.tokenizer is None and self.teacher:
                self.tokenizer = _teacher_tokenizer(self.teacher)

    def validate(self) -> None:
        if not self.teacher:
            raise UserError("`minimind distill` needs --teacher CKPT (the model to learn from)")
        if self.generate:  # a data-writing job: no training budget or run directory needed
            if not self.data:
                raise UserError("`minimind distill --generate` needs --data with the prompts to answer")
            return
        super().validate()
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")


def _teacher_tokenizer(teacher: str) -> str | None:
    """The teacher's tokenizer folder, so a from-scratch student shares its vocabulary."""
    if not Path(teacher).exists():
        return None  # validate/extra_models report the missing teacher with a clear message
    folder = tokenizer_beside(teacher)
    return str(folder) if folder is not None else None


class DistillStage(SFTStage):
    name = "distill"
    help = "white-box distillation: KL to a --teacher's token distributions mixed with CE (--init CKPT or preset)"
    order = 50
    config_class = DistillConfig
    requires_init = False

    def run_instead_of_training(self) -> bool:
        cfg = self.config
        if not cfg.generate:
            return False
        cfg.validate()
        n = generate_teacher_answers(cfg.teacher, cfg.data, cfg.generate, max_new_tokens=cfg.max_new_tokens,
                                     thinking=cfg.thinking, batch_size=cfg.batch_size, seed=cfg.seed,
                                     device=str(pick_device(cfg.device)))
        print(f"wrote {n} teacher-answered conversations to {cfg.generate}; train on them with `minimind sft`")
        return True

    def extra_models(self, ctx: TrainContext) -> dict[str, nn.Module]:
        teacher = load_frozen(self.config.teacher)
        student_vocab = ctx.model.config.vocab_size
        if teacher.config.vocab_size != student_vocab:
            raise UserError(
                f"--teacher {self.config.teacher} has a vocabulary of {teacher.config.vocab_size} tokens but the student "
                f"has {student_vocab}; distillation compares distributions token by token, so both must use the same "
                "tokenizer (start the student from a preset with --init PRESET to inherit the teacher's)")
        return {"teacher": teacher}

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        ids = batch["input_ids"].to(ctx.device, non_blocking=True)
        labels = batch["labels"].to(ctx.device, non_blocking=True)
        f = forward_with_aux(model, ids, ctx, labels=labels)
        teacher = ctx.extra["teacher"]
        with torch.no_grad():
            teacher_hidden = teacher(ids, labels=labels).hidden
        # ctx.model: the unwrapped student (model may be a DDP/compiled wrapper); under FSDP2 the
        # root's head weight stays gathered after the forward, so reading it here is safe.
        loss, metrics = distill_loss_from_hidden(f.out.hidden, ctx.model.head_operands, teacher_hidden,
                                                 teacher.head_operands, labels, self.config.temperature,
                                                 self.config.alpha)
        return loss + f.aux, {**metrics, **f.metrics}


STAGE = DistillStage


def generate_teacher_answers(teacher: str, data: list[str], out: str | Path, *, max_new_tokens: int = 256,
                             temperature: float = 0.7, thinking: bool = False, batch_size: int = 16,
                             seed: int = 0, device: str = "cpu") -> int:
    """Black-box distillation data: the teacher answers every prompt of `data`, written as SFT JSONL.

    `data` holds RL prompts or SFT conversations (a final assistant turn is dropped and replaced
    by the teacher's). Generation uses the inference engine (batched, KV-cached); the reply's think
    block, if any, becomes `reasoning_content`. Returns the number of conversations written.
    """
    engine = load_engine(teacher, max_batch_size=batch_size, device=device)
    examples = list(iter_examples("rl", list(data)))
    prompts = [render_prompt(engine.tokenizer, ex["messages"], tools=ex["tools"], thinking=thinking) for ex in examples]
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=step_seed(seed, i))
              for i in range(len(prompts))]
    seqs = engine.generate(prompts, params)
    lines = []
    for ex, seq in zip(examples, seqs):
        reasoning, answer = split_reasoning((f"{THINK_START}\n" if thinking else "") + seq.text)
        reply = {"role": "assistant", "content": answer}
        if thinking and reasoning is not None:
            reply["reasoning_content"] = reasoning
        lines.append(json.dumps({"conversations": ex["messages"] + [reply]}, ensure_ascii=False) + "\n")
    atomic_write(Path(out), lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
    return len(lines)
