"""Errors the server sends, in OpenAI's shape, and how request-validation errors map onto them.

Contract:
- `APIError(status, message, type, param, code)` is raised anywhere in a request's handling;
  the app turns it into `{"error": {"message", "type", "param", "code"}}` with that status.
- `error_body(...)` builds that JSON object (also used for errors sent inside an SSE stream and
  by the ASGI guard, which answers before the app runs).
- `from_validation(err)` turns a pydantic `ValidationError` into a 400 `APIError` naming the
  first bad field: `param` is the top-level request field, the message gives the full path
  (`messages[0].content[1].text: Input should be a valid string`).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import ValidationError


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An error answered to the client as-is (status + OpenAI error object)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _path(loc: tuple) -> str:
    """('messages', 0, 'content', 'list[TextPart]', 1, 'text') -> 'messages[0].content[1].text'.

    Pydantic puts the name of the union member it tried into the location; those segments
    (anything that is not a plain field name or an index) are dropped.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in ("str", "int", "float", "bool", "list", "dict", "none"):
            out += f".{part}" if out else part
    return out


def from_validation(err: ValidationError) -> APIError:
    """The first (deepest) problem of a failed request validation, as a 400."""
    errors = err.errors(include_url=False, include_input=False)
    # Of the errors pydantic reports for the alternatives of a union, the deepest one is the
    # one about what the client meant (a list of parts with a bad part, not "not a string").
    first = max(errors, key=lambda e: len(e["loc"]))
    loc, kind = tuple(first["loc"]), first["type"]
    path = _path(loc)
    if kind == "json_invalid":
        return APIError(400, f"the body is not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})")
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {path}", param=path)
    if kind == "model_type" and not loc:
        return APIError(400, "the body must be a JSON object")
    param = next((p for p in loc if isinstance(p, str)), None)
    msg = first["msg"].removeprefix("Value error, ")  # our own validators' messages
    message = f"{path}: {msg}" if path else msg
    return APIError(400, message, param=param)
