"""The one training loop. Every stage (pretrain, SFT, LoRA, DPO, distillation, GRPO) runs through it.

Contract: `Trainer(stage).fit()` trains `stage.config` to its budget and returns a `TrainResult`.
The loop knows nothing of any one stage: it asks the stage which parameters train, for batches,
for the loss of a batch and how to save weights (see `stages/base.py`). It owns everything else:

- model construction (`--init` checkpoint / HF folder, or a preset), device, seeds;
- AdamW + warmup/cosine LR, gradient accumulation, clipping, bf16/fp16 autocast (fp16 with a grad
  scaler on CUDA), optional torch.compile and activation checkpointing;
- DDP / FSDP2 under torchrun (only rank 0 logs and writes);
- periodic evaluation on the held-out split (loss, perplexity) and sample generations;
- atomic checkpoints with exact resume: weights, optimizer, scaler, RNG states and data-loader
  positions, so a killed run resumed with `--resume` repeats the uninterrupted run bit for bit (CPU);
- a NaN/inf loss stops the run (`TrainingError`) before the optimizer step, so the last checkpoint
  stays good.

Its parts live beside it: `step.py` (one optimizer step: micro-batches, backward, clip, update),
`snapshot.py` (what a checkpoint holds; resume; continuing a recipe phase), `state.py`
(model/optimizer state dicts for checkpoints), `rundir.py` (train_config.json, the tokenizer
copy), `checkpointing.py` (checkpoint folders, RNG states).

Phases (`train/phases.py`, `minimind pretrain --recipe`): `Trainer(stage, phase=Phase(name,
start_step, continue_from))` trains one phase of a multi-phase run in the same run directory:
the step count goes on from `start_step`, the LR schedule is the phase's own (step and total
counted from its start), every metrics record carries `"phase": name`, train records the realised
mixture proportions (`"mix"`, when the data is a `data.mixture.Mixture`), and the first step
continues from the previous phase's final checkpoint (`snapshot.continue_phase`).

Never losing finished work (docs/reliability.md):
- the run directory is locked (`runlock.RunLock`) for the whole run; leftovers of a killed save
  are cleaned under that lock;
- everything that could only fail late is checked before step 1: the config (`validate`), the
  held-out split (too small for this world size: evaluation is skipped with a warning), the sample
  prompts; nothing is written into the run directory (train_config.json, tokenizer, metrics
  truncation) until setup has fully succeeded, so a refused `--resume` changes nothing;
- a checkpoint is saved *before* the evaluation and samples of its step (its val loss is added
  afterwards), so nothing after the last training step can cost the final checkpoint; plots that
  fail are a warning.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import flops_per_token
from ..data.loader import Prefetcher
from ..data.mixture import realised_shares
from ..devices import training_dtype
from ..errors import UserError
from ..locator import has_checkpoint, latest_checkpoint, model_folder
from ..model import MiniMindLM
from ..model.cpu_linear import use_onednn_linears
from . import checkpointing as ckpt
from . import distributed as D
from . import snapshot
from .budget import WallClock, planned_steps
from .build import build_model, check_vocabulary, enable_activation_checkpointing, load_tokenizer_for
from .evaluation import Evaluator
from .metrics import MetricsLogger, Progress, check_optional_loggers, model_flops_utilization, peak_flops
from .optim import lr_at, make_optimizer, set_lr
from .plot import plot_run
from .rundir import check_saved_config, write_run_files
from .runlock import RunLock
from .stages.base import Stage, TrainContext
from .step import accumulate, update


def _host(value: Any) -> Any:
    """A logged value as a Python number (the host sync happens here, at logging time only)."""
    return float(value) if isinstance(value, torch.Tensor) else value


class TrainingError(UserError):
    """The run cannot continue (e.g. the loss became NaN); the message says what to try."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    checkpoint: Path | None
    losses: list[float]
    reused: bool = False  # recipes.run_stage found the run finished and trained nothing


@dataclass(frozen=True)
class Phase:
    """Where this training sits in a multi-phase run (module docstring); a plain run is `Phase()`."""

    name: str | None = None
    start_step: int = 0  # the run's step count when the phase begins
    continue_from: Path | None = None  # the previous phase's final checkpoint, for the phase's first step


class Trainer:
    def __init__(self, stage: Stage, *, model: MiniMindLM | None = None, tokenizer: Any = "auto",
                 clock: Callable[[], float] = time.monotonic, prefetch: bool | None = None,
                 phase: Phase = Phase()) -> None:
        """`model` / `tokenizer` override what the config would load (tests, notebooks);
        tokenizer=None trains without one (synthetic data; no tokenizer files are saved).
        `clock` measures wall time for --max-minutes (tests inject a fake one).
        `prefetch`: make batches on a background thread (None: on CUDA, where the GPU runs ahead
        of the host and the thread overlaps with it; on a CPU it would only compete for cores).
        `phase`: this run is one phase of a multi-phase recipe (module docstring)."""
        self.stage, self.cfg, self.phase = stage, stage.config, phase
        self._given_model, self._given_tokenizer, self._clock = model, tokenizer, clock
        self._prefetch = prefetch
        self.lock: RunLock | None = None

    # -- setup ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        cfg.validate()
        if not cfg.out:
            raise UserError("--out is required: the run directory for checkpoints and metrics")
        if self.stage.requires_init and not cfg.init and self._given_model is None:
            raise UserError(f"`minimind {self.stage.name}` needs --init CKPT (a checkpoint, run directory or HF folder)")
        self.dist = D.init_distributed(cfg.device)
        self.main = self.dist.is_main
        self.device = self.dist.device
        self.run_dir = Path(cfg.out)
        self.dtype = training_dtype(self.device, cfg.dtype)
        check_optional_loggers(cfg.tensorboard, cfg.wandb)
        self._claim_run_dir()

        init_path = None
        if cfg.init:
            init_path = model_folder(cfg.init)
        tokenizer = load_tokenizer_for(cfg, init_path) if self._given_tokenizer == "auto" else self._given_tokenizer
        self.ctx = TrainContext(config=cfg, device=self.device, rank=self.dist.rank,
                                world_size=self.dist.world_size, tokenizer=tokenizer, run_dir=self.run_dir,
                                init_path=init_path)
        self._build(init_path, tokenizer)
        self._position()
        if self.main:  # setup succeeded: only now touch the run directory's files
            write_run_files(self.run_dir, self.stage.name, self.cfg, tokenizer, self.step)

    def _position(self) -> None:
        """Data, evaluator, and where the run stands: fresh, resumed, or continuing the last phase."""
        cfg = self.cfg
        self.batches = self.stage.batches(self.ctx, "train")
        self.evaluator = Evaluator(self.stage, self.ctx, self.dist)  # checks what evaluation needs, before step 1
        self.step, self.tokens_seen, self.best_val = self.phase.start_step, 0, None
        if self.resume_from is not None:
            snapshot.restore(self, self.resume_from)
        elif self.phase.continue_from is not None:
            snapshot.continue_phase(self, self.phase.continue_from)
        elif cfg.resume and self.main:
            print(f"note: {self.run_dir} has no checkpoint yet; starting from step 0")
        self.total_steps = self.phase.start_step + planned_steps(cfg, self.batches, self.dist.world_size)
        if cfg.max_minutes and self.saved_total:  # a run shortened by the clock keeps its shorter schedule
            self.total_steps = min(self.total_steps, self.saved_total)

    def _claim_run_dir(self) -> None:
        """Lock the run directory, decide fresh start or resume, clean what a killed run left."""
        self.lock = RunLock(self.run_dir)
        self.on_main(self.lock.acquire)  # held until fit() returns; every rank fails if it is refused
        self.resume_from, self.saved_total = None, None
        # A phase that continues the previous one starts after that phase's checkpoint, not on it.
        if has_checkpoint(self.run_dir) and self.phase.continue_from is None:
            if not self.cfg.resume:
                raise UserError(f"{self.run_dir} already holds a run; add --resume to continue it, or choose another --out")
            self.resume_from = latest_checkpoint(self.run_dir)
        self._check_same_view()
        if self.main:
            for p in ckpt.clean_partial(self.run_dir):  # safe: we hold the lock, nobody else writes here
                print(f"note: removed {p.relative_to(self.run_dir)}, left by an interrupted run")
            check_saved_config(self.run_dir, self.stage.name, self.cfg)

    def _check_same_view(self) -> None:
        """Every rank reads its resume state from the run directory, so all must see the same one.

        Multi-node runs need --out on a filesystem shared by the nodes (NFS, Lustre, ...): rank 0
        writes the checkpoints and every rank loads them. Without one, a node that sees no
        checkpoint would start from step 0 while the others resume; refuse that instead."""
        seen = D.all_gather_objects(self.resume_from is not None, self.dist)
        if len(set(seen)) > 1:
            blind = [r for r, s in enumerate(seen) if not s]
            raise UserError(f"{self.run_dir}: rank(s) {blind} see no checkpoint there while rank(s) "
                            f"{[r for r, s in enumerate(seen) if s]} do; multi-node training needs --out on a "
                            "filesystem shared by every node")

    def _build(self, init_path: Path | None, tokenizer: Any) -> None:
        """Model (seeded, restored on resume, wrapped for DDP/FSDP), extra models, optimizer, scaler."""
        cfg = self.cfg
        # Same seed on every rank for the init (identical replicas), then per-rank for dropout.
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model = self._given_model if self._given_model is not None else build_model(cfg, init_path, tokenizer)
        check_vocabulary(model, tokenizer)
        model.to(self.device)
        model = self.stage.prepare_model(model, self.ctx) or model
        weights = self.resume_from or self.phase.continue_from
        if weights is not None:
            self.stage.load_weights(model, weights, self.ctx)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        onednn = cfg.onednn and not cfg.compile and self.device.type == "cpu" and self.dtype == torch.float32
        if onednn:  # the same products, faster on the CPU (model/cpu_linear.py); hooks (LoRA) still fire
            use_onednn_linears(model)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = model  # unwrapped (FSDP shards it in place): names stay clean for saving
        self.ctx.model = model

        wrapped = D.wrap_model(model, self.dist, cfg.fsdp)
        self.train_model = torch.compile(wrapped) if cfg.compile else wrapped
        # One precision recipe for one process, DDP and FSDP alike: fp32 weights, autocast compute
        # (also for the frozen reference / teacher models, which run inside the same context).
        use_amp = self.dtype != torch.float32
        self.ctx.autocast = (lambda: torch.autocast(self.device.type, dtype=self.dtype)) if use_amp else contextlib.nullcontext
        for name, extra in self.stage.extra_models(self.ctx).items():
            extra.to(self.device).eval().requires_grad_(False)
            if onednn:
                use_onednn_linears(extra)
            self.ctx.extra[name] = extra

        self.params = self.stage.trainable_parameters(model)
        if not self.params:
            raise UserError(f"stage {self.stage.name!r} left no trainable parameters")
        self.optimizer = make_optimizer(self.params, cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if (self.dtype == torch.float16 and self.device.type == "cuda") else None

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on rank 0 only; if it raises a UserError, every rank raises it (none waits forever)."""
        error = None
        if self.main:
            try:
                fn()
            except UserError as err:
                error = err
        message = D.all_gather_objects(str(error) if error else None, self.dist)[0]
        if error is not None:
            raise error
        if message is not None:
            raise UserError(message)

    def save(self) -> Path | None:
        """A checkpoint of this step (`snapshot.save`); rank 0 returns its folder."""
        return snapshot.save(self)

    # -- the loop -------------------------------------------------------------------------------------

    def _replan(self) -> None:
        """--max-minutes: shrink the budget to what the measured step time allows (budget.WallClock)."""
        if self._wall is None:
            return
        total = self._wall.replan(self.step, self.total_steps)
        if total < self.total_steps and self.main:
            if self.progress.bar is not None:
                self.progress.bar.total = total
            if not self._shortened:
                self.progress.write(f"note: --max-minutes {self.cfg.max_minutes:g}: the run now ends at step {total} "
                                    f"instead of {self.total_steps} (the LR decays by then)")
        self._shortened = self._shortened or total < self.total_steps
        self.total_steps = total

    def _checkpoint_and_evaluate(self, saving: bool, evaluating: bool) -> float | None:
        """Save first, then evaluate and sample: nothing that fails after a step can cost its checkpoint.
        Evaluation leaves the RNG states as it found them, so resuming from this checkpoint is exact."""
        path = self.save() if saving else None
        if not evaluating:
            return None
        rng = ckpt.rng_state(self.device)
        val_loss = self.evaluator.loss(self.model)
        if val_loss is not None and self.main:
            ppl = math.exp(min(val_loss, 50))
            self.logger.log({"step": self.step, "split": "val", "loss": val_loss, "ppl": ppl})
            self.progress.write(f"step {self.step}: val loss {val_loss:.4f}, ppl {ppl:.2f}")
        for record in self.evaluator.samples(self.model, self.step):
            self.logger.log(record)
            self.progress.write(f"[sample @ {self.step}] {record['prompt']!r} -> {record['completion']!r}")
        ckpt.set_rng_state(rng, self.device)
        if saving:
            snapshot.record_val_loss(self, path, val_loss)
        return val_loss

    def fit(self) -> TrainResult:
        try:
            self._setup()
            return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _start(self) -> None:
        """Loggers, progress bar, the run's opening line; batches on a background thread if asked."""
        cfg, name = self.cfg, self.stage.name + (f"/{self.phase.name}" if self.phase.name else "")
        tags = {"phase": self.phase.name} if self.phase.name else None
        self.logger = MetricsLogger(self.run_dir, cfg.tensorboard, cfg.wandb, cfg.to_dict(), tags) if self.main else None
        self.progress = Progress(self.total_steps, self.step, enabled=self.main and cfg.progress, desc=name)
        self._fpt = flops_per_token(self.model.config, cfg.seq_len)
        self._peak = peak_flops(self.device, self.dtype) if self.main else None
        if self.main:
            where = f"resuming from {self.resume_from} at step {self.step}" if self.resume_from else "starting"
            where = f"continuing from {self.phase.continue_from}" if self.phase.continue_from else where
            n_train = sum(p.numel() for _, p in self.params)
            self.progress.write(f"{name}: {where}; {n_train:,} trainable parameters; {self.total_steps} steps "
                                f"on {self.device} ({str(self.dtype).removeprefix('torch.')}, {self.dist.world_size} process(es))")
        self.model.train()
        prefetch = self._prefetch if self._prefetch is not None else self.device.type == "cuda"
        if prefetch and self.stage.prefetch_batches:
            self.batches = Prefetcher(self.batches, depth=2, pin=self.device.type == "cuda")
        self._wall = WallClock(cfg.max_minutes, self._clock) if cfg.max_minutes else None
        self._shortened = False

    def _log_step(self, loss: float, lr: float, tokens: int, dt: float, grad_norm: Any, metrics: dict[str, Any]) -> None:
        """Progress bar every step; a metrics record every --log-every steps and at the last."""
        tok_s = tokens / max(dt, 1e-9)  # every rank's tokens ...
        mfu = model_flops_utilization(tok_s, self._fpt, self._peak, self.dist.world_size)  # ... over every rank's peak
        if not self.main:
            return
        self.progress.update(loss, lr, tok_s, mfu)
        if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
            record = {"step": self.step, "split": "train", "loss": loss, "lr": lr, "tokens": self.tokens_seen,
                      "tok_s": round(tok_s, 1), "grad_norm": _host(grad_norm), **{k: _host(v) for k, v in metrics.items()}}
            if mfu is not None:
                record["mfu"] = round(mfu, 5)
            mix = realised_shares(self.batches.state_dict())  # a mixture's realised proportions so far
            if mix is not None:
                record["mix"] = {source: round(share, 5) for source, share in mix.items()}
            self.logger.log(record)

    def _stop(self) -> None:
        if isinstance(self.batches, Prefetcher):
            self.batches.close()
        self.progress.close()
        if self.logger is not None:
            self.logger.close()

    def _train_step(self, it: Any) -> tuple[float, float, int, Any, dict[str, Any]]:
        """One optimizer step at the phase's LR; (loss, lr, tokens, grad norm, metrics)."""
        start = self.phase.start_step  # the schedule counts from the phase's first step
        lr = lr_at(self.step - start, self.cfg, self.total_steps - start)
        set_lr(self.optimizer, lr)
        loss, metrics, tokens = accumulate(self, it)  # step.py: the micro-batches
        if not math.isfinite(loss):
            good = latest_checkpoint(self.run_dir) if self.main else None
            raise TrainingError(
                f"the loss became {loss} at step {self.step + 1}; the weights were not updated. "
                f"Last good checkpoint: {good or 'none yet'}. Try a lower --lr, --grad-clip 1.0, "
                f"or --dtype bf16/fp32 instead of fp16.")
        grad_norm = update(self)  # step.py: clip, optimizer step
        self.step += 1
        self.ctx.step = self.step
        self.tokens_seen += tokens
        return loss, lr, tokens, grad_norm, metrics

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        self._start()
        it = iter(self.batches)
        losses: list[float] = []
        last_saved = self.step if (self.resume_from or self.phase.continue_from) else -1
        val_loss = None
        t_last = time.perf_counter()
        try:
            while self.step < self.total_steps:
                loss, lr, tokens, grad_norm, metrics = self._train_step(it)
                losses.append(loss)
                self._replan()
                self._log_step(loss, lr, tokens, time.perf_counter() - t_last, grad_norm, metrics)
                done = self.step == self.total_steps
                saving = bool(cfg.save_every and self.step % cfg.save_every == 0) or done
                evaluating = bool(cfg.eval_every and self.step % cfg.eval_every == 0) or done
                val_loss = self._checkpoint_and_evaluate(saving, evaluating)
                last_saved = self.step if saving else last_saved
                t_last = time.perf_counter()  # evaluation and saving do not count as training time
        finally:
            self._stop()
        if last_saved != self.step:  # e.g. resumed a run that had already finished
            self.save()
        final = latest_checkpoint(self.run_dir) if self.main else None
        if self.main:
            self.stage.on_train_end(self.model, self.ctx)
            self._plot()
        D.barrier(self.dist)
        return TrainResult(self.run_dir, self.step, losses[-1] if losses else None, val_loss, final, losses)

    def _plot(self) -> None:
        """loss.png / lr.png; the run is complete without them, so a failure is only a warning."""
        try:
            plot_run(self.run_dir)
        except (ImportError, OSError, UserError) as err:
            print(f"warning: no plots written ({err}); the checkpoints are complete. Retry with `minimind plot {self.run_dir}`")
