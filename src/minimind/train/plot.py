"""`minimind plot RUN_DIR`: loss and learning-rate curves from metrics.jsonl, as PNG files.

Contract: `plot_run(run_dir)` reads `RUN_DIR/metrics.jsonl` and writes `RUN_DIR/loss.png`
(training loss per step, a smoothed line, and held-out loss points) and `RUN_DIR/lr.png`;
returns the written paths. Uses matplotlib's Agg canvas directly, so it never touches the
user's display backend.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .metrics import read_metrics


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (is this a training run directory?)")
    records = read_metrics(path)
    train = [r for r in records if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    val = [r for r in records if r.get("split") == "val" and isinstance(r.get("loss"), (int, float))]
    if not train:
        raise UserError(f"{path}: no training records to plot yet")
    written = []

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    ax.plot(steps, losses, alpha=0.3, color="tab:blue", label="train")
    if len(losses) > 10:
        ax.plot(steps, _smooth(losses), color="tab:blue", label="train (smoothed)")
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", color="tab:orange", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png")
    written.append(run_dir / "loss.png")

    fig = Figure(figsize=(7, 3), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, [r.get("lr", 0.0) for r in train], color="tab:green")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "lr.png")
    written.append(run_dir / "lr.png")
    return written
