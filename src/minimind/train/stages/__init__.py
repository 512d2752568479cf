"""The stage registry: every module in this package that defines `STAGE` is a training stage.

Contract: `stage_registry()` returns name -> Stage class, in `order`; `get_stage(name)` one of
them (a UserError names the choices). A new stage is one new file here with a `Stage` subclass,
its config class and `STAGE = ThatStage`; the CLI (`minimind <name> ...` with a flag per config
field) and the Trainer pick it up without any other change. The shared conventions a stage
builds on (forward with the MoE balance loss, seeds, config defaults) are the toolkit at the end
of `base.py`.
"""

from __future__ import annotations

import importlib
import pkgutil

from ...errors import UserError
from .base import Stage, TrainContext


def stage_registry() -> dict[str, type[Stage]]:
    found: list[type[Stage]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        stage = getattr(module, "STAGE", None)
        if stage is not None:
            found.append(stage)
    found.sort(key=lambda s: (s.order, s.name))
    return {s.name: s for s in found}


def get_stage(name: str) -> type[Stage]:
    stages = stage_registry()
    if name not in stages:
        raise UserError(f"unknown training stage {name!r}; choose one of: {', '.join(stages)}")
    return stages[name]


__all__ = ["Stage", "TrainContext", "get_stage", "stage_registry"]
