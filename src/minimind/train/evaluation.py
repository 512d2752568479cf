"""What a run measures besides its training loss: held-out loss, an eval suite, sample generations.

Contract: `Evaluator(stage, ctx, dist)` is built by the Trainer before step 1 and checks there
everything that could otherwise fail only after training:
- the held-out batches are opened (a split too small for the world size raises when it is opened,
  see `minimind.data.loader`); if any rank cannot open them, evaluation is off for the whole run,
  with one warning;
- the sample prompts are encoded and those that leave no room in the model's context dropped
  (warning), and the sampling settings validated.
- `--eval-suite` (`minimind.eval`): the embedded demo suites are written once, to a temporary folder
  kept for the run, or `--eval-data` is used; either is read and checked now (a malformed record is
  `file:line`, before step 1).
Then `loss(model)` is the mean per-token loss over `eval_batches` held-out batches (the same ones
every time; all ranks take part), and `samples(model, step)` the generations of rank 0 (seeded
by the step, through the inference engine, without touching the training RNG streams), followed
by rank 0's eval-suite record: {"step", "split": "eval", "eval/<task>_<metric>": value, ...}
(`minimind.eval.report.flat_metrics`). The suite record rides on `samples` because the trainer
logs (metrics.jsonl, TensorBoard, wandb) and prints whatever that returns, so it also carries
"prompt" ("eval <suite>") and "completion" (the headline figures) for the printed line.
Evaluation leaves the model in train() mode and the RNG streams as it found them, so a resumed
run equals an uninterrupted one.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..data.demo import write_demo_eval
from ..errors import UserError
from ..eval.report import HEADLINE, flat_metrics
from ..eval.run import DEMO_MAX_NEW_TOKENS, DEMO_TASKS, Settings, read_task, run_task
from ..eval.scorer import Scorer
from ..infer import Engine, SamplingParams
from . import checkpointing as ckpt
from . import distributed as D
from .stages.base import Stage, TrainContext, step_seed

SAMPLING = dict(temperature=0.7, top_k=40)


class Evaluator:
    def __init__(self, stage: Stage, ctx: TrainContext, dist: D.Dist) -> None:
        self.stage, self.ctx, self.dist, self.cfg = stage, ctx, dist, ctx.config
        self.val, self.val_start = self._open_val()
        self.prompts = self._sample_prompts()
        self._suite_dir: tempfile.TemporaryDirectory | None = None  # the demo suites' files, for the run's life
        self.suite_settings = Settings(limit=self.cfg.eval_limit)
        self.suites = self._open_suites()

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

        SamplingParams(max_new_tokens=cfg.sample_tokens, seed=cfg.seed, **SAMPLING).validate()
        prompts = self.stage.sample_prompts(self.ctx)[: cfg.num_samples]
        room = self.ctx.model.config.max_seq_len
        fitting = [p for p in prompts if 0 < len(p) < room]
        if len(fitting) < len(prompts):
            print(f"warning: {len(prompts) - len(fitting)} sample prompt(s) leave no room in the model's context "
                  f"of {room} tokens; they are not sampled")
        return fitting

    def _open_suites(self) -> dict[str, tuple[str, Path]]:
        """{name: (task, path)} of --eval-suite, each read once here so a bad file fails before step 1."""
        cfg = self.cfg
        if not cfg.eval_suite:
            return {}
        if self.ctx.tokenizer is None or self.ctx.model is None:
            raise UserError("--eval-suite needs the run's model and tokenizer")
        if cfg.eval_data is not None:
            data = Path(cfg.eval_data)
            task = "ceval" if cfg.eval_suite == "mcq" and data.is_dir() else cfg.eval_suite  # C-Eval layout folder
            suites = {cfg.eval_suite: (task, data)}
        else:
            self._suite_dir = tempfile.TemporaryDirectory(prefix="minimind-eval-suite-")
            paths = write_demo_eval(self._suite_dir.name)
            names = list(DEMO_TASKS) if cfg.eval_suite == "demo" else [cfg.eval_suite]
            suites = {name: (DEMO_TASKS[name], paths[name]) for name in names}
            # The demo answers are one line: cap generation as `minimind eval` does for them.
            self.suite_settings = replace(self.suite_settings, max_new_tokens=DEMO_MAX_NEW_TOKENS)
        scorer = Scorer(self.ctx.model, self.ctx.tokenizer, self.suite_settings.batch_size)
        for task, path in suites.values():
            read_task(task, path, scorer, self.suite_settings)
        return suites

    @torch.no_grad()
    def suite(self, model: torch.nn.Module, step: int) -> list[dict[str, Any]]:
        """Rank 0's eval-suite record for this step ([] without --eval-suite or off rank 0)."""
        if not self.suites or not self.dist.is_main:
            return []

        rng = ckpt.rng_state(self.ctx.device)  # the scorer draws nothing, but make it a guarantee
        engine = Engine(model, self.ctx.tokenizer, max_batch_size=self.suite_settings.batch_size)
        try:
            with self.ctx.autocast():
                results = [dict(run_task(engine, task, path, self.suite_settings), task=name)
                           for name, (task, path) in self.suites.items()]
        finally:
            model.train()
            ckpt.set_rng_state(rng, self.ctx.device)
        headline = ", ".join(f"{r['task']} {HEADLINE.get(r['task'], 'accuracy')} "
                             f"{r[HEADLINE.get(r['task'], 'accuracy')]:.4f}" for r in results)
        return [{"step": step, "split": "eval", **flat_metrics({"results": results}),
                 "prompt": f"eval {self.cfg.eval_suite}", "completion": headline}]

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
        """Metrics records {"step", "split": "sample", "prompt", "completion"}, then the eval-suite
        record (see the module docstring); [] off rank 0."""
        return self._generations(model, step) + self.suite(model, step)

    def _generations(self, model: torch.nn.Module, step: int) -> list[dict[str, Any]]:
        tok, prompts = self.ctx.tokenizer, self.prompts
        if not prompts:
            return []

        # The inference engine (batched, KV-cached) on the unwrapped model; seeded by the step so
        # samples are reproducible and the training RNG streams are never touched.
        engine = Engine(model, tok, max_batch_size=len(prompts))
        params = SamplingParams(max_new_tokens=self.cfg.sample_tokens, seed=step_seed(self.cfg.seed, step), **SAMPLING)
        with self.ctx.autocast():
            seqs = engine.generate(prompts, params)
        model.train()
        return [{"step": step, "split": "sample", "prompt": tok.decode(p, skip_special_tokens=True).strip(),
                 "completion": seq.text} for p, seq in zip(prompts, seqs)]
