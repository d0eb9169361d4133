"""GET /v1/cameras: every camera that has connected, with its frame count."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.deps import StoreDep
from cloud.api.schemas import CameraList, CameraOut

router = APIRouter(prefix="/v1/cameras", tags=["cameras"])


@router.get("", summary="List cameras")
def list_cameras(store: StoreDep) -> CameraList:
    """Cameras in id order, with the bundle they announced and when they were seen."""
    return CameraList(items=[CameraOut.of(c) for c in store.list_cameras()])
