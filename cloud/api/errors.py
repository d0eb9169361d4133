"""Every 4xx/5xx the API returns is an RFC 9457 problem details object.

    ApiError / HTTPException / RequestValidationError / anything else
        ─► handle_error ─► application/problem+json
           {"type": "https://fchm.dev/problems/validation-error", "title": "Unprocessable Entity",
            "status": 422, "detail": "...", "instance": "/v1/detections", "field": "min_score"}

``type`` names the kind of problem by status (``PROBLEM_BASE`` + a slug), ``title`` is the
status's reason phrase, ``detail`` says what is wrong and ``instance`` is the request path.
``field`` (the bad parameter, or null) and any extra keys of an ApiError (e.g.
``view_status``) are extension members beside them. Headers (Retry-After,
WWW-Authenticate, Allow) pass through. FastAPI's own 422s keep their status and get a
detail that names the parameter.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://fchm.dev/problems/"
# Fixed here, not taken from http.HTTPStatus: its phrases change between Python versions
# (413, 422) and a problem type URI must not. Other statuses slug their reason phrase.
_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "too-many-requests",
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}
_LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header"}


class ApiError(StarletteHTTPException):
    """An HTTP error that names the bad field; extra keys become extension members."""

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


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def status_title(status: int) -> str:
    """The reason phrase of ``status``: 'Bad Request', 'Not Found', ..."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Client Error" if status < 500 else "Server Error"


def problem_type(status: int) -> str:
    """``https://fchm.dev/problems/<slug>``: bad-request, not-found, validation-error, ..."""
    slug = _SLUGS.get(status) or "-".join(status_title(status).lower().replace("-", " ").split())
    return PROBLEM_BASE + slug


def problem_body(
    status: int, detail: str, instance: str, field: str | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(status),
        "title": status_title(status),
        "status": status,
        "detail": detail,
        "instance": instance,
        "field": field,
    }
    # Extension members never replace the standard ones.
    body.update({k: v for k, v in extra.items() if k not in body})
    return body


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


async def handle_error(request: Request, exc: Exception) -> ProblemResponse:
    path = request.url.path
    if isinstance(exc, RequestValidationError):
        message, field = describe_validation(exc.errors())
        return ProblemResponse(problem_body(422, message, path, field), status_code=422)
    if isinstance(exc, StarletteHTTPException):
        field = getattr(exc, "field", None)
        extra = getattr(exc, "extra", {})
        return ProblemResponse(
            problem_body(exc.status_code, str(exc.detail), path, field, **extra),
            status_code=exc.status_code,
            headers=exc.headers,
        )
    log.exception("unhandled error on %s %s", request.method, path, exc_info=exc)
    return ProblemResponse(problem_body(500, "internal server error", path, None), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handle_error)
