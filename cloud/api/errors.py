"""One error shape for every 4xx/5xx the API returns.

    ApiError / HTTPException / RequestValidationError / anything else
        ─► handle_error ─► {"error": {"status": 422, "message": "...", "field": "min_score"}}

``field`` names the bad parameter (or null); ``message`` says what is wrong with it.
FastAPI's own 422s keep their status and get a message that names the parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header"}


class ApiError(StarletteHTTPException):
    """An HTTP error that names the bad field; extra keys go into the error object."""

    def __init__(
        self,
        status_code: int,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code, message, dict(headers) if headers else None)
        self.field = field
        self.extra = extra


def error_body(status: int, message: str, field: str | None, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "message": message, "field": field, **extra}}


def describe_validation(errors: Sequence[Any]) -> tuple[str, str | None]:
    """FastAPI's validation errors → one message naming each bad parameter, and the first."""
    messages, fields = [], []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        where, names = (loc[0], loc[1:]) if loc else ("request", [])
        msg = str(err.get("msg", "invalid value"))
        if names and where in _LOCATIONS:
            messages.append(f"{_LOCATIONS[where]} '{'.'.join(names)}': {msg}")
        elif names and where == "body" and err.get("type") != "json_invalid":
            messages.append(f"body field '{'.'.join(names)}': {msg}")
        else:
            messages.append(f"request {where}: {msg}")
            names = []
        if names:
            fields.append(".".join(names))
    return "; ".join(messages) or "invalid request", (fields[0] if fields else None)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RequestValidationError):
        message, field = describe_validation(exc.errors())
        return JSONResponse(error_body(422, message, field), status_code=422)
    if isinstance(exc, StarletteHTTPException):
        field = getattr(exc, "field", None)
        extra = getattr(exc, "extra", {})
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), field, **extra),
            status_code=exc.status_code,
            headers=exc.headers,
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body(500, "internal server error", None), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handle_error)
