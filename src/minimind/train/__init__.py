"""Training: one Trainer for every stage; stages plug in through `minimind.train.stages`.

    from minimind.train import run_stage
    run_stage("pretrain", data=["pretrain.jsonl"], out="runs/x", max_steps=100)   # reused if finished, resumed if not

`run_stage` (train/recipes.py) is the one way code runs a stage: it builds the config, then the
Trainer, or reuses a finished run. Underneath it, by hand:

    cfg = load_config(get_stage("pretrain").config_class, None, {"data": ["pretrain.jsonl"], "out": "runs/x"})
    Trainer(get_stage("pretrain")(cfg)).fit()
"""

from __future__ import annotations

from .config import TrainConfig, load_config
from .recipes import run_stage
from .stages import Stage, TrainContext, get_stage, stage_registry
from .trainer import Trainer, TrainingError, TrainResult

__all__ = ["Stage", "TrainConfig", "TrainContext", "TrainResult", "Trainer", "TrainingError", "get_stage",
           "load_config", "run_stage", "stage_registry"]
