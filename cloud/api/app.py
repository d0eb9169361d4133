"""create_app: the REST API over the services the server built.

    CloudSettings, Services ─► FastAPI(title, version, lifespan)
        ├─ /v1/cameras      cameras.py
        ├─ /v1/detections   detections.py
        ├─ /v1/frames       frames.py
        ├─ /v1/views        views.py
        ├─ /healthz /readyz /metrics   health.py
        ├─ /docs /redoc     docs.py (assets served locally: works offline)
        └─ /dashboard/      dashboard.py (static page over this API: works offline)
    every route but /healthz, /readyz, the docs and the dashboard's files
        ─► auth.py: an API key with a scope
    every error ─► errors.handle_error ─► application/problem+json (RFC 9457)

The app starts no background work: the server's lifespan hook starts the restore
workers (``cloud.restore_worker.start_view_workers``) and ingest.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI

from cloud.api import cameras, detections, frames, health, views
from cloud.api.dashboard import install_dashboard
from cloud.api.deps import Services
from cloud.api.docs import install_docs
from cloud.api.errors import install_error_handlers
from cloud.settings import CloudSettings
from cloud.store.api_keys import ApiKeyStore

log = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = """\
Machine-first split inference for cameras. Cameras stream entropy-coded
detector features, not video; the cloud finishes detection on arrival and keeps
the bitstream. A person who wants to *see* a frame requests a view (`POST /v1/views`),
which is restored from that same bitstream.

Times are given as ISO-8601 UTC and as integer nanoseconds since the epoch. Every 64-bit
integer (ids, sequences, `*_ns` times) also comes as an exact decimal string `<name>_str`:
nanosecond times exceed 2^53, where JavaScript numbers (and jq) round, so JavaScript
clients should read the `_str` form. Query parameters take either form (`since_ns`,
`until_ns` take `time_ns`). Lists are ordered by capture time, oldest first or
`order=newest`, and paged with an opaque `cursor` (pass it with the same `order`). The API
reference is also at `/redoc`.

Every error is an RFC 9457 problem details object, `application/problem+json`:
`{"type", "title", "status", "detail", "instance", "field"}`. `type` is
`https://fchm.dev/problems/<slug>` by status (`bad-request`, `unauthorized`, `forbidden`,
`not-found`, `conflict`, `validation-error`, `service-unavailable`, `internal-error`, ...),
`title` its reason phrase, `detail` what is wrong, `instance` the request path and
`field` the bad parameter (or null). Some errors add members, e.g. `view_status`.

Every route but `/healthz` and `/readyz` needs an API key (`fchm cloud key create`),
sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Scopes: `read` (cameras,
detections, frames, bitstreams, views), `view` (request views; implies `read`),
`admin` (everything, `/metrics`). A key may be limited to some cameras.
"""


def _version() -> str:
    try:
        return importlib.metadata.version("fchm")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: CloudSettings, services: Services, lifespan: Lifespan | None = None
) -> FastAPI:
    app = FastAPI(
        title="FCHM cloud",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves them with local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.api_keys = keys = ApiKeyStore(services.store.engine)
    if not keys.any_active():
        log.warning("no active API keys: every REST call but /healthz, /readyz is refused; "
                    "create one with `fchm cloud key create --name NAME --scope read`")  # fmt: skip
    install_error_handlers(app)
    for module in (cameras, detections, frames, views, health):
        app.include_router(module.router)
    install_docs(app)
    install_dashboard(app)
    _list_labels(app, services.bundle.class_names)
    return app


def _list_labels(app: FastAPI, labels: Sequence[str]) -> None:
    """The valid values of every ``label`` query parameter are this bundle's classes, known
    only at start: OpenAPI lists them as the enum of the parameter's items."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema["paths"].values():
                for operation in path.values():
                    for param in operation.get("parameters", []):
                        if param["name"] == "label":
                            for option in param["schema"].get("anyOf", [param["schema"]]):
                                if option.get("type") == "array":
                                    option["items"]["enum"] = list(labels)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
