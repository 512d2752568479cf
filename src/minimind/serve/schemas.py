"""Pydantic models of the OpenAI request bodies the server accepts: nothing unvalidated reaches the engine.

Contract:
- `parse(raw: bytes, Model)` parses and validates a request body in one pass (pydantic's own
  JSON parser: it also refuses invalid UTF-8 and lone surrogates such as "\\ud800") and raises
  a 400 `APIError` naming the first bad field. `read_request(request, Model, max_bytes, served)`
  reads the body (413 past `max_bytes`, also for chunked uploads that declare no length), parses
  it, and answers 404 when its `model` is not one of the `served` names.
- Types are strict: `"stream": "false"` or `"max_tokens": "5"` are errors, not coerced; floats
  must be finite. Unknown top-level fields are refused (as OpenAI does) so a misspelled
  parameter is not silently ignored. Nested objects may carry extra keys (clients echo back
  fields such as `refusal`), but only the declared ones are passed on.
- Fields we accept but cannot honour are refused when set to anything that would change the
  result (n > 1, non-zero penalties, logit_bias, response_format other than text,
  echo, best_of); harmless bookkeeping fields (user, metadata, store)
  are accepted and ignored. `logprob_count` is the number of alternatives per token the
  request asked for (None: no logprobs): chat `logprobs`+`top_logprobs` (0..20), legacy
  completions `logprobs` (0..5).
- `ChatRequest.messages_for_renderer()` gives the plain dicts `chat.render_prompt` reads.
- Tools: `tools` (OpenAI function definitions), `tool_choice` ("auto", "none", "required" or
  {"type": "function", "function": {"name": N}}; see tool_calls.py for how it is honoured),
  `tool` messages with `tool_call_id`, and the extension `execute_tools` (the web page's flag:
  the server runs its own built-in tools in an agent loop, see agent_route.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import APIError, from_validation

NonEmptyStr = Annotated[str, Field(min_length=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class _Nested(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# -- messages -----------------------------------------------------------------------------------


class TextPart(_Nested):
    type: Literal["text"]  # this model reads text only: image/audio/file parts are refused
    text: str


class FunctionCall(_Nested):
    name: NonEmptyStr
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends a JSON string; an object is accepted too


class ToolCall(_Nested):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Nested):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def for_renderer(self) -> dict:
        content = self.content
        if isinstance(content, list):  # OpenAI content parts: their texts, in order
            content = "".join(p.text for p in content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.reasoning_content is not None:
            out["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            out["tool_calls"] = [{"type": "function", "function": c.function.model_dump()} for c in self.tool_calls]
        return out


class FunctionDef(_Nested):
    name: NonEmptyStr
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Nested):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Nested):
    name: NonEmptyStr


class NamedToolChoice(_Nested):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Nested):
    include_usage: bool | None = None


class ResponseFormat(_Nested):
    type: Literal["text"]  # json_object / json_schema would need constrained decoding


class TemplateKwargs(_Nested):
    enable_thinking: bool | None = None


# -- requests -----------------------------------------------------------------------------------


class _Sampling(_Request):
    """Fields shared by both endpoints."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] | None = None  # extension (vLLM-style)
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10)] | None = None  # extension
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=8)] | None = None
    seed: Annotated[int, Field(ge=-(1 << 63), lt=1 << 64)] | None = None
    n: Literal[1] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("not supported (use repetition_penalty); only 0 is accepted")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict | None) -> dict | None:
        if value:
            raise ValueError("not supported")
        return value


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    execute_tools: bool | None = None  # extension: the server runs its built-in tools (serve --tools)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    enable_thinking: bool | None = None  # extension; also read from chat_template_kwargs
    chat_template_kwargs: TemplateKwargs | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @property
    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def thinking(self) -> bool:
        if self.enable_thinking is not None:
            return self.enable_thinking
        kwargs = self.chat_template_kwargs
        return kwargs.enable_thinking if kwargs and kwargs.enable_thinking is not None else True

    def messages_for_renderer(self) -> list[dict]:
        return [m.for_renderer() for m in self.messages]

    def tool_names(self) -> set[str] | None:
        """Names of the functions the model may call (None: no tools offered, or tool_choice "none")."""
        if not self.tools or self.tool_choice == "none":
            return None
        return {t.function.name for t in self.tools}

    def tools_for_renderer(self) -> list[dict] | None:
        if not self.tools or self.tool_choice == "none":  # "none": the model is not shown the tools
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    # A string, a list of token ids, or a batch of exactly one of either (batches of several: 400).
    prompt: NonEmptyStr | TokenIds | Annotated[list[NonEmptyStr], Field(min_length=1, max_length=1)] \
        | Annotated[list[TokenIds], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # the legacy API's count of top tokens
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def token_budget(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens  # the legacy API's default

    def prompt_text_or_ids(self) -> str | list[int]:
        p = self.prompt
        return p[0] if isinstance(p, list) and isinstance(p[0], (str, list)) else p


def parse(raw: bytes, model: type[BaseModel]) -> Any:
    """Validate a request body (bytes of JSON) against `model`; a 400 APIError otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise from_validation(err) from None


async def read_request(request: Request, model: type[BaseModel], max_bytes: int, served: list[str]) -> Any:
    """The body of `request`, size-limited and validated against `model`; 404 for a model not `served`."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:  # chunked uploads declare no length: the guard cannot see them
            raise APIError(413, f"request body exceeds the {max_bytes}-byte limit", code="request_too_large")
    req = parse(raw, model)
    if req.model is not None and req.model not in served:
        raise APIError(404, f"the model {req.model!r} does not exist; this server serves "
                            f"{', '.join(repr(m) for m in served)}", param="model", code="model_not_found")
    return req
