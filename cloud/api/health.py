"""/healthz (the process answers), /readyz (every named check passes): open to
probes, no key; /metrics needs an admin key (it names every camera)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.api.auth import require_admin
from cloud.api.deps import MetricsDep, ServicesDep
from cloud.api.schemas import Health, Readiness, error_responses

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is serving requests")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: 200 when every check passes, else 503",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
def readyz(services: ServicesDep) -> JSONResponse:
    try:
        checks = services.readiness()
    except Exception:
        log.exception("readiness checks raised")
        checks = {"readiness_checks": False}
    ready = all(checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (admin key)",
    response_class=Response,
    dependencies=[Depends(require_admin)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401, 403)},
)
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
