"""The Stage protocol: everything a training stage decides; the Trainer does the rest.

A stage answers five questions, and the loop asks nothing else:

(a) which parameters train          `prepare_model` (e.g. attach LoRA, freeze the base) and
                                    `trainable_parameters`
(b) how a batch is made             `batches(ctx, split)`: an endless iterator of batch dicts with
                                    `state_dict()` / `load_state_dict()` (a data loader, or a
                                    generator that samples from the current model, as GRPO will)
(c) the loss                        `loss(model, batch, ctx) -> (scalar, {name: metric})`, metrics
                                    as 0-dim tensors (or floats): the trainer reads them only when
                                    it logs, so a step costs no host sync per micro-batch
(d) extra models                    `extra_models(ctx)`: frozen reference / teacher models; the
                                    Trainer moves them to the device, freezes them, and puts them
                                    in `ctx.extra`
(e) what to save                    `save_weights` / `load_weights` (full model, or adapters only)

plus small hooks: `batch_weight` (how much a micro-batch counts when gradient-accumulating: by
default its number of loss tokens, which makes k micro-batches exactly equal one big batch),
`batch_tokens` (throughput), `sample_prompts` (generations logged at evaluation) and
`on_train_end`.

A stage is registered in `minimind.train.stages.STAGES` with its own `config_class` (a
`TrainConfig` subclass); `minimind <stage>` then exists with a flag per config field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ...errors import UserError
from ..config import TrainConfig

if TYPE_CHECKING:  # torch stays unimported until training starts: `minimind --help` is instant
    import torch
    from torch import nn


class Batches(Protocol):
    """What `Stage.batches` returns: endless, resumable."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DerivedBatches:
    """Batches made from another loader's batches, one by one (GRPO rollouts, reasoning mixes).

    `count` numbers the batches made so far and seeds whatever randomness a subclass uses, so the
    resume state is the source loader's position plus `count`. Subclasses define `make(batch)`.
    """

    def __init__(self, loader: Batches) -> None:
        self.loader, self.count = loader, 0

    def make(self, batch: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def __iter__(self) -> "DerivedBatches":
        return self

    def __next__(self) -> dict[str, Any]:
        batch = self.make(next(self.loader))
        self.count += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.count = int(state["count"])


@dataclass
class TrainContext:
    """What the Trainer shares with its stage."""

    config: TrainConfig
    device: "torch.device"
    rank: int = 0
    world_size: int = 1
    tokenizer: Any = None  # minimind.tokenizer.Tokenizer, or None in synthetic tests
    run_dir: Path | None = None
    model: "nn.Module | None" = None  # the unwrapped model being trained (for generation)
    extra: "dict[str, nn.Module]" = field(default_factory=dict)  # frozen models from extra_models
    autocast: Any = None  # callable returning the autocast context manager for forward passes
    step: int = 0
    init_path: Path | None = None  # the checkpoint --init resolved to (None: from scratch)


class Stage:
    """Default behaviour = causal-LM training on a data loader of `data_kind` batches."""

    name: ClassVar[str] = "base"
    help: ClassVar[str] = ""
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    data_kind: ClassVar[str] = "pretrain"
    requires_init: ClassVar[bool] = False  # True: `--init` is mandatory (fine-tuning stages)
    order: ClassVar[int] = 100  # position in `minimind --help` (pretrain 10, sft 20, lora 30, ...)
    # The trainer may make batches ahead on a background thread (on CUDA). False for stages whose
    # batches depend on the model being trained (GRPO samples them from the current policy).
    prefetch_batches: ClassVar[bool] = True

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    # (a) which parameters train --------------------------------------------------------------

    def prepare_model(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        """Modify the freshly built/loaded model before it is wrapped (attach adapters, freeze)."""
        return model

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    # (b) how a batch is made -----------------------------------------------------------------

    def batches(self, ctx: TrainContext, split: str = "train") -> Batches:
        from ...data.loader import make_loader

        cfg = ctx.config
        if not cfg.data:
            raise UserError(f"`minimind {self.name}` needs --data FILE_OR_DIR")
        return make_loader(self.data_kind, cfg.data, ctx.tokenizer, cfg.seq_len, cfg.batch_size,
                           seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size, split=split,
                           skip_bad=cfg.skip_bad)

    def batch_weight(self, batch: dict[str, Any]) -> float:
        """Loss tokens in this micro-batch: labels[:, 1:] != -100 (the model shifts labels)."""
        return float((batch["labels"][:, 1:] != -100).sum())

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].numel())

    # (c) the loss ----------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """Mean next-token cross-entropy over label tokens, plus the weighted MoE balance loss.

        A micro-batch without any loss token (an SFT row cut before its answer) gets the model's
        zero loss, which still touches the graph (DDP needs that); its weight is 0 anyway."""
        input_ids = batch["input_ids"].to(ctx.device, non_blocking=True)
        labels = batch["labels"].to(ctx.device, non_blocking=True)
        out = model(input_ids, labels=labels)
        loss = out.loss
        metrics: dict[str, Any] = {}
        if ctx.model is not None and ctx.model.config.is_moe:
            loss = loss + ctx.model.config.aux_loss_coef * out.aux_loss
            metrics["aux_loss"] = out.aux_loss.detach()
        return loss, metrics

    # (d) extra models ------------------------------------------------------------------------

    def extra_models(self, ctx: TrainContext) -> dict[str, nn.Module]:
        return {}

    # (e) what to save ------------------------------------------------------------------------

    def save_weights(self, model: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path,
                     ctx: TrainContext) -> None:
        """Write the weights of a checkpoint; `state_dict` is full (gathered) and on CPU."""
        from ...checkpoint import save_model

        tok_dir = getattr(ctx.tokenizer, "path", None)
        sd = dict(state_dict)
        if model.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        save_model(model, folder, tokenizer_dir=tok_dir, state_dict=sd)

    def load_weights(self, model: nn.Module, folder: Path, ctx: TrainContext) -> None:
        """Restore the weights `save_weights` wrote (called on resume, before wrapping)."""
        from ...checkpoint import WEIGHTS_NAME, CheckpointError, load_weights, read_safetensors

        path = Path(folder) / WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing")
        load_weights(model, read_safetensors(path), source=str(path))

    # hooks -----------------------------------------------------------------------------------

    def run_instead_of_training(self) -> bool:
        """Do a stage's non-training job, if its config asks for one, and return True.

        Example: `minimind distill --generate OUT` writes teacher answers instead of training.
        The default does nothing, and the CLI then builds the Trainer as usual."""
        return False

    def sample_prompts(self, ctx: TrainContext) -> list[list[int]]:
        """Token-id prompts for the sample generations logged at evaluation."""
        return []

    def on_train_end(self, model: nn.Module, ctx: TrainContext) -> None:
        """Called on rank 0 after the final checkpoint (e.g. LoRA writes a merged model)."""
