"""Group Relative Policy Optimisation (`minimind grpo`): RL from rewards, no value model.

One optimizer step:
1. take B prompts from the `rl` loader (chat prompts rendered with thinking on, plus the
   reference answers) and sample G completions for each with the inference engine (batched,
   KV-cached), from the current policy;
2. score each completion with the reward functions (`--rewards`, see `train/rewards.py`) and turn
   the scores into group-relative advantages: (r - mean of its group) / std of its group
   (--no-scale-advantages: r - mean only, Dr. GRPO);
3. loss = clipped policy-gradient term + beta * k3 KL to the frozen `--init` model, averaged over
   every completion token of the batch (`losses.grpo_loss`), plus the MoE balance loss of the
   policy's forward (`base.forward_with_aux`; 0 for dense models).

What this stage supplies to the one loop:
(b) batches: `RolloutBatches` wraps the loader and *generates* each batch in `__next__`; all
    micro-batches of a step are drawn before the update, so they all come from the same policy.
    Its state (loader position + rollout counter, which seeds the sampler) makes resume exact;
(c) loss: one forward over prompt+completion, per-token log-probs of the completion only;
(d) extra models: the frozen reference (only when --beta-kl > 0).

We do one update per batch of rollouts, so the "old" policy that sampled is the current one:
logps_old = logps_new.detach(), the ratio is 1 and clipping only matters if that changes (e.g.
several updates per rollout). PPO (ppo.py) reuses this stage's rollouts with a value head.
Evaluation reports the same loss on held-out prompts, which is little use for RL; it is off
by default (--eval-batches 0) and held-out accuracy is measured by benchmarks/posttrain.py.

Batch size matters more than anything else here: the policy gradient of a few prompts is mostly
noise (from 8 prompts, its cosine with the SFT gradient of 128 swings from -0.35 to 0.6), and Adam
turns noise into full-size steps. benchmarks/grpo_arith.py needs ~128 prompts per step
(--batch-size 32 --grad-accum 4, G = 4) before held-out accuracy rises; see docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ...config import IGNORE_INDEX
from ...chat import EMPTY_THINK
from ...errors import UserError
from ...infer import Engine, SamplingParams
from ...tokenizer import BOS_TOKEN, THINK_START
from ..config import knob
from ..losses import group_advantages, grpo_loss
from ..rewards import WeightedRewards, build_rewards
from .base import DerivedBatches, TrainContext, forward_with_aux, step_seed, with_defaults
from .dpo import load_frozen
from .sft import SFTConfig, SFTStage


@dataclass
@with_defaults(lr=5e-6, eval_batches=0)  # held-out rollouts' RL loss is a poor metric: off by default
class GRPOConfig(SFTConfig):
    batch_size: int = knob(4, "prompts per micro-batch (each sampled --group-size times)")
    group_size: int = knob(4, "completions sampled per prompt (G)")
    max_new_tokens: int = knob(96, "token budget of each sampled completion")
    temperature: float = knob(1.0, "sampling temperature of the rollouts")
    top_p: float = knob(1.0, "nucleus sampling threshold of the rollouts")
    clip_eps: float = knob(0.2, "PPO clip range: the ratio is clipped to [1 - eps, 1 + eps_high]")
    clip_eps_high: float | None = knob(None, "upper clip range (DAPO 'clip higher'; default: --clip-eps)")
    scale_advantages: bool = knob(True, "divide advantages by their group's reward std (off: Dr. GRPO, r - mean "
                                        "only, so groups with one lucky success do not dominate)")
    beta_kl: float = knob(0.04, "weight of the k3 KL penalty to the --init model (0: no reference model)")
    rewards: str = knob("correct:1,format:0.5,repetition:0.5",
                        "reward terms name[:weight][@param]: correct, format, length, repetition")
    freeze_embeddings: bool = knob(False, "train all but the token embeddings (tied to the output head): with "
                                          "Adam, RL's tiny, noisy gradients on every vocabulary row become "
                                          "full-size steps that raise never-sampled tokens")
    thinking: bool = knob(True, "rollout and sample prompts open a <think> block (off: an empty block, "
                                "the thinking-off mode; short answers need no reasoning)")

    def build_reward_fn(self) -> WeightedRewards:
        """The reward function `--rewards` names (agent-rl overrides this with its own terms)."""
        return build_rewards(self.rewards)

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise UserError(f"--group-size must be at least 2 (advantages compare completions), got {self.group_size}")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be positive, got {self.max_new_tokens}")
        if self.fsdp:  # every rank would have to run the same number of sharded forwards while sampling
            raise UserError("grpo does not support --fsdp: ranks sample completions of different lengths; use DDP")
        if self.beta_kl < 0 or self.clip_eps <= 0:
            raise UserError("--beta-kl must be >= 0 and --clip-eps > 0")
        self.build_reward_fn()  # raises UserError on a bad spec, before any model loads


class RolloutBatches(DerivedBatches):
    """Endless, resumable iterator of generated GRPO batches (see the module docstring)."""

    def __init__(self, stage: "GRPOStage", ctx: TrainContext, loader) -> None:
        super().__init__(loader)
        self.stage, self.ctx = stage, ctx

    def make(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.stage.rollout(batch, self.ctx, self.count)


class GRPOStage(SFTStage):
    name = "grpo"
    help = "RL with group-relative advantages on verifiable prompts (samples with the inference engine); needs --init"
    order = 60
    config_class = GRPOConfig
    data_kind = "rl"
    requires_init = True
    prefetch_batches = False  # rollouts sample from the policy of this very step

    def __init__(self, config: GRPOConfig) -> None:
        super().__init__(config)
        self.reward_fn = config.build_reward_fn()  # replace with any WeightedRewards in Python

    def batches(self, ctx: TrainContext, split: str = "train") -> RolloutBatches:
        return RolloutBatches(self, ctx, iter(super().batches(ctx, split)))

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        params = super().trainable_parameters(model)
        if self.config.freeze_embeddings:
            params = [(n, p) for n, p in params if not n.endswith("embed_tokens.weight")]
        return params

    def extra_models(self, ctx: TrainContext) -> dict[str, nn.Module]:
        return {"ref": load_frozen(ctx.init_path)} if self.config.beta_kl > 0 else {}

    @staticmethod
    def _assistant_prefix(tok, prompt_ids: list[int]) -> str:
        """Text the prompt already wrote into the assistant turn ("<think>\\n" with thinking on)."""
        return tok.decode(prompt_ids[-16:]).rpartition(f"{BOS_TOKEN}assistant\n")[2]

    def _mode_prompt(self, tok, prompt_ids: list[int]) -> list[int]:
        """The prompt in the configured thinking mode.

        The `rl` loader renders prompts with thinking on (they end with an open "<think>\\n").
        With --no-thinking that tail becomes the empty block "<think>\\n\\n</think>\\n\\n", so
        the ids equal `chat.render_prompt(..., thinking=False)`: the exact prefix a thinking-off
        SFT model was trained to continue (appending "\\n</think>..." would tokenise differently).
        """
        if self.config.thinking:
            return prompt_ids
        think = tok.token_to_id(THINK_START)
        if think is None or think not in prompt_ids:
            raise UserError(f"--no-thinking needs prompts ending with an open {THINK_START} "
                            "(the tokenizer's chat format)")
        cut = len(prompt_ids) - 1 - prompt_ids[::-1].index(think)
        return prompt_ids[:cut] + tok.encode(EMPTY_THINK, allow_special=True)  # EMPTY_THINK = "<think>\\n\\n</think>\\n\\n"

    def rollout(self, raw: dict[str, Any], ctx: TrainContext, count: int) -> dict[str, Any]:
        """Sample G completions per prompt, score them, and build the training tensors."""
        cfg, tok, model, G = self.config, ctx.tokenizer, ctx.model, self.config.group_size
        prompts = [self._mode_prompt(tok, p) for p in raw["prompt_ids"] for _ in range(G)]
        # Seeds depend on the run seed and the rollout counter only: a resumed run resamples exactly.
        params = [SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                 seed=step_seed(cfg.seed, count, i)) for i in range(len(prompts))]
        was_training = model.training
        with torch.no_grad(), ctx.autocast():
            seqs = Engine(model, tok, max_batch_size=len(prompts)).generate(prompts, params)  # Engine sets eval()
        model.train(was_training)

        stops = {tok.eos_id, tok.pad_id}
        completions = [s.output_ids[:-1] if s.output_ids and s.output_ids[-1] in stops else s.output_ids for s in seqs]
        texts = [self._assistant_prefix(tok, p) + tok.decode(c) for p, c in zip(prompts, completions)]
        answers = [a for a in raw["answers"] for _ in range(G)]
        messages = [m for m in raw["messages"] for _ in range(G)]
        totals, parts = self.reward_fn.score(texts, answers, messages)
        rewards = torch.tensor(totals, dtype=torch.float32)
        advantages = group_advantages(rewards, G, scale=cfg.scale_advantages)

        # prompt + completion (with its stop token, so the policy learns to stop), right-padded;
        # labels are IGNORE_INDEX on the prompt and the padding: only sampled tokens are scored.
        rows = [p + s.output_ids for p, s in zip(prompts, seqs)]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
        for i, (p, s) in enumerate(zip(prompts, seqs)):
            ids[i, : len(p) + len(s.output_ids)] = torch.tensor(p + s.output_ids)
            labels[i, len(p) : len(p) + len(s.output_ids)] = torch.tensor(s.output_ids, dtype=torch.long)
        metrics = {"reward": float(rewards.mean()), "reward_std": float(rewards.view(-1, G).std(1, correction=0).mean()),
                   "completion_len": sum(len(s.output_ids) for s in seqs) / len(seqs),
                   **{f"reward/{name}": sum(v) / len(v) for name, v in parts.items()}}
        return {"input_ids": ids, "labels": labels, "advantages": advantages, "rewards": rewards, "metrics": metrics,
                "texts": texts}

    # batch_weight is the Stage default: completion tokens (token-level normalisation across micro-batches).

    def completion_forward(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> "Completions":
        """The policy's forward over the completion columns only (see `Completions`).

        Only completion tokens are scored, so the LM head runs on the columns from the last
        prompt token of the shortest prompt onwards (decided on the CPU copy of the labels: no
        device sync). The head then works on [B, keep] positions, often several times fewer.
        """
        scored = (batch["labels"] != IGNORE_INDEX).any(0).numpy().nonzero()[0]
        keep = batch["labels"].shape[1] - int(scored[0]) + 1 if len(scored) else batch["labels"].shape[1]
        ids = batch["input_ids"].to(ctx.device, non_blocking=True)
        labels = batch["labels"][:, -keep:].to(ctx.device, non_blocking=True)
        f = forward_with_aux(model, ids, ctx, labels=labels, logits_to_keep=keep)
        return Completions(ids, labels, labels[:, 1:] != IGNORE_INDEX, keep, f.out.token_logps, f.aux, f.metrics)

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.config
        c = self.completion_forward(model, batch, ctx)
        ref = None
        if "ref" in ctx.extra:
            with torch.no_grad():
                ref = ctx.extra["ref"](c.ids, labels=c.labels, logits_to_keep=c.keep).token_logps
        clip = (cfg.clip_eps, cfg.clip_eps_high if cfg.clip_eps_high is not None else cfg.clip_eps)
        loss, metrics = grpo_loss(c.logps, c.logps.detach(), ref, batch["advantages"].to(ctx.device, non_blocking=True),
                                  c.mask, clip, cfg.beta_kl)
        return loss + c.aux, {**batch["metrics"], **metrics, **c.metrics}


class Completions(NamedTuple):
    """`GRPOStage.completion_forward`: the policy's forward over the last `keep` columns."""

    ids: torch.Tensor  # [B, T] prompt + completion, on the device
    labels: torch.Tensor  # [B, keep] the completion's labels (IGNORE_INDEX on prompt and padding)
    mask: torch.Tensor  # [B, keep - 1] True where labels[:, 1:] is a sampled token
    keep: int  # columns the LM head ran on
    logps: torch.Tensor  # [B, keep - 1] log-probs of the sampled tokens (0 where masked)
    aux: Any  # the weighted MoE balance loss (`forward_with_aux`), 0.0 for dense models
    metrics: dict[str, Any]  # {"aux_loss": ...} for MoE models


STAGE = GRPOStage
