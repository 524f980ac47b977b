"""Operating erpwatch over HTTP: ``POST /api/targets/{name}/restart|stop|start`` and
``POST /api/reload``, the same requests as the control socket carries.

Accepted only with ``ERPWATCH_STATUS_TOKEN`` sent as ``Authorization: Bearer …`` (a token
in the query string, fine for reading the page, is not enough to act); with no token
configured HTTP control is off (403). A browser cannot be tricked into it from another
site: a cross-site form cannot set that header, and an ``Origin`` that is not this server's
own is refused (403) as well.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from watchdog.control import Peer
from watchdog.settings import Settings

Control = Callable[[Mapping[str, Any], Peer], Awaitable[dict[str, Any]]]
ACTIONS = ("restart", "stop", "start")
_API = Peer(None, None, "api")  # recorded as the actor "operator (api)"
MAX_BODY = 16 * 1024


def control_routes(settings: Settings, control: Control | None) -> list[Route]:
    token = settings.status_token.get_secret_value() if settings.status_token else None

    async def refuse_or_none(request: Request) -> JSONResponse | None:
        if control is None or token is None:
            return _error(403, "HTTP control is off: set ERPWATCH_STATUS_TOKEN to enable it")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            return _error(401, "send Authorization: Bearer <ERPWATCH_STATUS_TOKEN>")
        origin = request.headers.get("origin")
        if origin is not None and not _same_origin(origin, request):
            return _error(403, f"cross-site request refused (Origin {origin[:100]!r})")
        return None

    async def act(request: Request) -> JSONResponse:
        refusal = await refuse_or_none(request)
        if refusal is not None:
            return refusal
        action = request.path_params["action"]
        if action not in ACTIONS:
            return _error(404, f"unknown action {action!r} (expected one of {', '.join(ACTIONS)})")
        reason = await _reason(request)
        if isinstance(reason, JSONResponse):
            return reason
        assert control is not None
        answer = await control(
            {"command": action, "targets": [request.path_params["name"]], "reason": reason},
            _API,
        )
        return _answer(answer)

    async def reload(request: Request) -> JSONResponse:
        refusal = await refuse_or_none(request)
        if refusal is not None:
            return refusal
        assert control is not None
        return _answer(await control({"command": "reload", "targets": [], "reason": ""}, _API))

    return [
        Route("/api/targets/{name}/{action}", act, methods=["POST"]),
        Route("/api/reload", reload, methods=["POST"]),
    ]


async def _reason(request: Request) -> str | JSONResponse:
    """The ``reason`` of a JSON body. The body is never read past `MAX_BODY`: a declared
    Content-Length above it is refused before reading, a body without one (chunked) as soon
    as it grows past it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _too_large()
    if not body:
        return ""
    try:
        document = json.loads(body)
    except ValueError:
        return _error(400, 'the body must be JSON, e.g. {"reason": "deploy"}')
    reason = document.get("reason", "") if isinstance(document, dict) else None
    if not isinstance(reason, str) or len(reason) > 500:
        return _error(400, "reason must be a text of at most 500 characters")
    return reason


def _same_origin(origin: str, request: Request) -> bool:
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return bool(parts.scheme in ("http", "https") and parts.netloc and parts.netloc == host)


def _answer(answer: Mapping[str, Any]) -> JSONResponse:
    if answer.get("ok"):
        return JSONResponse(dict(answer))
    error = str(answer.get("error", ""))
    status = 404 if error.startswith("unknown target") else 409
    return JSONResponse(dict(answer), status_code=status)


def _too_large() -> JSONResponse:
    # The unread rest of the body makes the connection unusable: close it.
    response = _error(413, f"request body too large (at most {MAX_BODY} bytes)")
    response.headers["Connection"] = "close"
    return response


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": text}, status_code=status)
