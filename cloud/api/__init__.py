"""The REST API (FastAPI): cameras, detections, frames, views, health and metrics.

    create_app(settings, services) ─► routers (one module per resource) ─► Services
                                                                          (store, view queue,
                                                                           bundle, metrics)
Routers stay thin: queries live in ``cloud.store``, view jobs in ``cloud.view_queue``.
"""
