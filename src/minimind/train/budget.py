"""How many optimizer steps a run takes: from the config, and re-planned against a wall clock.

Contract:
- `planned_steps(cfg, batches, world_size)` is the smallest of --max-steps, --max-tokens (in
  steps of the global batch) and --epochs (in steps over the loader's length).
- `WallClock(minutes, clock)` serves --max-minutes: after every step, `replan(step, total)` returns
  the new total, never more than before: the steps done so far plus as many more as the time left
  allows at the measured speed, where the speed is the mean of the last `WINDOW` steps
  (evaluation and saving included), so a machine that slows down mid-run is noticed within a few
  steps. When no time is left it returns `step`: the run ends now, with its final checkpoint.
  The LR schedule is a pure function of (step, total), so its cosine decay shrinks with the total
  and still ends at the minimum LR on the last step.
- `clock` is injectable (tests drive it by hand); by default `time.monotonic`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .config import TrainConfig

WINDOW = 10  # steps in the moving speed estimate: recent enough to see a slowdown, long enough to average noise


def batches_per_epoch(batches: Any) -> int | None:
    """Micro-batches per epoch on this rank, if the batch source can tell."""
    if hasattr(batches, "__len__"):
        return len(batches)
    units = getattr(batches, "samples_per_epoch", None)  # minimind.data Loader: rows per epoch
    batch_size = getattr(batches, "batch_size", None)
    if isinstance(units, int) and batch_size:
        return max(1, units // batch_size)
    return None


def planned_steps(cfg: TrainConfig, batches: Any, world_size: int) -> int:
    limits = []
    if cfg.max_steps:
        limits.append(cfg.max_steps)
    if cfg.max_tokens:
        per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world_size
        limits.append(math.ceil(cfg.max_tokens / per_step))
    if cfg.epochs:
        per_epoch = batches_per_epoch(batches)
        if per_epoch is None:
            raise UserError("--epochs needs a data loader that knows its length; use --max-steps or --max-tokens")
        limits.append(max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)))
    return min(limits)


class WallClock:
    """Shrinks the step budget so the run ends within `minutes` of its start (see module docstring)."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        start = clock()
        self.deadline = start + 60 * minutes
        self.ends: deque[float] = deque([start], maxlen=WINDOW + 1)  # end times of the last steps

    def replan(self, step: int, total: int) -> int:
        now = self.clock()
        self.ends.append(now)
        left = self.deadline - now
        per_step = (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)
        if left <= 0:
            return min(step, total)
        if per_step <= 0:
            return total
        return min(total, step + int(left // per_step))
