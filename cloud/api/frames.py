"""GET /v1/frames, /v1/frames/{id} (with its detections), /v1/frames/{id}/bitstream."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from cloud.api.auth import ReadKey, check_camera, require_read
from cloud.api.deps import StoreDep
from cloud.api.errors import ApiError
from cloud.api.params import INT64_MAX, CameraQ, PageDep, TimeWindowDep, page
from cloud.api.schemas import DetectionOut, FrameDetail, FrameOut, FramePage, error_responses
from cloud.store.api_keys import ApiKey
from cloud.store.frame_store import FrameStore
from cloud.store.records import DetectionQuery, FrameRecord

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/frames",
    tags=["frames"],
    dependencies=[Depends(require_read)],
    responses=error_responses(401, 403),
)

FrameId = Annotated[int, Path(ge=1, le=INT64_MAX, description="Frame id")]

MAX_DETECTIONS_PER_FRAME = 1000  # the detector tail keeps at most 300


@router.get("", summary="List frames", responses=error_responses(400, 422))
def list_frames(
    store: StoreDep,
    key: ReadKey,
    window: TimeWindowDep,
    paging: PageDep,
    camera: CameraQ = None,
) -> FramePage:
    """Frames ordered by capture time (then id), oldest first unless `order=newest`.
    Follow `next_cursor` for more."""
    if camera is not None:
        check_camera(key, camera)
    found = store.list_frames(
        camera,
        window.since_ns,
        window.until_ns,
        paging.limit + 1,
        paging.after,
        newest_first=paging.newest_first,
        cameras=key.camera_filter,
    )
    rows, next_cursor = page(
        found, paging.limit, paging.order, lambda f: (f.capture_time_ns, f.id or 0)
    )
    return FramePage(items=[FrameOut.of(f) for f in rows], next_cursor=next_cursor)


@router.get("/{frame_id}", summary="One frame and its detections", responses=error_responses(404))
def get_frame(frame_id: FrameId, store: StoreDep, key: ReadKey) -> FrameDetail:
    frame = _frame_or_404(store, frame_id, key)
    found = store.query_detections(
        DetectionQuery(frame_id=frame_id, limit=MAX_DETECTIONS_PER_FRAME)
    )
    return FrameDetail.model_validate(
        {**FrameOut.fields_of(frame), "detections": [DetectionOut.of(d) for d in found]}
    )


@router.get(
    "/{frame_id}/bitstream",
    summary="The frame's stored bitstream, byte for byte",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404, 500)},
)
def get_bitstream(frame_id: FrameId, store: StoreDep, key: ReadKey) -> Response:
    frame = _frame_or_404(store, frame_id, key)
    try:
        data = store.read_bitstream(frame)
    except FileNotFoundError as exc:
        log.error("frame %d: bitstream blob %s is missing", frame_id, frame.bitstream_key)
        raise ApiError(500, f"the bitstream of frame {frame_id} is missing from storage") from exc
    name = f"frame-{frame_id}.fchm"  # not the camera id: it may not be header-safe
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _frame_or_404(store: FrameStore, frame_id: int, key: ApiKey) -> FrameRecord:
    frame = store.get_frame(frame_id)
    if frame is None or not key.allows(frame.camera_id):  # see cloud/api/auth.py
        raise ApiError(404, f"frame {frame_id} does not exist", field="frame_id")
    return frame
