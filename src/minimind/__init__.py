"""MiniMind: train, fine-tune, serve and export small language models, every line in view.

`import minimind` stays cheap (no torch): `MiniMindLM` and `load_model` are resolved on first use,
so data tools and their worker processes never pay for importing torch. This facade is also where
the readers of foreign model folders are registered (`locator.register_importer`), from above:
`load_model` imports `minimind.interop` (Hugging Face folders) and `minimind.upstream` (upstream
MiniMind folders), so that the checkpoint layer below them imports no converter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig, get_preset

if TYPE_CHECKING:  # for the annotations only: importing them would import torch
    import torch

    from .model import MiniMindLM

__version__ = "0.1.0"


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> MiniMindLM:
    """Load a model from one of our checkpoints, a run directory, or a Hugging Face folder.

    See `minimind.checkpoint.load_model` for the details.
    """
    from . import interop, upstream  # noqa: F401 -- importing them registers their folder readers
    from .checkpoint import load_model as _load

    return _load(path, device=device, dtype=dtype)


def __getattr__(name: str) -> type:
    # PEP 562 lazy attribute: `minimind.MiniMindLM` imports torch only when asked for.
    if name == "MiniMindLM":
        from .model import MiniMindLM

        return MiniMindLM
    raise AttributeError(f"module 'minimind' has no attribute {name!r}")


__all__ = ["MiniMindLM", "ModelConfig", "get_preset", "load_model", "__version__"]
