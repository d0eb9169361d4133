"""GET /v1/detections: filtered by camera(s), label(s), time window and score; keyset pages.
GET /v1/detections/counts: the same filters counted per time bucket, for timelines."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from cloud.api.auth import ReadKey, camera_selection, require_read
from cloud.api.deps import BundleDep, StoreDep
from cloud.api.errors import ApiError
from cloud.api.params import (
    MAX_BUCKETS,
    Bucket,
    CamerasQ,
    LabelsQ,
    PageDep,
    TimeWindowDep,
    iso_utc,
    many,
    page,
)
from cloud.api.schemas import (
    CountBucketOut,
    DetectionCounts,
    DetectionOut,
    DetectionPage,
    error_responses,
)
from cloud.store.api_keys import ApiKey
from cloud.store.records import DetectionQuery
from codec.bundle import Bundle

router = APIRouter(
    prefix="/v1/detections",
    tags=["detections"],
    dependencies=[Depends(require_read)],
    responses=error_responses(401, 403),
)

MinScoreQ = Annotated[float | None, Query(ge=0, le=1, description="Lowest score")]
DEFAULT_COUNT_WINDOW_NS = 24 * 3600 * 1_000_000_000


def _filters(
    key: ApiKey, bundle: Bundle, camera: list[str] | None, label: list[str] | None
) -> DetectionQuery:
    """The camera and label part of a detection query, checked against key and bundle."""
    labels = many(label, "label")
    unknown = [x for x in labels or () if x not in bundle.class_names]
    if unknown:
        raise ApiError(
            400,
            f"query parameter 'label': {', '.join(map(repr, unknown))} "
            f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of this "
            f"deployment's detector; valid labels: {bundle.class_names}",
            field="label",
        )
    one, allowed = camera_selection(key, many(camera, "camera"))
    # One value is an equality (the camera+… indexes); several an IN list.
    return DetectionQuery(
        camera_id=one,
        cameras=allowed,
        label=labels[0] if labels and len(labels) == 1 else None,
        labels=labels if labels and len(labels) > 1 else None,
    )


@router.get("", summary="Query detections", responses=error_responses(400, 422))
def query_detections(
    store: StoreDep,
    bundle: BundleDep,
    key: ReadKey,
    window: TimeWindowDep,
    paging: PageDep,
    camera: CamerasQ = None,
    label: LabelsQ = None,
    min_score: MinScoreQ = None,
) -> DetectionPage:
    """Detections ordered by capture time (then id), oldest first unless `order=newest`.
    Follow `next_cursor` for more."""
    base = _filters(key, bundle, camera, label)
    query = DetectionQuery(
        **{
            **base.__dict__,
            "since_ns": window.since_ns,
            "until_ns": window.until_ns,
            "min_score": min_score,
            "limit": paging.limit + 1,  # one more row tells whether there is a next page
            "after": paging.after,
            "newest_first": paging.newest_first,
        }
    )
    found = store.query_detections(query)
    rows, next_cursor = page(found, paging.limit, paging.order, lambda d: (d.capture_time_ns, d.id))
    return DetectionPage(items=[DetectionOut.of(d) for d in rows], next_cursor=next_cursor)


@router.get(
    "/counts",
    summary="Count detections per time bucket (a timeline)",
    responses=error_responses(400, 422),
)
def count_detections(
    store: StoreDep,
    bundle: BundleDep,
    key: ReadKey,
    window: TimeWindowDep,
    bucket: Annotated[Bucket, Query(description="Bucket width")] = Bucket.h1,
    by_label: Annotated[bool, Query(description="Split each bucket's count by label")] = False,
    camera: CamerasQ = None,
    label: LabelsQ = None,
    min_score: MinScoreQ = None,
) -> DetectionCounts:
    """Buckets of `bucket` width from `since` (default: 24 h before `until`, which defaults
    to now), oldest first; buckets without detections are left out. At most 10,000 buckets."""
    until_ns = window.until_ns if window.until_ns is not None else time.time_ns()
    since_ns = (
        window.since_ns if window.since_ns is not None else until_ns - DEFAULT_COUNT_WINDOW_NS
    )
    if since_ns >= until_ns:
        raise ApiError(
            400,
            f"query parameter 'since' ({iso_utc(since_ns)}) must be earlier than 'until' "
            f"({iso_utc(until_ns)}, now when not given)",
            field="since",
        )
    if (until_ns - since_ns) // bucket.ns > MAX_BUCKETS:
        raise ApiError(
            400,
            f"query parameter 'bucket': {bucket.value} buckets over "
            f"{iso_utc(since_ns)}..{iso_utc(until_ns)} would be more than {MAX_BUCKETS}; "
            "pick a wider bucket or a shorter window",
            field="bucket",
        )
    base = _filters(key, bundle, camera, label)
    query = DetectionQuery(
        **{**base.__dict__, "since_ns": since_ns, "until_ns": until_ns, "min_score": min_score}
    )
    rows = store.count_detections(query, since_ns, bucket.ns, by_label=by_label)
    buckets: dict[int, CountBucketOut] = {}
    for row in rows:
        out = buckets.setdefault(
            row.start_ns,
            CountBucketOut(
                start=iso_utc(row.start_ns),
                start_ns=row.start_ns,
                count=0,
                labels={} if by_label else None,
            ),
        )
        out.count += row.count
        if out.labels is not None and row.label is not None:
            out.labels[row.label] = row.count
    return DetectionCounts(
        bucket=bucket,
        since=iso_utc(since_ns),
        since_ns=since_ns,
        until=iso_utc(until_ns),
        until_ns=until_ns,
        total=sum(b.count for b in buckets.values()),
        buckets=list(buckets.values()),
    )
