"""GET /v1/cameras, /v1/cameras/{id}: every camera that has connected, with its status
(online, newest frame, rate level, fps and kbit/s lately), read from the store so every
replica gives the same answer."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from cloud.api.auth import ReadKey, check_camera, require_read
from cloud.api.deps import StoreDep
from cloud.api.errors import ApiError
from cloud.api.schemas import CameraList, CameraOut, CameraStatus, error_responses
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.store.records import CameraRecord

router = APIRouter(
    prefix="/v1/cameras",
    tags=["cameras"],
    dependencies=[Depends(require_read)],
    responses=error_responses(401, 403),
)

CameraId = Annotated[str, Path(max_length=128, description="Camera id")]


def _with_status(
    store: FrameStore, settings: CloudSettings, seen: list[CameraRecord]
) -> list[CameraOut]:
    window_s = settings.camera_rate_window_s
    activity = store.camera_activity([c.camera_id for c in seen], int(window_s * 1e9))
    online_after_ns = time.time_ns() - int(settings.camera_online_after_s * 1e9)
    return [
        # last_seen moves at connect and with every stored frame.
        CameraOut.of(c, CameraStatus.of(a, c.last_seen_ns >= online_after_ns, window_s))
        for c, a in zip(seen, activity, strict=True)
    ]


@router.get("", summary="List cameras with their status")
def list_cameras(store: StoreDep, key: ReadKey, request: Request) -> CameraList:
    """Cameras in id order, with the bundle they announced, when they were seen and their
    status."""
    seen = [c for c in store.list_cameras() if key.allows(c.camera_id)]
    return CameraList(items=_with_status(store, request.app.state.settings, seen))


@router.get("/{camera_id}", summary="One camera and its status", responses=error_responses(404))
def get_camera(camera_id: CameraId, store: StoreDep, key: ReadKey, request: Request) -> CameraOut:
    check_camera(key, camera_id)
    found = store.list_cameras(camera_id)
    if not found:
        raise ApiError(404, f"camera {camera_id!r} has never connected", field="camera_id")
    (out,) = _with_status(store, request.app.state.settings, found)
    return out
