"""Training: one Trainer for every stage; stages plug in through `minimind.train.stages`.

    from minimind.train import Trainer, get_stage, load_config
    cfg = load_config(get_stage("pretrain").config_class, None, {"data": ["pretrain.jsonl"], "out": "runs/x", "max_steps": 100})
    Trainer(get_stage("pretrain")(cfg)).fit()
"""

from __future__ import annotations

from .config import TrainConfig, load_config
from .stages import Stage, TrainContext, get_stage, stage_registry
from .trainer import Trainer, TrainingError, TrainResult

__all__ = ["Stage", "TrainConfig", "TrainContext", "TrainResult", "Trainer", "TrainingError", "get_stage",
           "load_config", "stage_registry"]
