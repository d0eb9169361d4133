"""Query parameters shared by list endpoints: time window, order, page size, keyset cursor.

Times in the API are ISO-8601 (a naive time is UTC) or integer ns since the epoch (the
``*_ns`` parameters take what ``time_ns`` / ``time_ns_str`` output); in the store they are
integer ns. The cursor is opaque to clients: urlsafe base64 of the JSON keyset
``[capture_time_ns, id, order]`` of the last row on the page. It remembers the order it
pages in, so a cursor from an ``order=newest`` page cannot silently walk the other way.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, TypeVar

from fastapi import Depends, Query
from pydantic import BeforeValidator

from cloud.api.errors import ApiError

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = 1 << 63

INT64_MAX = 2**63 - 1
"""Ids, sequences and ns times are signed 64-bit in the database."""


class Order(StrEnum):
    oldest = "oldest"
    newest = "newest"


def _not_ns(value: object) -> object:
    """A ``time_ns`` pasted into ``since``/``until`` would be read as a Unix timestamp and
    fail with "dates after 9999"; say which parameter takes it instead."""
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value.lstrip("-")) > 13:
        raise ValueError(
            f"{value} looks like ns since the epoch: pass it as 'since_ns' / 'until_ns' "
            "(this parameter takes ISO-8601)"
        )
    return value


CameraQ = Annotated[str | None, Query(max_length=128, description="Only this camera id")]
SinceQ = Annotated[
    datetime | None,
    BeforeValidator(_not_ns),
    Query(description="Capture time from (inclusive), ISO-8601; a naive time is UTC"),
]
UntilQ = Annotated[
    datetime | None,
    BeforeValidator(_not_ns),
    Query(description="Capture time up to (exclusive), ISO-8601; a naive time is UTC"),
]
SinceNsQ = Annotated[
    int | None,
    Query(
        ge=-INT64_MAX,
        le=INT64_MAX,
        description="Capture time from (inclusive), ns since the epoch (a `time_ns` value); "
        "instead of `since`",
    ),
]
UntilNsQ = Annotated[
    int | None,
    Query(
        ge=-INT64_MAX,
        le=INT64_MAX,
        description="Capture time up to (exclusive), ns since the epoch; instead of `until`",
    ),
]
LimitQ = Annotated[int, Query(ge=1, le=1000, description="Rows per page")]
CursorQ = Annotated[
    str | None,
    Query(
        max_length=256,
        description="`next_cursor` of the previous page (with the same `order`); omit for the "
        "first",
    ),
]
OrderQ = Annotated[
    Order,
    Query(description="`oldest` first (capture time, then id) or `newest` first"),
]


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


def _one_of(iso: datetime | None, ns: int | None, field: str) -> int | None:
    if iso is not None and ns is not None:
        raise ApiError(
            400,
            f"query parameters '{field}' and '{field}_ns' give the same bound twice; pass one",
            field=field,
        )
    return ns if iso is None else bounded_ns(iso, field)


def time_window(
    since: datetime | None,
    until: datetime | None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> tuple[int | None, int | None]:
    lo = _one_of(since, since_ns, "since")
    hi = _one_of(until, until_ns, "until")
    if lo is not None and hi is not None and lo >= hi:
        raise ApiError(
            400,
            f"query parameters 'since' ({iso_utc(lo)}) and 'until' ({iso_utc(hi)}): "
            "'since' must be earlier than 'until' ('until' is exclusive)",
            field="since",
        )
    return lo, hi


@dataclass(frozen=True)
class TimeWindow:
    since_ns: int | None
    until_ns: int | None


def time_window_query(
    since: SinceQ = None, until: UntilQ = None, since_ns: SinceNsQ = None, until_ns: UntilNsQ = None
) -> TimeWindow:
    return TimeWindow(*time_window(since, until, since_ns, until_ns))


TimeWindowDep = Annotated[TimeWindow, Depends(time_window_query)]


def encode_cursor(time_ns: int, row_id: int | str, order: Order = Order.oldest) -> str:
    raw = json.dumps([time_ns, row_id, order.value], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _is_int64(v: object) -> bool:
    return type(v) is int and -_INT64 <= v < _INT64


def _keyset(cursor: str, order: Order, id_is_str: bool) -> tuple[int, int | str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        keyset = json.loads(raw)
        if not isinstance(keyset, list):
            raise ValueError("a cursor is a JSON list")
        if len(keyset) == 2:  # cursors handed out before `order` existed page oldest first
            keyset.append(Order.oldest.value)
        t, i, cursor_order = keyset
        id_ok = isinstance(i, str) and 0 < len(i) <= 64 if id_is_str else _is_int64(i)
        if not (_is_int64(t) and id_ok):
            raise ValueError("keyset values must be a 64-bit time and an id")
        cursor_order = Order(cursor_order)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ApiError(
            400,
            "query parameter 'cursor' is not a cursor this API returned; pass `next_cursor` "
            "from the previous page unchanged, or omit it for the first page",
            field="cursor",
        ) from exc
    if cursor_order is not order:
        raise ApiError(
            400,
            f"query parameter 'cursor' pages order={cursor_order.value}, but 'order' is "
            f"{order.value}; pass the order of the page the cursor came from, or omit the "
            "cursor to start over",
            field="cursor",
        )
    return t, i


def decode_cursor(cursor: str | None, order: Order = Order.oldest) -> tuple[int, int] | None:
    """The keyset (time, integer id) of a cursor this API returned; it must page in ``order``."""
    if cursor is None:
        return None
    t, i = _keyset(cursor, order, id_is_str=False)
    assert isinstance(i, int)
    return t, i


def decode_str_cursor(cursor: str | None, order: Order) -> tuple[int, str] | None:
    """As ``decode_cursor``, for rows keyed by a string id (view jobs: uuids)."""
    if cursor is None:
        return None
    t, i = _keyset(cursor, order, id_is_str=True)
    assert isinstance(i, str)
    return t, i


@dataclass(frozen=True)
class PageQuery:
    limit: int
    order: Order
    after: tuple[int, int] | None
    """keyset (capture_time_ns, id) of the last row already returned, in ``order``"""

    @property
    def newest_first(self) -> bool:
        return self.order is Order.newest


def page_query(
    limit: LimitQ = 100, cursor: CursorQ = None, order: OrderQ = Order.oldest
) -> PageQuery:
    return PageQuery(limit=limit, order=order, after=decode_cursor(cursor, order))


PageDep = Annotated[PageQuery, Depends(page_query)]


K = TypeVar("K", int, str)


def page(
    rows: Sequence[T], limit: int, order: Order, keyset: Callable[[T], tuple[int, K]]
) -> tuple[list[T], str | None]:
    """Rows fetched with ``limit + 1`` → this page and the cursor of the next (None at end)."""
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), encode_cursor(*keyset(rows[limit - 1]), order)


# ── multi-valued filters ─────────────────────────────────────────────────────

MAX_VALUES = 100
"""Values one repeated query parameter may carry (camera=a&camera=b…)."""


def many(values: list[str] | None, field: str, max_length: int = 128) -> tuple[str, ...] | None:
    """A repeated parameter as a tuple, duplicates dropped in order; each value checked."""
    if not values:
        return None
    if len(values) > MAX_VALUES:
        raise ApiError(400, f"query parameter '{field}': at most {MAX_VALUES} values", field=field)
    for value in values:
        if not 0 < len(value) <= max_length:
            raise ApiError(
                400,
                f"query parameter '{field}': {value[:40]!r} must be 1 to {max_length} characters",
                field=field,
            )
    return tuple(dict.fromkeys(values))


CamerasQ = Annotated[
    list[str] | None,
    Query(description="Only these cameras; repeat for several (`camera=a&camera=b`)"),
]
LabelsQ = Annotated[
    list[str] | None,
    Query(description="Only these class labels; repeat for several (`label=person&label=car`)"),
]


# ── timeline buckets ─────────────────────────────────────────────────────────


class Bucket(StrEnum):
    """Timeline bucket widths a client may ask for."""

    s10 = "10s"
    m1 = "1m"
    m5 = "5m"
    m15 = "15m"
    h1 = "1h"
    h6 = "6h"
    d1 = "1d"

    @property
    def ns(self) -> int:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.value[-1]]
        return int(self.value[:-1]) * unit * 1_000_000_000


MAX_BUCKETS = 10_000
