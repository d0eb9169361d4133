"""GET /v1/cameras: every camera that has connected, with its frame count."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from cloud.api.auth import ReadKey, require_read
from cloud.api.deps import StoreDep
from cloud.api.schemas import CameraList, CameraOut, error_responses

router = APIRouter(
    prefix="/v1/cameras",
    tags=["cameras"],
    dependencies=[Depends(require_read)],
    responses=error_responses(401, 403),
)


@router.get("", summary="List cameras")
def list_cameras(store: StoreDep, key: ReadKey) -> CameraList:
    """Cameras in id order, with the bundle they announced and when they were seen."""
    seen = [c for c in store.list_cameras() if key.allows(c.camera_id)]
    return CameraList(items=[CameraOut.of(c) for c in seen])
