"""The MiniMind decoder-only transformer and its causal-LM head.

Contract:
- `MiniMindLM(config)` builds the model; `model(input_ids, labels=None, attention_mask=None,
  position_ids=None, kv_cache=None, logits_to_keep=0, doc_ids=None)` returns a `CausalLMOutput` with
  `.logits` [B, T, V] (T = logits_to_keep when given) and `.aux_loss` (the unweighted MoE balance
  loss averaged over MoE layers, 0 for dense models).
- With `labels` (aligned with input_ids, or with the kept positions, and shifted inside as in
  transformers) it returns instead `.loss`, the mean next-token cross-entropy over labels != -100
  (0, still differentiable, when there are none), and `.token_logps` [B, T-1] (log p of each next
  label, 0 where it is -100), and `.hidden` [B, T, h] (the final normalised hidden states, for
  losses that need whole logit rows, such as distillation), and `.logits` is None: the loss comes
  from the hidden states in chunks (`lm_loss.token_logprobs`), so the full-vocabulary logits never
  exist at once.
- `model.head_operands(x)` -> (x', W') with lm_head(x) == x' @ W'^T, the head as one matmul for
  chunked losses. A head with a LoRA adapter (`lm_head.lora`, see `train.lora`) folds it in: the
  adapter provides `head_operands(x, W)`. Any other hook on the head returns None (the forward then
  falls back to full logits).
- `doc_ids` [B, T] (document masking for packed rows, training and scoring only: no KV cache):
  a token attends only to earlier tokens of its own document (a run of equal ids), and its RoPE
  position restarts at 0 with each document unless `position_ids` are given. Each document's
  logits are then those of running it alone. Restarting positions is what Llama/Qwen long-context
  packing does; RoPE scores depend only on position differences, so within one document it
  changes no attention score, only rounding, and every document is seen as it will be at
  inference (starting at position 0). Without `doc_ids` nothing changes.
- Parameter names follow Llama/Qwen (`embed_tokens`, `layers.N.self_attn.q_proj`, ...), so
  export to Hugging Face is a prefix plus, for MoE, a few renames.

One block is pre-norm: x = x + attn(norm(x)); x = x + mlp(norm(x)). Normalising the input of
each sub-layer (not its output) keeps the residual stream an untouched sum, which is what lets
deep stacks train without warmup tricks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE_INDEX, ModelConfig
from .attention import Attention, document_mask, document_positions, use_flex
from .kv_cache import KVCache
from .layers import RMSNorm, SwiGLU
from .lm_loss import token_logprobs
from .moe import MoE
from .rope import RotaryTables


@dataclass
class CausalLMOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoE(config) if config.is_moe else SwiGLU(config.hidden_size, config.intermediate_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, layer_idx, cache, token_mask):
        # Dropout is the identity in eval mode or at p = 0: skipping the call saves two module
        # calls per layer of every decode step.
        drop = self.dropout if self.training and self.dropout.p > 0 else _identity
        x = x + drop(self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_idx, cache))
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            h, aux = self.mlp(h, token_mask)
        else:
            h, aux = self.mlp(h), None
        return x + drop(h), aux


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class MiniMindLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            # One matrix both embeds tokens and scores them: saves V*h parameters (12% of `small`).
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryTables(config.head_dim, config.max_seq_len, config.rope_theta, config.rope_scaling)
        self.apply(self._init_weights)
        # Residual-branch outputs get std / sqrt(2 * layers) (GPT-2): each layer adds two such
        # terms to the residual stream, and this keeps its variance independent of depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=config.initializer_range / math.sqrt(2 * config.num_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_kv_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """A cache for `batch_size` rows of up to `max_seq_len` tokens, on the model's device.

        Its dtype is `dtype`, else the autocast dtype when autocast is on (k and v then arrive in
        bf16/fp16: an fp32 cache would double its memory and recast every step), else the weights'."""
        w = self.embed_tokens.weight
        if dtype is None:
            on = torch.is_autocast_enabled(w.device.type)
            dtype = torch.get_autocast_dtype(w.device.type) if on else w.dtype
        return KVCache(self.config, batch_size, max_seq_len or self.config.max_seq_len, w.device, dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
        doc_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        B, T = input_ids.shape
        self.check_length((kv_cache.length if kv_cache is not None else 0) + T)
        if doc_ids is not None:
            mask, position_ids = self._document_mask(input_ids, doc_ids, attention_mask, position_ids, kv_cache)
        else:
            mask, position_ids = self._mask_and_positions(input_ids, attention_mask, position_ids, kv_cache)

        x = self.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids, x.dtype)
        x, aux_losses = self.run_layers(x, cos, sin, mask, kv_cache, attention_mask)
        if kv_cache is not None:
            kv_cache.commit(T)
        x = self.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        aux_loss = torch.stack(aux_losses).mean() if aux_losses else x.new_zeros((), dtype=torch.float32)
        if labels is None:
            return CausalLMOutput(logits=self.lm_head(x), aux_loss=aux_loss)
        # Position t predicts token t+1: drop the last hidden state and the first label.
        targets = labels[:, -x.shape[1]:][:, 1:]
        operands = self.head_operands(x[:, :-1].flatten(0, 1))
        if operands is None:  # a hook we cannot fold changes the head's output: go through it
            logits = self.lm_head(x[:, :-1]).float()
            token_logps = -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                           reduction="none")
        else:
            token_logps = token_logprobs(*operands, targets.flatten())
        token_logps = token_logps.view_as(targets)
        loss = -token_logps.sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)
        return CausalLMOutput(logits=None, loss=loss, aux_loss=aux_loss, token_logps=token_logps, hidden=x)

    def check_length(self, total: int) -> None:
        """Raise if a sequence of `total` tokens (cached + new) exceeds the model's context. Positions
        never exceed slots, so this also bounds the RoPE tables' index."""
        if total > self.config.max_seq_len:
            raise ValueError(f"sequence of {total} tokens exceeds max_seq_len {self.config.max_seq_len}")

    def run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask, cache,
                   token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The blocks over embedded x [B, T, h]: (hidden states [B, T, h], MoE balance losses).

        `cache` is a KVCache or anything with its `update(layer, k, v)` (the compiled decode step's
        slot writer, infer/static_decode.py)."""
        aux_losses = []
        for i, layer in enumerate(self.layers):
            x, aux = layer(x, cos, sin, mask, i, cache, token_mask)
            if aux is not None:
                aux_losses.append(aux)
        return x, aux_losses

    def head_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x', W') with lm_head(x) == x' @ W'^T, or None when a hook on the head cannot be folded."""
        head = self.lm_head
        if not (head._forward_hooks or head._forward_pre_hooks):
            return x, head.weight
        fold = getattr(getattr(head, "lora", None), "head_operands", None)
        if fold is None or head._forward_pre_hooks or len(head._forward_hooks) != 1:
            return None
        return fold(x, head.weight)

    def _mask_and_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                            position_ids: torch.Tensor | None, kv_cache: KVCache | None):
        """The attention mask (None: plain causal) and position ids of a forward without doc_ids.

        With a cache this reserves the new slots (`kv_cache.begin`): call it once per forward."""
        B, T = input_ids.shape
        if kv_cache is not None:
            past = kv_cache.length
            cache_pos = kv_cache.begin(T, attention_mask)
            position_ids = cache_pos if position_ids is None else position_ids
            need_mask = kv_cache.padded or (past > 0 and T > 1)
            return (self._mask(kv_cache.key_valid(past + T), past, T) if need_mask else None), position_ids
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            else:  # left padding: count only real tokens
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return (self._mask(attention_mask.bool(), 0, T) if attention_mask is not None else None), position_ids

    def _document_mask(self, input_ids: torch.Tensor, doc_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       position_ids: torch.Tensor | None, kv_cache: KVCache | None):
        """The block-diagonal mask (SDPA boolean, or flex BlockMask on CUDA) and per-document positions."""
        if kv_cache is not None:
            raise ValueError("doc_ids (document masking) is for full forwards; it cannot be used with a KV cache")
        if doc_ids.shape != input_ids.shape:
            raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)}, input_ids {tuple(input_ids.shape)}")
        key_valid = attention_mask.bool() if attention_mask is not None else None
        flex = use_flex(input_ids.device.type, self.config.dropout if self.training else 0.0)
        if position_ids is None:
            position_ids = document_positions(doc_ids)
        return document_mask(doc_ids, key_valid, flex), position_ids

    @staticmethod
    def _mask(key_valid: torch.Tensor | None, past: int, T: int) -> torch.Tensor:
        """Boolean [B, 1, T, S] mask: query slot past+i may see key slot j <= past+i if j is real.

        Every query may also see itself, so no row is fully masked (a fully masked row gives
        NaN in softmax, and a NaN in a padding slot would leak into real rows via 0 * NaN).
        """
        S = past + T
        device = key_valid.device
        q_slot = torch.arange(past, S, device=device).view(T, 1)
        k_slot = torch.arange(S, device=device).view(1, S)
        causal = k_slot <= q_slot  # [T, S]
        allowed = causal.unsqueeze(0) & key_valid[:, None, :]  # [B, T, S]
        allowed = allowed | (k_slot == q_slot).unsqueeze(0)
        return allowed.unsqueeze(1)
