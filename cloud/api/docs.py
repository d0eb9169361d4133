"""/docs (Swagger UI) and /redoc from assets this process serves, not a CDN, so the
pages work on a site with no internet (FastAPI's "custom docs UI static assets" recipe).

    /  ─► 307 /docs
    /docs, /redoc ─► HTML naming /docs/assets/* ◄─ the files the `fastapi-offline`
                                                  package ships (cloud extra)

The pages and their assets need no API key; the calls made from the page do (Swagger
UI's Authorize button comes from the API's security scheme).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
ASSET_PACKAGE = ("fastapi_offline", "static")
"""swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png"""


def install_docs(app: FastAPI) -> None:
    """Add /docs and /redoc; ``app`` must be built with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(packages=[ASSET_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:  # a browser opened on the bare address lands somewhere
        return RedirectResponse("/docs")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} — API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            oauth2_redirect_url=oauth2_redirect,
            # validatorUrl null: no badge fetched from swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} — API reference",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
