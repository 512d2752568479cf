"""Loss functions of the post-training stages: sequence log-probs, DPO, distillation, GRPO, PPO.

Contract:
- Pure tensor math: no model, no data, no I/O. Every function takes tensors and returns a
  scalar loss plus a dict of *detached* 0-dim tensors for logging (the trainer turns them into
  floats when it logs, so no device sync happens inside the loss).
- Labels follow the model's convention: `labels` is aligned with `input_ids`, IGNORE_INDEX
  (-100, owned by `model.lm_loss`) marks positions without loss, and logits at position t
  predict the label at t+1.
- Log-probabilities are always computed in float32, whatever the logits' dtype.
- Token losses never hold float32 copies of the whole [N, V] logits: the stages get per-token
  log-probs from the model's chunked head (`model.lm_loss`, via `model(ids, labels=...)`), and
  distillation uses `distill_loss_from_hidden`: the student's and the teacher's final hidden
  states (`.hidden` of a forward with labels) and their heads, turned into logits a chunk of
  rows at a time (`lm_loss.logit_chunks`), so no [B, T, V] logits exist. `distill_loss` (from
  given logits) is the same loss, kept as the readable reference and for callers holding logits.

The math, in one line each (pi = policy, ref = frozen reference, y_w/y_l = chosen/rejected):
- DPO (sigmoid):  -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])
- IPO:            (h - 1/(2 beta))^2 with h the same log-ratio difference
- Distillation:   alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)
- GRPO:           -min(r A, clip(r, 1-eps, 1+eps) A) + beta * k3, with r = exp(new - old) and
                  k3 = exp(ref - new) - (ref - new) - 1, averaged over all completion tokens.
- PPO:            GAE advantages from per-token rewards and values, the same clipped surrogate
                  per token, and a clipped squared-error value loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import IGNORE_INDEX
from ..errors import UserError
from ..model.lm_loss import chunk_rows, logit_chunks


class TokenLogprobs(NamedTuple):
    """Result of `sequence_logprobs`; all tensors are float32 except `mask` (bool)."""

    token_logps: torch.Tensor  # [B, T-1]: log p(labels[:, t+1] | prefix), 0 where masked
    mask: torch.Tensor  # [B, T-1]: True where labels[:, t+1] != IGNORE_INDEX
    seq_logps: torch.Tensor  # [B]: sum of token_logps over the mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> TokenLogprobs:
    """Per-token log-probabilities of `labels` under `logits`, and their masked sum per row.

    log p(y) = logit_y - logsumexp(logits). Computing it this way instead of
    `log_softmax(logits.float()).gather(y)` never builds a [B, T, V] log-softmax tensor:
    logsumexp reduces the vocabulary to one number per position and the gather reads one logit
    per position. The only full-size float32 tensor is the upcast of bf16/fp16 logits (none for
    float32 logits), which logsumexp keeps for its backward. (A per-row Python loop would save
    nothing: autograd keeps every row's upcast anyway, and each row's `select` backward writes a
    full-size zero gradient, which made it quadratic in the batch size.)
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [B,T,V] and labels [B,T], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits = logits[:, :-1].float()  # position t predicts t+1; a no-op copy-wise for float32
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)  # any valid index; masked out below
    picked = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask  # multiply keeps it differentiable
    return TokenLogprobs(token_logps, mask, token_logps.sum(-1))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the True entries of mask; 0 when the mask is empty (no division by 0)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# ----------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct Preference Optimisation loss over a batch of [B] sequence log-probs.

    The implicit reward of a response is beta * (log pi(y) - log ref(y)); DPO is a logistic
    regression saying the chosen reward should beat the rejected one. `label_smoothing` eps
    assumes the preference label is flipped with probability eps (conservative DPO):
    loss = -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h). `loss_type="ipo"` regresses
    h onto 1/(2 beta) instead, which does not push the margin to infinity on clean data.
    """
    if beta <= 0:
        raise UserError(f"dpo beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise UserError(f"dpo label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected_ratio = policy_rejected_logps.float() - ref_rejected_logps.float()
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        # logsigmoid is the stable form of log(sigmoid(x)): no overflow for large |x|.
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise UserError(f"dpo loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    chosen_rewards = beta * chosen_ratio.detach()
    rejected_rewards = beta * rejected_ratio.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
    }
    return losses.mean(), metrics


# ----------------------------------------------------------------------------- distillation


def _check_distill(student_vocab: int, teacher_vocab: int, temperature: float, alpha: float) -> None:
    if student_vocab != teacher_vocab:
        raise UserError(
            f"distillation needs the same vocabulary: student has {student_vocab} tokens, "
            f"teacher has {teacher_vocab}; train both with the same tokenizer"
        )
    if temperature <= 0:
        raise UserError(f"distill temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"distill alpha must be in [0, 1], got {alpha}")


def _combine(kl: torch.Tensor, ce: torch.Tensor, temperature: float, alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    kl, ce = kl.mean(), ce.mean()
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"kl": kl.detach(), "ce": ce.detach()}


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """White-box distillation: match the teacher's softened token distribution, plus CE.

    Only positions whose next label is not IGNORE_INDEX count (assistant tokens in SFT data). The KL
    term is scaled by T^2 because softening by T shrinks its gradients by 1/T^2 (Hinton et
    al.); the scaling keeps the balance with the CE term independent of T. The teacher gets no
    gradient: its logits are detached here, so callers may pass them straight from a forward.
    """
    _check_distill(student_logits.shape[-1], teacher_logits.shape[-1], temperature, alpha)
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(f"student/teacher logits differ in [B,T]: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    mask = labels[:, 1:] != IGNORE_INDEX
    # Select the counted positions first: everything below then costs [N, V], not [B, T, V].
    s = student_logits[:, :-1][mask]  # [N, V] in the logits' dtype
    t = teacher_logits[:, :-1][mask].detach()
    targets = labels[:, 1:][mask]
    if s.shape[0] == 0:  # no supervised token in the batch: a zero that still has a graph
        zero = student_logits.sum() * 0.0
        return zero, {"kl": zero.detach(), "ce": zero.detach()}
    return _combine(*_chunked_distill_terms(s, t, targets, temperature), temperature, alpha)


HeadOperands = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]  # MiniMindLM.head_operands


def distill_loss_from_hidden(
    student_hidden: torch.Tensor,
    student_head: HeadOperands,
    teacher_hidden: torch.Tensor,
    teacher_head: HeadOperands,
    labels: torch.Tensor,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`distill_loss` from final hidden states [B, T, h] instead of logits: same value and gradients.

    `*_head(rows [N, h]) -> (x', W' [V, h'])` gives each model's logits as x' @ W'^T
    (`MiniMindLM.head_operands`: the plain head, or a LoRA head folded in). The two models may
    differ in hidden size; only the vocabulary must match. Rows without a label are dropped
    before any logit exists, and the supervised rows go through `logit_chunks`: autograd keeps
    the [N, h] rows and the head weights, and each chunk's [C, V] logits and float32
    log-softmaxes live only while that chunk is computed (once forward, once in the backward).
    The teacher is detached.
    """
    if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
        raise ValueError(f"student/teacher hidden states differ in [B,T]: {tuple(student_hidden.shape)} "
                         f"vs {tuple(teacher_hidden.shape)}")
    mask = labels[:, 1:] != IGNORE_INDEX
    student = student_head(student_hidden[:, :-1][mask])
    teacher = teacher_head(teacher_hidden[:, :-1][mask].detach())
    if student is None or teacher is None:
        raise ValueError("a hook on the head cannot be folded into one matmul: use distill_loss on full logits")
    teacher = (teacher[0].detach(), teacher[1].detach())
    _check_distill(student[1].shape[0], teacher[1].shape[0], temperature, alpha)
    targets = labels[:, 1:][mask]
    if targets.numel() == 0:  # no supervised token in the batch: a zero that still has a graph
        zero = student_hidden.sum() * 0.0 + student[1].sum() * 0.0
        return zero, {"kl": zero.detach(), "ce": zero.detach()}
    kl, ce = logit_chunks(lambda s, t, y: _distill_terms(s, t, y, temperature), [student, teacher], targets)
    return _combine(kl, ce, temperature, alpha)


def _distill_terms(s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KL(p_t || p_s) at temperature T and CE(s, targets), in float32, for [C, V] rows."""
    s, t = s.float(), t.float()
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # sum_v p_t (log p_t - log p_s)
    return kl, F.cross_entropy(s, targets, reduction="none")


def _chunked_distill_terms(s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_distill_terms` over chunks of rows under activation checkpointing.

    Unchunked, autograd would keep about five float32 [N, V] tensors (upcasts, log-softmaxes,
    their difference) until the backward; here only the inputs stay, and each chunk's float32
    temporaries exist one chunk at a time (recomputed in the backward). `split`, not slicing,
    so the backward concatenates the chunk gradients once."""
    rows = chunk_rows(s.shape[-1])
    if s.shape[0] <= rows or not (torch.is_grad_enabled() and s.requires_grad):
        return _distill_terms(s, t, targets, temperature)
    parts = [checkpoint(_distill_terms, a, b, c, temperature, use_reentrant=False)
             for a, b, c in zip(s.split(rows), t.split(rows), targets.split(rows))]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ----------------------------------------------------------------------------- GRPO


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Group-relative advantages: (r - mean_group) / (std_group + eps), shape [B*G] -> [B*G].

    The G completions of one prompt sit next to each other. Normalising inside the group
    replaces PPO's learned value baseline: a completion is good if it beats its siblings. The
    std is the population std (G in the denominator) so G=1 is defined. A group whose rewards
    are all equal carries no signal and gets exactly zero advantage.
    `scale=False` keeps r - mean_group (Dr. GRPO, Liu et al. 2025): dividing by the std
    up-weights groups that almost all agree (one success in G gets advantage ~sqrt(G - 1)),
    so rare lucky samples and near-solved prompts dominate the batch.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise UserError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True, correction=0)
    adv = (r - mean) / (std + eps) if scale else r - mean
    # Rounding in the mean can leave tiny non-zero values in a constant group; zero them.
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)
    return adv.masked_fill(constant, 0.0).view(-1)


def grpo_loss(
    logps_new: torch.Tensor,
    logps_old: torch.Tensor,
    logps_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | tuple[float, float] = 0.2,
    beta_kl: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss with a k3 KL penalty, normalised over all tokens.

    Shapes: logps_* [N, L] (per-token log-probs of the sampled completions), advantages [N]
    (one per completion, broadcast over its tokens), mask [N, L] (1 on completion tokens).
    `logps_old` are the log-probs of the policy that sampled (detached); with one update per
    batch they equal `logps_new.detach()`, the ratio is 1 and the gradient is A * grad log pi.
    `clip_eps` may be a pair (low, high): DAPO's "clip higher" lets unlikely tokens grow more.
    Token-level normalisation (sum over every token of the batch / number of tokens, DAPO)
    weights each token equally, so long completions are not down-weighted per token as they
    are with GRPO's per-sequence mean.
    """
    eps_low, eps_high = (clip_eps, clip_eps) if isinstance(clip_eps, (int, float)) else clip_eps
    mask = mask.to(torch.bool)
    adv = advantages.float().unsqueeze(-1)  # [N, 1]
    ratio = torch.exp(logps_new.float() - logps_old.float().detach())
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    metrics: dict[str, torch.Tensor] = {}
    if logps_ref is not None:
        # k3 estimator of KL(pi || ref) from samples of pi: unbiased, always >= 0 (x - 1 >= log x).
        d = logps_ref.float().detach() - logps_new.float()
        kl = torch.exp(d) - d - 1
        if beta_kl != 0.0:
            per_token = per_token + beta_kl * kl
        metrics["kl"] = masked_mean(kl.detach(), mask)
    # A token is clipped when the clipped branch is the one min() picked and it has no gradient.
    is_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    metrics["clip_fraction"] = masked_mean(is_clipped.float(), mask)
    metrics["ratio"] = masked_mean(ratio.detach(), mask)
    loss = masked_mean(per_token, mask)
    return loss, metrics


# ----------------------------------------------------------------------------- PPO
# PPO learns a value V(s_t) per token and turns per-token rewards into advantages with GAE:
#   delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma * lambda * A_{t+1},
# with V = 0 after the last completion token; the value target ("return") is A_t + V(s_t).


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over [N, L] token rows -> (advantages, returns), both [N, L].

    `mask` marks the completion tokens (a row's unmasked positions are skipped: the step after a
    token is the next masked one, and after the last one the value is 0); advantages and returns
    are 0 where the mask is 0. No gradient flows: GAE works on rollout-time numbers.
    """
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise UserError(f"gamma and lambda must be in [0, 1], got {gamma} and {lam}")
    r, v, m = rewards.detach().float(), values.detach().float(), mask.to(torch.bool)
    adv = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):  # backwards: A_t needs A_{t+1}
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(m[:, t], a, 0.0)
        next_value = torch.where(m[:, t], v[:, t], next_value)
        next_adv = torch.where(m[:, t], a, next_adv)
    returns = torch.where(m, adv + v, 0.0)
    return adv, returns


def ppo_policy_loss(logps_new: torch.Tensor, logps_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate with per-token advantages [N, L]: mean over the mask of
    -min(r A, clip(r, 1 - eps, 1 + eps) A), r = exp(new - old)."""
    mask = mask.to(torch.bool)
    adv = advantages.float().detach()
    ratio = torch.exp(logps_new.float() - logps_old.float().detach())
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    is_clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))
    return masked_mean(per_token, mask), {"clip_fraction": masked_mean(is_clipped.float(), mask),
                                          "ratio": masked_mean(ratio.detach(), mask)}


def ppo_value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float | None = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: mean over the mask of 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).

    The clipped branch keeps one update from moving a value further than `clip` from the value
    the rollout saw (as PPO clips the policy ratio); `clip=None` is the plain squared error."""
    mask = mask.to(torch.bool)
    v, old, ret = values.float(), values_old.float().detach(), returns.float().detach()
    err = (v - ret) ** 2
    if clip is not None:
        err = torch.maximum(err, (old + (v - old).clamp(-clip, clip) - ret) ** 2)
    return 0.5 * masked_mean(err, mask), {"value_error": masked_mean((v.detach() - ret) ** 2, mask)}
