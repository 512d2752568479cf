"""The ASGI guard in front of every route: who may talk to the server, and no raw 500s.

Contract: `Guard(app, allowed_hosts, api_key, max_body_bytes)` wraps the FastAPI app and,
before any route runs, answers in OpenAI's error shape:
- 403 when the Host header names a host that is not allowed. Allowed: `localhost`, any IP
  literal (127.0.0.1, [::1], the machine's LAN address...) and the names in `allowed_hosts`
  ("*" allows every host). A DNS-rebinding page reaches us under ITS OWN domain name, so
  refusing unknown names is what keeps such a page from reading our replies; an IP literal can
  never be that (the page would then be on our own origin).
- 413 when the declared Content-Length exceeds `max_body_bytes`.
- 401 on /v1/* without the right `Authorization: Bearer KEY` when `api_key` is set.
- 415 on a POST whose Content-Type is not JSON. A web page can send a cross-site POST without
  asking the browser's permission (no CORS preflight) only as text/plain, form data or with no
  type at all; requiring application/json means a foreign page can never start a generation.
Any exception a route lets escape is logged (logger "minimind.serve") with its traceback and
answered as a 500 `server_error`, when the response has not started yet.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Iterable

from fastapi.responses import JSONResponse

from .errors import APIError, error_body

log = logging.getLogger("minimind.serve")

LOCAL_NAMES = ("localhost",)


def host_name(header: str) -> str | None:
    """'example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'; None if malformed."""
    if header.startswith("["):
        end = header.find("]")
        name, rest = header[1:end], header[end + 1:]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
    else:
        name, sep, port = header.partition(":")
        if sep and not port.isdigit():
            return None  # also an unbracketed IPv6 address, which is not a valid Host
    return name.lower().rstrip(".") or None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    if "*" in allowed or header is None:  # no Host at all: HTTP/1.0, never a browser
        return True
    name = host_name(header)
    return name is not None and (name in allowed or name in LOCAL_NAMES or is_ip(name))


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json"


class Guard:
    """Pure ASGI middleware (not BaseHTTPMiddleware: streams and disconnects pass through untouched)."""

    def __init__(self, app, allowed_hosts: Iterable[str] = (), api_key: str | None = None,
                 max_body_bytes: int = 1 << 20) -> None:
        self.app = app
        self.allowed = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.api_key, self.max_body_bytes = api_key, max_body_bytes

    def check(self, scope: dict) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if not host_allowed(host, self.allowed):
            return APIError(403, f"Host {host!r} is not allowed; start the server with --allowed-hosts "
                                 f"{host_name(host) or host} to serve it under that name",
                            type="permission_error", code="host_not_allowed")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return APIError(413, f"request body of {length} bytes exceeds the {self.max_body_bytes}-byte limit",
                            code="request_too_large")
        if self.api_key and scope["path"].startswith("/v1/"):
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), self.api_key.encode()):
                msg = "missing API key (Authorization: Bearer ...)" if not token else "incorrect API key"
                return APIError(401, msg, type="authentication_error", code="invalid_api_key")
        if scope["method"] == "POST" and not is_json(headers.get("content-type")):
            return APIError(415, f"Content-Type must be application/json, got {headers.get('content-type')!r}",
                            code="unsupported_media_type")
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = self.check(scope)
        if err is not None:
            return await err.response()(scope, receive, send)
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not started:
                body = error_body("the server had an internal error; see its log", type="server_error")
                await JSONResponse(body, status_code=500)(scope, receive, send)
