"""`minimind plot RUN_DIR`: loss and learning-rate curves from metrics.jsonl, as PNG files.

Contract: `plot_run(run_dir)` reads `RUN_DIR/metrics.jsonl` and writes `RUN_DIR/loss.png`
(training loss per step, a smoothed line, and held-out loss points), `RUN_DIR/lr.png` and, for
RL runs that log a per-step `reward`, `RUN_DIR/reward.png`; returns the written paths. Uses
matplotlib's Agg canvas directly, so it never touches the user's display backend. Damaged lines
(not UTF-8, not JSON, wrong types) are skipped; a file without any training record is a UserError.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .metrics import read_metrics


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _figure(height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, ax, path: Path, xlabel: str, ylabel: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _noisy_curve(ax, steps: list[int], values: list[float], color: str, label: str) -> None:
    """Raw values faintly, and a smoothed line once there are enough points to smooth."""
    ax.plot(steps, values, alpha=0.3, color=color, label=label)
    if len(values) > 10:
        ax.plot(steps, _smooth(values), color=color, label=f"{label} (smoothed)")


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (is this a training run directory?)")
    # Only well-formed records: read_metrics already skipped lines that are not JSON (or not UTF-8).
    records = [r for r in read_metrics(path) if isinstance(r.get("step"), int)]
    train = [r for r in records if r.get("split") == "train" and _number(r.get("loss"))]
    val = [r for r in records if r.get("split") == "val" and _number(r.get("loss"))]
    if not train:
        raise UserError(f"{path}: no training records to plot yet")
    steps = [r["step"] for r in train]
    written = []

    fig, ax = _figure(4)
    _noisy_curve(ax, steps, [r["loss"] for r in train], "tab:blue", "train")
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", color="tab:orange", label="held-out")
    ax.set_title(run_dir.name)
    ax.legend()
    written.append(_save(fig, ax, run_dir / "loss.png", "step", "loss (nats/token)"))

    fig, ax = _figure(3)
    ax.plot(steps, [r["lr"] if _number(r.get("lr")) else float("nan") for r in train], color="tab:green")
    written.append(_save(fig, ax, run_dir / "lr.png", "step", "learning rate"))

    rewarded = [r for r in train if _number(r.get("reward"))]
    if rewarded:  # RL stages (GRPO) log the mean reward of each step's samples
        fig, ax = _figure(3.5)
        _noisy_curve(ax, [r["step"] for r in rewarded], [r["reward"] for r in rewarded], "tab:purple", "mean reward")
        ax.set_title(run_dir.name)
        ax.legend()
        written.append(_save(fig, ax, run_dir / "reward.png", "step", "reward"))
    return written
