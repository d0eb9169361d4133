"""API keys on every route but /healthz and /readyz.

    Authorization: Bearer <key> │ X-API-Key: <key>
        ─► authenticate ─► ApiKeyStore.verify ─► ApiKey     (401 + WWW-Authenticate)
        ─► require_read / require_view / require_admin     (403: which scope is needed)
        ─► routes: check_camera (403: which camera) and camera-limited listings

Scopes: ``read`` (cameras, detections, frames, bitstreams, view status and images),
``view`` (POST /v1/views; implies read: a view is useless without reading what it
names and polling the job), ``admin`` (everything, /metrics). A key limited to some
cameras gets listings filtered to them; a camera it names is 403, a frame or view of
another camera addressed by id is 404, as if it did not exist, so sequential ids do
not reveal other cameras' traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.errors import ApiError
from cloud.store.api_keys import ApiKey, ApiKeyStore, KeyRefused

REALM = 'Bearer realm="fchm"'
HOW = (
    "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' (`fchm cloud key create` makes a key)"
)

bearer = HTTPBearer(auto_error=False, description="An API key from `fchm cloud key create`")
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The same API key, for clients without Bearer"
)


def get_key_store(request: Request) -> ApiKeyStore:
    keys: ApiKeyStore = request.app.state.api_keys
    return keys


def authenticate(
    request: Request,
    keys: Annotated[ApiKeyStore, Depends(get_key_store)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    header_key: Annotated[str | None, Depends(api_key_header)],
) -> ApiKey:
    presented = credentials.credentials if credentials is not None else header_key
    if not presented:
        given = request.headers.get("Authorization")
        why = (
            f"the Authorization scheme must be Bearer, not {given.split()[0]!r}"
            if given and given.split()
            else "this route needs an API key"
        )
        raise ApiError(401, f"{why}: {HOW}", headers={"WWW-Authenticate": REALM})
    try:
        return keys.verify(presented)
    except KeyRefused as exc:
        raise ApiError(
            401, str(exc), headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
        ) from None


KeyDep = Annotated[ApiKey, Depends(authenticate)]


def _scope_check(scope: str) -> Callable[[ApiKey], ApiKey]:
    def check(key: KeyDep) -> ApiKey:
        if not key.grants(scope):
            raise ApiError(
                403,
                f"API key {key.id} ({key.name}) has scope {', '.join(key.scopes)}; "
                f"this route needs '{scope}'",
                needed_scope=scope,
            )
        return key

    check.__name__ = f"require_{scope}"
    return check


require_read = _scope_check("read")
require_view = _scope_check("view")
require_admin = _scope_check("admin")

# FastAPI caches a dependency per request: a router-level require_read and a route's
# ReadKey run the check once.
ReadKey = Annotated[ApiKey, Depends(require_read)]
ViewKey = Annotated[ApiKey, Depends(require_view)]
AdminKey = Annotated[ApiKey, Depends(require_admin)]


def check_camera(key: ApiKey, camera_id: str, field: str = "camera") -> None:
    """403 when the request names a camera the key may not see."""
    if not key.allows(camera_id):
        raise ApiError(
            403,
            f"API key {key.id} ({key.name}) may not see camera {camera_id!r}; "
            f"it is limited to {', '.join(key.cameras)}",
            field=field,
        )


def camera_selection(
    key: ApiKey, requested: tuple[str, ...] | None, field: str = "camera"
) -> tuple[str | None, tuple[str, ...] | None]:
    """The cameras a listing covers, as (one camera, or None) and (an IN list, or None):
    what was asked (each checked against the key), else what the key is limited to."""
    if requested is None:
        return None, key.camera_filter
    for camera_id in requested:
        check_camera(key, camera_id, field)
    return (requested[0], None) if len(requested) == 1 else (None, requested)
