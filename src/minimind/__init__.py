"""MiniMind: train, fine-tune, serve and export small language models, every line in view."""

from .config import ModelConfig, get_preset
from .model import MiniMindLM

__version__ = "0.1.0"


def load_model(path, device="cpu", dtype=None):
    """Load a model from one of our checkpoints, a run directory, or a Hugging Face folder.

    See `minimind.checkpoint.load_model` for the details; imported lazily so that
    `import minimind` stays cheap.
    """
    from .checkpoint import load_model as _load

    return _load(path, device=device, dtype=dtype)


__all__ = ["MiniMindLM", "ModelConfig", "get_preset", "load_model", "__version__"]
