"""Query parameters shared by list endpoints: time window, page size, keyset cursor.

Times in the API are ISO-8601 (a naive time is UTC); in the store they are integer
ns since the epoch. The cursor is opaque to clients: urlsafe base64 of the JSON
keyset ``[capture_time_ns, id]`` of the last row on the page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import Query

from cloud.api.errors import ApiError

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = 1 << 63

CameraQ = Annotated[str | None, Query(max_length=128, description="Only this camera id")]
SinceQ = Annotated[
    datetime | None,
    Query(description="Capture time from (inclusive), ISO-8601; a naive time is UTC"),
]
UntilQ = Annotated[
    datetime | None,
    Query(description="Capture time up to (exclusive), ISO-8601; a naive time is UTC"),
]
LimitQ = Annotated[int, Query(ge=1, le=1000, description="Rows per page")]
CursorQ = Annotated[
    str | None,
    Query(max_length=256, description="`next_cursor` of the previous page; omit for the first"),
]


INT64_MAX = 2**63 - 1
"""Ids, sequences and ns times are signed 64-bit in the database."""


def to_ns(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - EPOCH) // timedelta(microseconds=1) * 1000


def iso_utc(ns: int) -> str:
    """ns since the epoch → ISO-8601 UTC with microseconds and a 'Z'."""
    t = EPOCH + timedelta(microseconds=ns // 1000)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def optional_iso(ns: int | None) -> str | None:
    return None if ns is None else iso_utc(ns)


def bounded_ns(t: datetime, field: str) -> int:
    """``to_ns`` for a query parameter: times a signed 64-bit ns count cannot hold are a 400."""
    ns = to_ns(t)
    if not -INT64_MAX <= ns <= INT64_MAX:
        raise ApiError(
            400, f"query parameter '{field}': {t.isoformat()} is outside 1678..2262", field=field
        )
    return ns


def time_window(since: datetime | None, until: datetime | None) -> tuple[int | None, int | None]:
    since_ns = None if since is None else bounded_ns(since, "since")
    until_ns = None if until is None else bounded_ns(until, "until")
    if since_ns is not None and until_ns is not None and since_ns >= until_ns:
        raise ApiError(
            400,
            f"query parameters 'since' ({iso_utc(since_ns)}) and 'until' ({iso_utc(until_ns)}): "
            "'since' must be earlier than 'until' ('until' is exclusive)",
            field="since",
        )
    return since_ns, until_ns


def encode_cursor(capture_time_ns: int, row_id: int) -> str:
    raw = json.dumps([capture_time_ns, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> tuple[int, int] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        t, i = json.loads(raw)
        if not all(type(v) is int and -_INT64 <= v < _INT64 for v in (t, i)):
            raise ValueError("keyset values must be 64-bit integers")
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ApiError(
            400,
            "query parameter 'cursor' is not a cursor this API returned; pass `next_cursor` "
            "from the previous page unchanged, or omit it for the first page",
            field="cursor",
        ) from exc
    return t, i


def page(
    rows: Sequence[T], limit: int, keyset: Callable[[T], tuple[int, int]]
) -> tuple[list[T], str | None]:
    """Rows fetched with ``limit + 1`` → this page and the cursor of the next (None at the end)."""
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), encode_cursor(*keyset(rows[limit - 1]))
