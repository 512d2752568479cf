"""Multi-phase pretraining recipes: `minimind pretrain --recipe FILE --out RUN_DIR [--resume]`.

A recipe is JSON: training options at the top apply to every phase, options in a phase to that
phase only, and flags given on the command line override both:

    {"preset": "tiny", "seed": 0, "batch_size": 8,
     "phases": [{"name": "general", "data": {"a.jsonl": 0.7, "b.jsonl": 0.3}, "seq_len": 256,
                 "max_steps": 1000, "lr": 5e-4, "warmup_steps": 50, "schedule": "wsd", "decay_frac": 0},
                {"name": "long", "data": ["a.jsonl"], "seq_len": 1024, "max_steps": 200, ...},
                {"name": "anneal", "data": {"a.jsonl": 0.5, "hq.jsonl": 0.5}, "schedule": "wsd",
                 "decay_frac": 1.0, ...}]}

Contract:
- `data` maps sources (raw files or prepared directories) to mixture weights, streamed together
  (`data.mixture`); a list (or one path) is read as one plain stream, as `--data` is. Relative
  paths start at `--data-root`, else the recipe file's folder. Any other key is a `TrainConfig`
  option (`resolve_phases` validates every phase's config before anything trains).
- All phases train in one run directory: one step count, one metrics.jsonl whose every line
  names its phase (`"phase": "general"`), train lines with the realised mixture so far (`"mix"`).
  Each phase has its own data, sequence length, budget and LR schedule (the schedule counts from
  the phase's first step), and starts from the previous phase's final weights and optimizer
  moments (`snapshot.continue_phase`).
- Resume (`--resume`) reads where the run stands from its latest checkpoint (`locate`): inside a
  phase it resumes that phase exactly (data position, RNG, optimizer, as any run); at the end of
  a phase it starts the next one from that checkpoint, as the uninterrupted run did. Either way
  the final weights equal those of a run that was never interrupted. A checkpoint whose phase
  is not in the recipe, or whose options differ from its phase's, is refused (one line).
- `run_recipe(recipe, overrides, data_root) -> list[TrainResult]` trains the phases still to do
  and prints the realised proportions per phase (`mixture_table`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..data.mixture import check_weights, open_mixture
from ..errors import UserError
from ..locator import METRICS, has_checkpoint, latest_checkpoint
from ..recipes import read_recipe
from . import distributed as D
from .config import TrainConfig, knob
from .metrics import read_metrics
from .recipes import differences, finished, is_main_process, latest_state
from .stages.base import TrainContext
from .stages.pretrain import PretrainStage
from .trainer import Phase, Trainer, TrainResult

RECIPE_KEYS = ("phases", "about")  # top-level keys besides training options


@dataclasses.dataclass
class PhaseConfig(TrainConfig):
    """A phase's options: TrainConfig plus the weights of its data sources."""

    data_weights: list[float] = knob([], "mixture weight of each --data source (empty: one plain stream)")

    def validate(self) -> None:
        super().validate()
        if self.data_weights:
            check_weights(self.data, self.data_weights)


class MixedPretrainStage(PretrainStage):
    """Pretraining whose data may be a weighted mixture of several sources (`data.mixture`)."""

    config_class = PhaseConfig

    def __init__(self, config: PhaseConfig) -> None:
        super().__init__(config)
        self.stores: dict[str, Any] = {}  # each source tokenised once, for the train and held-out splits

    def batches(self, ctx: TrainContext, split: str = "train") -> Any:
        cfg = ctx.config
        if not cfg.data_weights:
            return super().batches(ctx, split)
        return open_mixture(cfg.data, cfg.data_weights, ctx.tokenizer, cfg.seq_len, cfg.batch_size, seed=cfg.seed,
                            rank=ctx.rank, world_size=ctx.world_size, split=split, skip_bad=cfg.skip_bad,
                            stores=self.stores, document_ids=cfg.document_mask)


def _data_options(data: Any, root: Path | None, where: str) -> dict[str, Any]:
    """A recipe's `data` as the `data` / `data_weights` options, relative paths placed at `root`."""
    listed = [data] if isinstance(data, str) else data
    if not (isinstance(data, dict) or isinstance(listed, list)) or not data or not all(isinstance(p, str) for p in listed):
        raise UserError(f"{where}: data must map sources to weights ({{\"a.jsonl\": 0.7, ...}}) or list them")
    sources = data if isinstance(data, dict) else dict.fromkeys(listed)
    paths = []
    for source in sources:
        path = Path(source)
        if not path.is_absolute():
            if root is None:
                raise UserError(f"{where}: data source {source!r} is relative; pass --data-root DIR (e.g. the "
                                f"folder `minimind data demo --out DIR` wrote)")
            path = root / path
        paths.append(str(path))
    weights = list(sources.values()) if isinstance(data, dict) else []
    return {"data": paths, "data_weights": weights}


def resolve_phases(recipe: dict[str, Any], where: str, root: Path | None,
                   overrides: dict[str, Any]) -> list[tuple[str, PhaseConfig]]:
    """(name, validated config) of every phase: defaults < recipe top < phase < command-line flags."""
    phases = recipe.get("phases")
    if not isinstance(phases, list) or not phases or not all(isinstance(p, dict) for p in phases):
        raise UserError(f"{where}: needs \"phases\": a non-empty list of objects")
    top = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}
    out, names = [], set()
    for i, phase in enumerate(phases):
        name = phase.get("name")
        if not isinstance(name, str) or not name.strip() or name in names:
            raise UserError(f"{where}: phase {i + 1} needs a \"name\" of its own, got {name!r}")
        names.add(name)
        options = {**top, **{k: v for k, v in phase.items() if k != "name"}}
        if "data" not in options:
            raise UserError(f"{where}: phase {name!r} names no data")
        options.update(_data_options(options.pop("data"), root, f"{where}: phase {name!r}"), **overrides)
        out.append((name, PhaseConfig.from_dict(options, source=f"{where}: phase {name!r}")))
    return out


def locate(run_dir: Path, phases: list[tuple[str, PhaseConfig]]) -> tuple[int, Phase, bool]:
    """(index of the phase to train next, its Phase, resume it?) from the run's latest checkpoint;
    index == len(phases) when every phase is done."""
    latest, meta = latest_state(run_dir)
    if latest is None:
        return 0, Phase(phases[0][0]), False
    names = [name for name, _ in phases]
    if meta.get("phase") not in names:
        raise UserError(f"{run_dir}: its latest checkpoint ({latest.name}) is of phase {meta.get('phase')!r}, "
                        f"which this recipe does not have ({', '.join(names)})")
    i = names.index(meta["phase"])
    diff = differences(meta.get("train_config", {}), phases[i][1])
    if diff:
        raise UserError(f"{run_dir}: phase {names[i]!r} was trained with other options ({'; '.join(diff[:3])}) "
                        f"than the recipe gives now; use another --out")
    if not finished(meta, None):
        return i, Phase(names[i], meta.get("phase_start", 0)), True
    if i + 1 == len(phases):
        return i + 1, Phase(), False
    return i + 1, Phase(names[i + 1], meta["step"], latest), False


def mixture_table(run_dir: Path, phases: list[tuple[str, PhaseConfig]]) -> str:
    """Markdown: per phase and source, the weight asked for and the realised share of rows."""
    last: dict[str, dict] = {}
    for record in read_metrics(Path(run_dir) / METRICS):
        if record.get("split") == "train" and "phase" in record:
            last[record["phase"]] = record
    lines = ["| phase | seq_len | steps | source | weight | realised |", "|---|---|---|---|---|---|"]
    for name, cfg in phases:
        weights = check_weights(cfg.data, cfg.data_weights) if cfg.data_weights else [1.0] * len(cfg.data)
        mix = last.get(name, {}).get("mix", {})
        for source, weight in zip(cfg.data, weights):
            share = mix.get(source)
            realised = f"{share:.4f}" if share is not None else ("(one stream)" if not cfg.data_weights else "n/a")
            lines.append(f"| {name} | {cfg.seq_len} | {cfg.max_steps} | {Path(source).name} | {weight:.4f} | {realised} |")
    return "\n".join(lines)


def run_recipe(recipe_file: str | Path, overrides: dict[str, Any], data_root: str | Path | None = None) -> list[TrainResult]:
    """Train the phases of a recipe still to do (module docstring); returns one result per phase trained."""
    recipe, folder = read_recipe(recipe_file)
    root = Path(data_root).resolve() if data_root else folder
    phases = resolve_phases(recipe, f"--recipe {recipe_file}", root, overrides)
    run_dir = Path(phases[0][1].out)
    if has_checkpoint(run_dir) and not phases[0][1].resume:
        raise UserError(f"{run_dir} already holds a run; add --resume to continue it, or choose another --out")
    index, phase, resume = locate(run_dir, phases)
    results, trainer = [], None
    try:
        for i in range(index, len(phases)):
            if i > index:  # the phase after one that just ended: from its final checkpoint
                phase, resume = Phase(phases[i][0], trainer.step, latest_checkpoint(run_dir)), False
            trainer = Trainer(MixedPretrainStage(dataclasses.replace(phases[i][1], resume=resume)), phase=phase)
            results.append(trainer.fit())
    finally:
        if trainer is not None and getattr(trainer, "dist", None) is not None:
            D.cleanup(trainer.dist)
    if is_main_process():
        print(f"\n== realised data proportions per phase ({run_dir / 'metrics.jsonl'}):\n{mixture_table(run_dir, phases)}")
    return results
