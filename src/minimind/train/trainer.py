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
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.checkpoint import checkpoint as recompute

from ..checkpoint import CheckpointError, resolve_checkpoint
from ..config import ModelConfig, flops_per_token, get_preset
from ..errors import UserError
from ..model import MiniMindLM
from . import checkpointing as ckpt
from . import distributed as D
from .metrics import MetricsLogger, Progress, peak_flops, truncate_metrics
from .optim import lr_at, make_optimizer, set_lr
from .stages.base import Stage, TrainContext

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name == "fp16" and device.type != "cuda":
        raise UserError("--dtype fp16 needs CUDA (it relies on a gradient scaler); use bf16 or fp32")
    return DTYPES[name]


def enable_activation_checkpointing(model: MiniMindLM) -> None:
    """Recompute each block's forward during backward instead of storing its activations.

    We replace the bound `forward` of every block instance (parameter names are unchanged, so
    checkpoints are unaffected): memory drops from O(layers) block activations to O(1) at the
    price of one extra forward pass.
    """
    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, _block=block):
            if _block.training and torch.is_grad_enabled():
                return recompute(_inner, *args, use_reentrant=False)
            return _inner(*args)

        block.forward = forward


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def batches_per_epoch(batches) -> int | None:
    """Micro-batches per epoch on this rank, if the batch source can tell."""
    if hasattr(batches, "__len__"):
        return len(batches)
    units = getattr(batches, "samples_per_epoch", None)  # minimind.data Loader: rows per epoch
    batch_size = getattr(batches, "batch_size", None)
    if isinstance(units, int) and batch_size:
        return max(1, units // batch_size)
    return None


class Trainer:
    def __init__(self, stage: Stage, *, model: MiniMindLM | None = None, tokenizer: Any = "auto") -> None:
        """`model` / `tokenizer` override what the config would load (tests, notebooks);
        tokenizer=None trains without one (synthetic data; no tokenizer files are saved)."""
        self.stage, self.cfg = stage, stage.config
        self._given_model, self._given_tokenizer = model, tokenizer

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
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.resume_from = None
        if (self.run_dir / "checkpoints" / "latest").is_file():
            if not cfg.resume:
                raise UserError(f"{self.run_dir} already holds a run; add --resume to continue it, or choose another --out")
            self.resume_from = ckpt.latest_checkpoint(self.run_dir)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.run_dir)
            self._check_saved_config()
            (self.run_dir / "train_config.json").write_text(
                json.dumps({"stage": self.stage.name, **cfg.to_dict()}, indent=2) + "\n")

        init_path = None
        if cfg.init:
            p = Path(cfg.init)
            from ..checkpoint import is_hf_folder

            init_path = p if (p.is_dir() and is_hf_folder(p)) else resolve_checkpoint(p)
        tokenizer = self._load_tokenizer(init_path)
        self.ctx = TrainContext(config=cfg, device=self.device, rank=self.dist.rank,
                                world_size=self.dist.world_size, tokenizer=tokenizer, run_dir=self.run_dir,
                                init_path=init_path)
        if self.main and tokenizer is not None:
            from ..checkpoint import copy_tokenizer

            (self.run_dir / "tokenizer").mkdir(exist_ok=True)
            copy_tokenizer(tokenizer.path, self.run_dir / "tokenizer")

        # Same seed on every rank for the init (identical replicas), then per-rank for dropout.
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model = self._build_model(init_path, tokenizer)
        model.to(self.device)
        model = self.stage.prepare_model(model, self.ctx) or model
        if self.resume_from is not None:
            self.stage.load_weights(model, self.resume_from, self.ctx)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = model  # unwrapped (FSDP shards it in place): names stay clean for saving
        self.ctx.model = model

        fsdp_mp = self.dtype if (cfg.fsdp and self.dtype != torch.float32) else None
        wrapped = D.wrap_model(model, self.dist, cfg.fsdp, fsdp_mp)
        self.train_model = torch.compile(wrapped) if cfg.compile else wrapped
        use_amp = self.dtype != torch.float32 and fsdp_mp is None
        self.ctx.autocast = (lambda: torch.autocast(self.device.type, dtype=self.dtype)) if use_amp else contextlib.nullcontext
        for name, extra in self.stage.extra_models(self.ctx).items():
            extra.to(self.device).eval().requires_grad_(False)
            self.ctx.extra[name] = extra

        self.params = self.stage.trainable_parameters(model)
        if not self.params:
            raise UserError(f"stage {self.stage.name!r} left no trainable parameters")
        self.optimizer = make_optimizer(self.params, cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if (self.dtype == torch.float16 and self.device.type == "cuda") else None

        self.batches = self.stage.batches(self.ctx, "train")
        self.step, self.tokens_seen, self.best_val = 0, 0, None
        if self.resume_from is not None:
            self._restore(self.resume_from)
        elif cfg.resume and self.main:
            print(f"note: {self.run_dir} has no checkpoint yet; starting from step 0")
        if self.main:  # a fresh start drops records of an earlier attempt; a resume those past its step
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self.total_steps = self._budget()

    def _check_saved_config(self) -> None:
        saved = self.run_dir / "train_config.json"
        if not (self.cfg.resume and saved.is_file()):
            return
        old = json.loads(saved.read_text())
        new = {"stage": self.stage.name, **self.cfg.to_dict()}
        changed = sorted(k for k in new if k != "resume" and old.get(k) != new[k])
        if old.get("stage") != self.stage.name:
            raise UserError(f"{saved}: this run was a {old.get('stage')!r} run, not {self.stage.name!r}")
        if changed:
            print(f"note: resuming with changed options: {', '.join(changed)} (the run will not repeat exactly)")

    def _load_tokenizer(self, init_path: Path | None):
        if self._given_tokenizer != "auto":
            return self._given_tokenizer
        from ..tokenizer import load_tokenizer

        if self.cfg.tokenizer:
            return load_tokenizer(self.cfg.tokenizer)
        if init_path is not None and (init_path / "tokenizer.json").is_file():
            return load_tokenizer(init_path)
        return load_tokenizer(None)

    def _build_model(self, init_path: Path | None, tokenizer) -> MiniMindLM:
        if self._given_model is not None:
            return self._given_model
        if init_path is not None:
            from ..checkpoint import load_model

            model = load_model(init_path)
            model.train()
        else:
            config: ModelConfig = get_preset(self.cfg.preset)
            if tokenizer is not None:
                config.vocab_size = tokenizer.vocab_size
                config.pad_token_id, config.bos_token_id, config.eos_token_id = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
            if self.cfg.seq_len > config.max_seq_len:
                raise UserError(f"--seq-len {self.cfg.seq_len} exceeds the model's max_seq_len {config.max_seq_len}")
            model = MiniMindLM(config)
        if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
            raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                            f"{model.config.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)")
        return model

    def _budget(self) -> int:
        cfg, limits = self.cfg, []
        if cfg.max_steps:
            limits.append(cfg.max_steps)
        if cfg.max_tokens:
            per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * self.dist.world_size
            limits.append(math.ceil(cfg.max_tokens / per_step))
        if cfg.epochs:
            per_epoch = batches_per_epoch(self.batches)
            if per_epoch is None:
                raise UserError("--epochs needs a data loader that knows its length; use --max-steps or --max-tokens")
            limits.append(max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)))
        return min(limits)

    # -- checkpoints --------------------------------------------------------------------------------

    def _restore(self, folder: Path) -> None:
        tensors, meta = ckpt.load_trainer_state(folder)
        saved_world = meta.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{folder} was written by {saved_world} process(es); resume it with the same number "
                                  f"(now {self.dist.world_size}) so every rank finds its data position")
        set_optimizer_state_dict(self.model, self.optimizer, tensors["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        if self.scaler is not None and tensors.get("scaler"):
            self.scaler.load_state_dict(tensors["scaler"])
        _set_rng_state(tensors["rng"][self.dist.rank], self.device)
        self.batches.load_state_dict(meta["loader"][self.dist.rank])
        self.step, self.tokens_seen = meta["step"], meta.get("tokens_seen", 0)
        self.best_val = meta.get("best_val")

    def save(self, val_loss: float | None = None) -> Path | None:
        """All ranks call this (FSDP gathers shards); rank 0 writes."""
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(self.model, options=opts)
        optim_sd = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        loaders = D.all_gather_objects(self.batches.state_dict(), self.dist)
        rngs = D.all_gather_objects(_rng_state(self.device), self.dist)
        if val_loss is not None and (self.best_val is None or val_loss < self.best_val):
            self.best_val = val_loss
        path = None
        if self.main:
            def write(folder: Path) -> None:
                self.stage.save_weights(self.model, model_sd, folder, self.ctx)
                tensors = {"optimizer": optim_sd, "scaler": self.scaler.state_dict() if self.scaler else {},
                           "rng": rngs}
                ckpt.save_tensors(folder / ckpt.STATE_PT, tensors)

            state = {"stage": self.stage.name, "tokens_seen": self.tokens_seen, "loader": loaders,
                     "val_loss": val_loss, "best_val": self.best_val, "world_size": self.dist.world_size,
                     "train_config": self.cfg.to_dict()}
            path = ckpt.save_checkpoint(self.run_dir, self.step, write, state, self.cfg.keep_last)
        D.barrier(self.dist)
        return path

    # -- evaluation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean per-token loss over `eval_batches` held-out batches (the same ones every time)."""
        if self.cfg.eval_batches <= 0:
            return None
        if not hasattr(self, "_val"):
            try:
                self._val = self.stage.batches(self.ctx, "val")
                self._val_start = self._val.state_dict()
            except UserError as err:
                self._val = None
                if self.main:
                    print(f"note: no evaluation ({err})")
        if self._val is None:
            return None
        self._val.load_state_dict(self._val_start)
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        it = iter(self._val)
        for _ in range(self.cfg.eval_batches):
            batch = next(it)
            w = self.stage.batch_weight(batch)
            with self.ctx.autocast():
                loss, _ = self.stage.loss(self.model, batch, self.ctx)
            total += torch.stack([loss.detach().double() * w, torch.tensor(w, dtype=torch.float64, device=self.device)])
        self.model.train()
        D.all_reduce_sum(total, self.dist)
        return float(total[0] / total[1]) if total[1] > 0 else None

    @torch.no_grad()
    def log_samples(self) -> None:
        tok = self.ctx.tokenizer
        if tok is None or self.cfg.num_samples <= 0 or self.cfg.fsdp or not self.main:
            return
        from ..infer import Engine, SamplingParams

        prompts = self.stage.sample_prompts(self.ctx)[: self.cfg.num_samples]
        if not prompts:
            return
        # The inference engine (batched, KV-cached) on the unwrapped model; seeded by the step so
        # samples are reproducible and the training RNG streams are never touched.
        engine = Engine(self.model, tok, max_batch_size=len(prompts))
        params = SamplingParams(max_new_tokens=self.cfg.sample_tokens, temperature=0.7, top_k=40,
                                seed=self.cfg.seed * 1_000_003 + self.step)
        with self.ctx.autocast():
            seqs = engine.generate(prompts, params)
        for prompt, seq in zip(prompts, seqs):
            record = {"step": self.step, "split": "sample", "prompt": tok.decode(prompt, skip_special_tokens=True).strip(),
                      "completion": seq.text}
            self.logger.log(record)
            self.progress.write(f"[sample @ {self.step}] {record['prompt']!r} -> {record['completion']!r}")
        self.model.train()

    # -- the loop -------------------------------------------------------------------------------------

    def _train_step(self, it) -> tuple[float, dict[str, float], int]:
        cfg, stage, dist = self.cfg, self.stage, self.dist
        micro = [next(it) for _ in range(cfg.grad_accum)]
        weights = [stage.batch_weight(b) for b in micro]
        # Normalise by the loss tokens of the whole global batch: then k micro-batches of b (or N
        # ranks) give exactly the gradient of one batch of k*b, even when SFT masks differ per row.
        global_w = float(D.all_reduce_sum(torch.tensor(sum(weights), dtype=torch.float64, device=self.device), dist))
        if global_w == 0:
            weights, global_w = [1.0] * len(micro), float(len(micro) * dist.world_size)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metrics: dict[str, float] = {}
        tokens = 0
        for i, (batch, w) in enumerate(zip(micro, weights)):
            last = i == len(micro) - 1
            sync: Any = contextlib.nullcontext()
            if dist.enabled and not last:  # gradients are all-reduced once, after the last micro-batch
                if cfg.fsdp:
                    self.model.set_requires_gradient_sync(False)
                else:
                    sync = self.train_model.no_sync() if hasattr(self.train_model, "no_sync") else sync
            elif dist.enabled and cfg.fsdp:
                self.model.set_requires_gradient_sync(True)
            with sync:
                with self.ctx.autocast():
                    loss, m = stage.loss(self.train_model, batch, self.ctx)
                # DDP/FSDP average gradients over ranks, hence the world_size factor.
                scaled = loss * (w * dist.world_size / global_w)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach().double() * w
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / len(micro)
            tokens += stage.batch_tokens(batch)
        loss_value = float(D.all_reduce_sum(loss_sum, dist)) / global_w
        return loss_value, metrics, tokens * dist.world_size

    def fit(self) -> TrainResult:
        self._setup()
        cfg = self.cfg
        self.logger = MetricsLogger(self.run_dir, cfg.tensorboard, cfg.wandb, cfg.to_dict()) if self.main else None
        self.progress = Progress(self.total_steps, self.step, enabled=self.main and cfg.progress, desc=self.stage.name)
        fpt = flops_per_token(self.model.config, cfg.seq_len)
        peak = peak_flops(self.device, self.dtype) if self.main else None
        if self.main:
            where = f"resuming from {self.resume_from} at step {self.step}" if self.resume_from else "starting"
            n_train = sum(p.numel() for _, p in self.params)
            self.progress.write(f"{self.stage.name}: {where}; {n_train:,} trainable parameters; {self.total_steps} steps "
                                f"on {self.device} ({str(self.dtype).removeprefix('torch.')}, {self.dist.world_size} process(es))")
        self.model.train()
        it = iter(self.batches)
        losses: list[float] = []
        last_saved = self.step if self.resume_from else -1
        val_loss = None
        t_last = time.perf_counter()
        try:
            while self.step < self.total_steps:
                lr = lr_at(self.step, cfg, self.total_steps)
                set_lr(self.optimizer, lr)
                loss, metrics, tokens = self._train_step(it)
                if not math.isfinite(loss):
                    good = ckpt.latest_checkpoint(self.run_dir) if self.main else None
                    raise TrainingError(
                        f"the loss became {loss} at step {self.step + 1}; the weights were not updated. "
                        f"Last good checkpoint: {good or 'none yet'}. Try a lower --lr, --grad-clip 1.0, "
                        f"or --dtype bf16/fp32 instead of fp16.")
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = None
                if cfg.grad_clip > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.params], cfg.grad_clip)
                    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.ctx.step = self.step
                self.tokens_seen += tokens
                losses.append(loss)

                now = time.perf_counter()
                dt, t_last = now - t_last, now
                tok_s = tokens / max(dt, 1e-9)
                mfu = tok_s * fpt / peak if peak else None
                if self.main:
                    self.progress.update(loss, lr, tok_s, mfu)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        record = {"step": self.step, "split": "train", "loss": loss, "lr": lr, "tokens": self.tokens_seen,
                                  "tok_s": round(tok_s, 1), "grad_norm": grad_norm, **metrics}
                        if mfu is not None:
                            record["mfu"] = round(mfu, 5)
                        self.logger.log(record)

                done = self.step == self.total_steps
                val_loss = None
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or done:
                    val_loss = self.evaluate()
                    if val_loss is not None and self.main:
                        ppl = math.exp(min(val_loss, 50))
                        self.logger.log({"step": self.step, "split": "val", "loss": val_loss, "ppl": ppl})
                        self.progress.write(f"step {self.step}: val loss {val_loss:.4f}, ppl {ppl:.2f}")
                    self.log_samples()
                if (cfg.save_every and self.step % cfg.save_every == 0) or done:
                    self.save(val_loss)
                    last_saved = self.step
                t_last = time.perf_counter()  # evaluation and saving do not count as training time
        finally:
            self.progress.close()
            if self.logger is not None:
                self.logger.close()
        if last_saved != self.step:  # e.g. resumed a run that had already finished
            self.save(val_loss)
        final = ckpt.latest_checkpoint(self.run_dir) if self.main else None
        if self.main:
            self.stage.on_train_end(self.model, self.ctx)
            from .plot import plot_run

            plot_run(self.run_dir)
        D.barrier(self.dist)
        return TrainResult(self.run_dir, self.step, losses[-1] if losses else None, val_loss, final, losses)
