"""MiniMind: train, fine-tune, serve and export small language models, every line in view.

`import minimind` stays cheap (no torch): `MiniMindLM` and `load_model` are resolved on first use,
so data tools and their worker processes never pay for importing torch.
"""

from .config import ModelConfig, get_preset

__version__ = "0.1.0"


def load_model(path, device="cpu", dtype=None):
    """Load a model from one of our checkpoints, a run directory, or a Hugging Face folder.

    See `minimind.checkpoint.load_model` for the details.
    """
    from .checkpoint import load_model as _load

    return _load(path, device=device, dtype=dtype)


def __getattr__(name: str):
    # PEP 562 lazy attribute: `minimind.MiniMindLM` imports torch only when asked for.
    if name == "MiniMindLM":
        from .model import MiniMindLM

        return MiniMindLM
    raise AttributeError(f"module 'minimind' has no attribute {name!r}")


__all__ = ["MiniMindLM", "ModelConfig", "get_preset", "load_model", "__version__"]
