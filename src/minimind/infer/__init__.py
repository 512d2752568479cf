"""Text generation on token ids: sampling, KV-cached batched decoding, streaming detokenization.

Imports the model (and, in helpers, the tokenizer and chat renderer); knows nothing of HTTP.
"""

from .adapters import AdapterBank
from .engine import BatchRunner, Engine, Event, Sequence
from .loading import load_engine
from .sampling import InvalidParams, SamplingParams, sample_tokens
from .streaming import IncrementalDecoder, ReasoningSplitter, StopMatcher

__all__ = ["AdapterBank", "BatchRunner", "Engine", "Event", "IncrementalDecoder", "InvalidParams",
           "ReasoningSplitter", "SamplingParams", "Sequence", "StopMatcher", "load_engine", "sample_tokens"]
