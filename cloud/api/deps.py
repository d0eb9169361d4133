"""What the routers need, bundled once and handed over through ``app.state``.

The server builds one ``Services`` and passes it to ``create_app``; each route asks
for the part it uses with an ``Annotated`` dependency (``StoreDep``, ``ViewsDep``...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from cloud.metrics import CloudMetrics
from cloud.store.frame_store import FrameStore
from cloud.view_queue import ViewJobQueue
from codec.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    store: FrameStore
    views: ViewJobQueue
    bundle: Bundle
    metrics: CloudMetrics
    readiness: Callable[[], dict[str, bool]]
    """Named readiness checks (database, ingest, workers...); /readyz is 503 unless all true."""


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_store(services: ServicesDep) -> FrameStore:
    return services.store


def get_views(services: ServicesDep) -> ViewJobQueue:
    return services.views


def get_bundle(services: ServicesDep) -> Bundle:
    return services.bundle


def get_metrics(services: ServicesDep) -> CloudMetrics:
    return services.metrics


StoreDep = Annotated[FrameStore, Depends(get_store)]
ViewsDep = Annotated[ViewJobQueue, Depends(get_views)]
BundleDep = Annotated[Bundle, Depends(get_bundle)]
MetricsDep = Annotated[CloudMetrics, Depends(get_metrics)]


def readiness_checks(checks: Mapping[str, Callable[[], object]]) -> Callable[[], dict[str, bool]]:
    """Turn named probes into a readiness callable: a probe passes unless it raises or
    returns False (so ``store.ping`` works as is)."""

    def run() -> dict[str, bool]:
        results = {}
        for name, probe in checks.items():
            try:
                results[name] = probe() is not False
            except Exception as exc:
                log.warning("readiness check %s failed: %s", name, exc)
                results[name] = False
        return results

    return run
