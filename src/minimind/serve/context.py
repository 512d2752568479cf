"""The one application state every route reads: `request.app.state.ctx`.

Contract: `Context(engine, scheduler, model_name, max_body_bytes, tools)` holds what the routes
share -- the engine (and its tokenizer), the scheduler that generates for it, the names it
serves (the model and its loaded LoRA adapters), the body-size limit, the server's own tools
(None: it executes none) and the creation time /v1/models reports. Routes read it; only
`create_app` (app.py) builds it. It holds no per-request data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..infer import Engine
from ..tokenizer import Tokenizer
from ..tools import ToolRegistry
from .logprobs import TokenBytes
from .scheduler import Scheduler


@dataclass
class Context:
    engine: Engine
    scheduler: Scheduler
    model_name: str
    max_body_bytes: int
    tools: ToolRegistry | None = None  # the server's own tools, run only for execute_tools requests
    created: int = field(default_factory=lambda: int(time.time()))
    tokenizer: Tokenizer = field(init=False)
    token_bytes: TokenBytes = field(init=False)

    def __post_init__(self) -> None:
        self.tokenizer = self.engine.tokenizer
        self.token_bytes = TokenBytes(self.tokenizer)

    @property
    def served(self) -> list[str]:
        """The names a request's `model` may give: the base model first, then each adapter."""
        return [self.model_name, *self.engine.adapter_names]
