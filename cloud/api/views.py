"""Human views: POST /v1/views queues a job, GET /v1/views/{id} polls it,
GET /v1/views/{id}/image fetches the PNG once it is done.

    POST   {frame_id | camera[+sequence], kind, priority, deadline_s, reuse}
               ─► ViewQueue.request ─► 202 new job {id, links} │ 200 an existing job of
                  that frame and kind (done: cached; queued/running: joined) │ 429 queue full
    GET    /v1/views               ─► jobs, newest first, filtered; keyset pages
    GET    /v1/views/{id}          ─► job row (status, times, error, what the kind is)
    GET    /v1/views/{id}/image    ─► image/png │ 409 not done yet │ 404 unknown
    DELETE /v1/views/{id}          ─► 204 (row and image gone) │ 409 running │ 404
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from cloud.api.auth import ReadKey, ViewKey, camera_selection, check_camera, require_read
from cloud.api.deps import StoreDep, ViewsDep
from cloud.api.errors import ApiError
from cloud.api.params import (
    INT64_MAX,
    CamerasQ,
    CursorQ,
    LimitQ,
    Order,
    decode_str_cursor,
    many,
    page,
)
from cloud.api.schemas import ViewOut, ViewPage, ViewRequest, ViewStatus, error_responses
from cloud.store.api_keys import ApiKey
from cloud.store.frame_store import FrameStore
from cloud.store.records import ViewQuery, ViewRecord, view_preview_key
from cloud.view_queue import QueueFull, UnknownFrame, UnknownViewKind

# Reading views needs read; POST needs view (which implies read).
router = APIRouter(
    prefix="/v1/views",
    tags=["views"],
    dependencies=[Depends(require_read)],
    responses=error_responses(401, 403),
)

RETRY_AFTER_S = 5
ViewId = Annotated[str, Path(max_length=64, description="View job id")]


@router.post(
    "",
    status_code=202,
    summary="Request a human view of a frame",
    responses={
        200: {"model": ViewOut, "description": "An existing job of this frame and kind"},
        **error_responses(400, 404, 422, 429),
    },
)
def create_view(
    body: ViewRequest, store: StoreDep, views: ViewsDep, response: Response, key: ViewKey
) -> ViewOut:
    """Queue a job that restores an image from the frame's bitstream (202), or answer
    with the job that already covers this frame and kind (200; `reuse: false` always
    queues); poll `links.self`."""
    if body.kind not in views.kinds:  # before the frame lookup: the cheaper mistake first
        raise _bad_kind(UnknownViewKind(body.kind, views.kinds))
    frame_id = _resolve_frame(body, store, key)
    try:
        view, reused = views.request(
            frame_id, body.kind, body.priority, body.deadline_s, body.reuse,
            enhancement_bytes=body.enhancement_bytes,
        )  # fmt: skip
    except UnknownViewKind as exc:
        raise _bad_kind(exc) from exc
    except UnknownFrame as exc:
        raise ApiError(404, str(exc), field="frame_id") from exc
    except QueueFull as exc:
        # 429, not 503: the service is up, this client must slow down (RFC 6585).
        raise ApiError(
            429, f"{exc}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)}
        ) from exc
    if reused:
        response.status_code = 200
    response.headers["Location"] = f"/v1/views/{view.id}"
    return ViewOut.of(view)


@router.get("", summary="List view jobs", responses=error_responses(400, 422))
def list_views(
    store: StoreDep,
    key: ReadKey,
    camera: CamerasQ = None,
    frame_id: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="Of this frame")] = None,
    status: Annotated[ViewStatus | None, Query(description="Only jobs in this state")] = None,
    kind: Annotated[str | None, Query(max_length=32, description="Only this view kind")] = None,
    limit: LimitQ = 100,
    cursor: CursorQ = None,
    order: Annotated[Order, Query(description="`newest` requested first, or `oldest`")] = (
        Order.newest
    ),
) -> ViewPage:
    """View jobs by request time (then id), newest first unless `order=oldest`; follow
    `next_cursor` for more."""
    one, allowed = camera_selection(key, many(camera, "camera"))
    query = ViewQuery(
        camera_ids=(one,) if one is not None else allowed,
        frame_id=frame_id,
        status=None if status is None else status.value,
        kind=kind,
        limit=limit + 1,
        after=decode_str_cursor(cursor, order),
        newest_first=order is Order.newest,
    )
    rows, next_cursor = page(store.list_views(query), limit, order, lambda v: (v.created_ns, v.id))
    return ViewPage(items=[ViewOut.of(v) for v in rows], next_cursor=next_cursor)


@router.get("/{view_id}", summary="A view job's status", responses=error_responses(404))
def get_view(view_id: ViewId, store: StoreDep, key: ReadKey) -> ViewOut:
    return ViewOut.of(_view_or_404(store, view_id, key))


@router.get(
    "/{view_id}/image",
    summary="The rendered view (PNG) once the job is done",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409, 500)},
)
def get_view_image(view_id: ViewId, store: StoreDep, key: ReadKey) -> Response:
    view = _view_or_404(store, view_id, key)
    if view.status != "done" or view.image_key is None:
        detail = f": {view.error}" if view.status == "failed" else "; poll the view and retry"
        raise ApiError(
            409,
            f"view {view_id} is {view.status}, it has no image{detail}",
            view_status=view.status,
        )
    try:
        png = store.blobs.get(view.image_key)
    except FileNotFoundError as exc:
        raise ApiError(500, f"the image of view {view_id} is missing from storage") from exc
    return _png(png)


def _png(png: bytes) -> Response:
    # A view's images never change once written.
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"}
    )


@router.get(
    "/{view_id}/preview",
    summary="A refined view's preview (PNG), shown first while the refined image renders",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 409)},
)
def get_view_preview(view_id: ViewId, store: StoreDep, key: ReadKey) -> Response:
    view = _view_or_404(store, view_id, key)
    if view.kind == "preview":
        raise ApiError(
            404, f"view {view_id} is a preview: its image is the preview", field="view_id"
        )
    try:
        png = store.blobs.get(view_preview_key(view_id))
    except FileNotFoundError:
        detail = f": {view.error}" if view.status == "failed" else "; poll the view and retry"
        raise ApiError(
            409, f"view {view_id} is {view.status}, it has no preview yet{detail}",
            view_status=view.status,
        ) from None  # fmt: skip
    return _png(png)


@router.delete(
    "/{view_id}",
    status_code=204,
    summary="Delete a view job and its image",
    responses=error_responses(404, 409),
)
def delete_view(view_id: ViewId, store: StoreDep, key: ViewKey) -> Response:
    """A queued job is cancelled; a finished one loses its image. A job a worker is
    rendering is a 409: retry once it is done."""
    _view_or_404(store, view_id, key)
    view = store.delete_view(view_id)
    if view is None:  # deleted by another request in between: the outcome asked for
        return Response(status_code=204)
    if view.status == "running":
        raise ApiError(
            409,
            f"view {view_id} is running (a worker is rendering it); delete it once it is "
            "done or failed",
            view_status=view.status,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return Response(status_code=204)


def _resolve_frame(body: ViewRequest, store: FrameStore, key: ApiKey) -> int:
    if body.frame_id is not None:
        if body.camera is not None or body.sequence is not None:
            raise ApiError(
                422, "body: give either 'frame_id' or 'camera' and 'sequence', not both", "frame_id"
            )
        if key.cameras:  # another camera's frame reads as missing (cloud/api/auth.py)
            frame = store.get_frame(body.frame_id)
            if frame is None or not key.allows(frame.camera_id):
                raise ApiError(404, f"frame {body.frame_id} does not exist", field="frame_id")
        return body.frame_id
    if body.camera is None:
        if body.sequence is None:
            raise ApiError(422, "body: give 'frame_id', or 'camera' (and 'sequence')", "frame_id")
        raise ApiError(422, "body field 'camera': needed with 'sequence'", "camera")
    check_camera(key, body.camera)
    newest = store.list_frames(body.camera, None, None, 1, None, newest_first=True)
    if not newest or newest[0].id is None:
        raise ApiError(404, f"camera {body.camera!r} has no frames", field="camera")
    if body.sequence is None:  # the camera alone: what it saw last
        return newest[0].id
    frame = store.find_frame(body.camera, body.sequence)
    if frame is None or frame.id is None:
        (oldest,) = store.list_frames(body.camera, None, None, 1, None)
        # Edges number frames from the wall clock (µs), so "sequence 0" is the usual miss.
        raise ApiError(
            404,
            f"camera {body.camera!r} has no frame with sequence {body.sequence}; its oldest "
            f"frame has sequence {oldest.sequence} and its newest {newest[0].sequence} (GET "
            "/v1/frames?camera=… lists them); omit 'sequence' for its newest frame",
            field="sequence",
        )
    return frame.id


def _bad_kind(exc: UnknownViewKind) -> ApiError:
    return ApiError(400, f"body field 'kind': {exc}", field="kind")


def _view_or_404(store: FrameStore, view_id: str, key: ApiKey) -> ViewRecord:
    view = store.get_view(view_id)
    if view is not None and key.cameras:  # another camera's view reads as missing
        frame = store.get_frame(view.frame_id)
        view = view if frame is not None and key.allows(frame.camera_id) else None
    if view is None:
        raise ApiError(404, f"view {view_id} does not exist", field="view_id")
    return view
