"""GET /v1/detections: filtered by camera, label, time window and score; keyset pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from cloud.api.auth import ReadKey, check_camera, require_read
from cloud.api.deps import BundleDep, StoreDep
from cloud.api.errors import ApiError
from cloud.api.params import CameraQ, PageDep, TimeWindowDep, page
from cloud.api.schemas import DetectionOut, DetectionPage, error_responses
from cloud.store.records import DetectionQuery

router = APIRouter(
    prefix="/v1/detections",
    tags=["detections"],
    dependencies=[Depends(require_read)],
    responses=error_responses(401, 403),
)


@router.get("", summary="Query detections", responses=error_responses(400, 422))
def query_detections(
    store: StoreDep,
    bundle: BundleDep,
    key: ReadKey,
    window: TimeWindowDep,
    paging: PageDep,
    camera: CameraQ = None,
    label: Annotated[str | None, Query(max_length=128, description="Class label")] = None,
    min_score: Annotated[float | None, Query(ge=0, le=1, description="Lowest score")] = None,
) -> DetectionPage:
    """Detections ordered by capture time (then id), oldest first unless `order=newest`.
    Follow `next_cursor` for more."""
    if label is not None and label not in bundle.class_names:
        raise ApiError(
            400,
            f"query parameter 'label': {label!r} is not a class of this deployment's "
            f"detector; valid labels: {bundle.class_names}",
            field="label",
        )
    if camera is not None:
        check_camera(key, camera)
    query = DetectionQuery(
        camera_id=camera,
        cameras=key.camera_filter,
        label=label,
        since_ns=window.since_ns,
        until_ns=window.until_ns,
        min_score=min_score,
        limit=paging.limit + 1,  # one more row tells whether there is a next page
        after=paging.after,
        newest_first=paging.newest_first,
    )
    found = store.query_detections(query)
    rows, next_cursor = page(found, paging, lambda d: (d.capture_time_ns, d.id))
    return DetectionPage(items=[DetectionOut.of(d) for d in rows], next_cursor=next_cursor)
