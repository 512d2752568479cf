"""What a run measures besides its training loss: held-out loss and sample generations.

Contract: `Evaluator(stage, ctx, dist)` is built by the Trainer before step 1 and checks there
everything that could otherwise fail only after training:
- the held-out batches are opened (a split too small for the world size raises when it is opened,
  see `minimind.data.loader`); if any rank cannot open them, evaluation is off for the whole run,
  with one warning;
- the sample prompts are encoded and those that leave no room in the model's context dropped
  (warning), and the sampling settings validated.
Then `loss(model)` is the mean per-token loss over `eval_batches` held-out batches (the same ones
every time; all ranks take part), and `samples(model, step)` the generations of rank 0 (seeded
by the step, through the inference engine, without touching the training RNG streams).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from . import distributed as D
from .stages.base import Stage, TrainContext

SAMPLING = dict(temperature=0.7, top_k=40)


class Evaluator:
    def __init__(self, stage: Stage, ctx: TrainContext, dist: D.Dist) -> None:
        self.stage, self.ctx, self.dist, self.cfg = stage, ctx, dist, ctx.config
        self.val, self.val_start = self._open_val()
        self.prompts = self._sample_prompts()

    def _open_val(self) -> tuple[Any, Any]:
        if self.cfg.eval_batches <= 0:
            return None, None
        val, start, reason = None, None, None
        try:
            val = self.stage.batches(self.ctx, "val")
            start = val.state_dict()
        except UserError as err:
            reason = str(err)
        reasons = [r for r in D.all_gather_objects(reason, self.dist) if r]
        if reasons:
            if self.dist.is_main:
                print(f"warning: no evaluation in this run: {reasons[0]} (add data, or pass --eval-batches 0)")
            return None, None
        return val, start

    def _sample_prompts(self) -> list[list[int]]:
        cfg, tok = self.cfg, self.ctx.tokenizer
        if tok is None or cfg.num_samples <= 0 or cfg.fsdp or not self.dist.is_main:
            return []
        from ..infer import SamplingParams

        SamplingParams(max_new_tokens=cfg.sample_tokens, seed=cfg.seed, **SAMPLING).validate()
        prompts = self.stage.sample_prompts(self.ctx)[: cfg.num_samples]
        room = self.ctx.model.config.max_seq_len
        fitting = [p for p in prompts if 0 < len(p) < room]
        if len(fitting) < len(prompts):
            print(f"warning: {len(prompts) - len(fitting)} sample prompt(s) leave no room in the model's context "
                  f"of {room} tokens; they are not sampled")
        return fitting

    @torch.no_grad()
    def loss(self, model: torch.nn.Module) -> float | None:
        """Mean per-token held-out loss, or None when evaluation is off."""
        if self.val is None:
            return None
        self.val.load_state_dict(self.val_start)
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)
        it = iter(self.val)
        for _ in range(self.cfg.eval_batches):
            batch = next(it)
            w = self.stage.batch_weight(batch)
            with self.ctx.autocast():
                loss, _ = self.stage.loss(model, batch, self.ctx)
            total += torch.stack([loss.detach().double() * w, torch.tensor(w, dtype=torch.float64, device=total.device)])
        model.train()
        D.all_reduce_sum(total, self.dist)
        return float(total[0] / total[1]) if total[1] > 0 else None

    @torch.no_grad()
    def samples(self, model: torch.nn.Module, step: int) -> list[dict[str, Any]]:
        """Metrics records {"step", "split": "sample", "prompt", "completion"}; [] off rank 0."""
        tok, prompts = self.ctx.tokenizer, self.prompts
        if not prompts:
            return []
        from ..infer import Engine, SamplingParams

        # The inference engine (batched, KV-cached) on the unwrapped model; seeded by the step so
        # samples are reproducible and the training RNG streams are never touched.
        engine = Engine(model, tok, max_batch_size=len(prompts))
        params = SamplingParams(max_new_tokens=self.cfg.sample_tokens, seed=self.cfg.seed * 1_000_003 + step, **SAMPLING)
        with self.ctx.autocast():
            seqs = engine.generate(prompts, params)
        model.train()
        return [{"step": step, "split": "sample", "prompt": tok.decode(p, skip_special_tokens=True).strip(),
                 "completion": seq.text} for p, seq in zip(prompts, seqs)]
