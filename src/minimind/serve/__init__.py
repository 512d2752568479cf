"""Serving: the OpenAI-compatible HTTP API and the web chat page, over `minimind.infer`.

Imports the inference engine (and the chat renderer); never training.
"""

from .app import create_app, serve
from .scheduler import Scheduler

__all__ = ["Scheduler", "create_app", "serve"]
