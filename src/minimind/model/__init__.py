"""The MiniMind model: config-driven decoder-only transformer (dense or MoE) with a KV cache.

This package imports nothing from training, data or serving.
"""

from .kv_cache import KVCache
from .transformer import CausalLMOutput, MiniMindLM

__all__ = ["CausalLMOutput", "KVCache", "MiniMindLM"]
