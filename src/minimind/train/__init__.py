"""Training: one Trainer for every stage; stages plug in through `minimind.train.stages`.

    from minimind.train import Trainer, get_stage, load_config
    cfg = load_config(get_stage("pretrain").config_class, None, {"data": ["pretrain.jsonl"], "out": "runs/x", "max_steps": 100})
    Trainer(get_stage("pretrain")(cfg)).fit()

Attributes are imported lazily so that `import minimind.train` (and `minimind --help`) stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import TrainConfig, load_config
from .stages import Stage, TrainContext, get_stage, stage_registry

_LAZY = {"Trainer": "trainer", "TrainResult": "trainer", "TrainingError": "trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["Stage", "TrainConfig", "TrainContext", "TrainResult", "Trainer", "TrainingError", "get_stage",
           "load_config", "stage_registry"]
