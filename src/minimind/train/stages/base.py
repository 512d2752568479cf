"""The Stage protocol: everything a training stage decides; the Trainer does the rest.

A stage answers five questions, and the loop asks nothing else:

(a) which parameters train          `prepare_model` (e.g. attach LoRA, freeze the base) and
                                    `trainable_parameters`
(b) how a batch is made             `batches(ctx, split)`: an endless iterator of batch dicts with
                                    `state_dict()` / `load_state_dict()` (a data loader, or a
                                    generator that samples from the current model, as GRPO does)
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

A stage module defines `STAGE = ThatStage` with its own `config_class` (a `TrainConfig` subclass);
`stages.stage_registry()` finds it and `minimind <stage>` then exists with a flag per config field.

The stage toolkit: conventions every stage shares, each decided once, here.
- `forward_with_aux(model, input_ids, ctx, **kw)`: the forward pass plus the weighted MoE
  load-balancing loss; every stage's loss is its own objective + `.aux` (0.0 for dense models).
- `step_seed(seed, counter, ...)`: the one formula that turns the run seed and a step / batch /
  sample / turn counter into a sampler seed (resume-exact: it depends on the counters only).
- `with_defaults(**values)`: a stage config changes an inherited field's default without
  redeclaring the field (its help text stays the parent's; `--help` shows the new default).
- The ignore label is `model.lm_loss.IGNORE_INDEX` and the think/tool tags are the tokenizer's
  (`tokenizer.THINK_START`, ...); the reasoning splitter is `chat.split_reasoning`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import nn

from ...checkpoint import load_weights, read_safetensors, save_model
from ...config import IGNORE_INDEX
from ...data.loader import make_loader
from ...errors import UserError
from ...locator import WEIGHTS_NAME, CheckpointError
from ..config import TrainConfig


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
    device: torch.device
    rank: int = 0
    world_size: int = 1
    tokenizer: Any = None  # minimind.tokenizer.Tokenizer, or None in synthetic tests
    run_dir: Path | None = None
    model: nn.Module | None = None  # the unwrapped model being trained (for generation)
    extra: dict[str, nn.Module] = field(default_factory=dict)  # frozen models from extra_models
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
        cfg = ctx.config
        if not cfg.data:
            raise UserError(f"`minimind {self.name}` needs --data FILE_OR_DIR")
        return make_loader(self.data_kind, cfg.data, ctx.tokenizer, cfg.seq_len, cfg.batch_size,
                           seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size, split=split,
                           skip_bad=cfg.skip_bad, document_ids=cfg.document_mask)

    def batch_weight(self, batch: dict[str, Any]) -> float:
        """Loss tokens in this micro-batch: labels[:, 1:] != IGNORE_INDEX (the model shifts labels)."""
        return float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].numel())

    # (c) the loss ----------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: dict[str, Any], ctx: TrainContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """Mean next-token cross-entropy over label tokens, plus the weighted MoE balance loss.

        A micro-batch without any loss token (an SFT row cut before its answer) gets the model's
        zero loss, which still touches the graph (DDP needs that); its weight is 0 anyway."""
        docs = batch.get("doc_ids")  # --document-mask: attend within each packed document only
        f = forward_with_aux(model, batch["input_ids"], ctx, labels=batch["labels"].to(ctx.device, non_blocking=True),
                             doc_ids=None if docs is None else docs.to(ctx.device, non_blocking=True))
        return f.out.loss + f.aux, f.metrics

    # (d) extra models ------------------------------------------------------------------------

    def extra_models(self, ctx: TrainContext) -> dict[str, nn.Module]:
        return {}

    # (e) what to save ------------------------------------------------------------------------

    def save_weights(self, model: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path,
                     ctx: TrainContext) -> None:
        """Write the weights of a checkpoint; `state_dict` is full (gathered) and on CPU."""
        tok_dir = getattr(ctx.tokenizer, "path", None)
        sd = dict(state_dict)
        if model.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        save_model(model, folder, tokenizer_dir=tok_dir, state_dict=sd)

    def load_weights(self, model: nn.Module, folder: Path, ctx: TrainContext) -> None:
        """Restore the weights `save_weights` wrote (called on resume, before wrapping)."""
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


# ----------------------------------------------------------------------------- the stage toolkit


class Forward(NamedTuple):
    """What `forward_with_aux` returns."""

    out: Any  # the model's output: .loss and .token_logps (with labels=) or .logits, and .aux_loss
    aux: Any  # aux_loss_coef * the MoE balance loss (a 0-dim tensor); 0.0 for a dense model
    metrics: dict[str, Any]  # {"aux_loss": the unweighted balance loss, detached} for MoE, else {}


def forward_with_aux(model: nn.Module, input_ids: torch.Tensor, ctx: TrainContext, **kwargs: Any) -> Forward:
    """`model(input_ids, **kwargs)` on `ctx.device`, and the MoE auxiliary loss its stage must add.

    Every stage's loss is `its objective + .aux`: without the Switch-style balance term the router
    of a MoE model sends most tokens to a few experts and the others stop learning. A frozen
    reference or teacher is called directly: its balance loss trains nothing. `ctx.model` (the
    unwrapped model) decides whether this is a MoE, since `model` may be a DDP/compiled wrapper."""
    out = model(input_ids.to(ctx.device, non_blocking=True), **kwargs)
    config = getattr(ctx.model, "config", None)
    if config is None or not config.is_moe:
        return Forward(out, 0.0, {})
    return Forward(out, config.aux_loss_coef * out.aux_loss, {"aux_loss": out.aux_loss.detach()})


# step_seed's digits: the run seed is scaled past any step or batch count (a prime, so seeds of
# neighbouring runs do not line up), then room for 4096 samples per batch and 64 turns per sample.
SEED_RADICES = (1_000_003, 4096, 64)


def step_seed(seed: int, *counters: int) -> int:
    """One sampler seed from the run seed and up to three counters (step or batch, sample, turn).

    A mixed-radix number: step_seed(s, n) = s * 1_000_003 + n, step_seed(s, n, i) =
    (s * 1_000_003 + n) * 4096 + i and step_seed(s, n, i, t) = step_seed(s, n, i) * 64 + t. It
    depends on the counters only (never on time, rank or how many batches were drawn before a
    resume), so a resumed run samples exactly what the uninterrupted one would have."""
    if not 1 <= len(counters) <= len(SEED_RADICES):
        raise ValueError(f"step_seed takes 1 to {len(SEED_RADICES)} counters, got {len(counters)}")
    value = seed
    for radix, counter in zip(SEED_RADICES, counters):
        value = value * radix + counter
    return value


def with_defaults(**values: Any) -> Callable[[type], type]:
    """Class decorator, placed under `@dataclass`: inherited config fields get new defaults.

        @dataclass
        @with_defaults(lr=5e-5)
        class SFTConfig(TrainConfig): ...

    The field keeps its place, type and help text (the CLI's flag order and `--help` text), only
    its default changes, so `minimind sft --help` prints SFT's default, JSON configs round-trip
    as before, and a value passed explicitly (even the parent's default) is kept. A name that is
    not an inherited field, or one the class body declares itself, is a programming error."""

    def apply(cls: type) -> type:
        parent = next(b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b))
        inherited = {f.name: f for f in dataclasses.fields(parent)}
        own = cls.__dict__.get("__annotations__", {})
        hints = typing.get_type_hints(parent)
        for name, value in values.items():
            if name not in inherited or name in own:
                raise TypeError(f"with_defaults: {cls.__name__}.{name} is not an inherited field it may re-default")
            meta = inherited[name].metadata
            new = (field(default_factory=lambda v=value: list(v), metadata=meta) if isinstance(value, list)
                   else field(default=value, metadata=meta))
            setattr(cls, name, new)
            own[name] = hints[name]  # a type object: resolving it needs no module of ours
        cls.__annotations__ = own
        return cls

    return apply
