"""/dashboard/: the web dashboard, static files this process serves (no build step, no
CDN, no external fonts: it works on a site with no internet).

    /dashboard ─► 307 /dashboard/ ─► cloud/dashboard/index.html, dashboard.js, dashboard.css
                                      (shipped as package data of ``cloud``)

The files need no API key; the page asks for one and sends it with every /v1 call it
makes (``Authorization: Bearer``), keeping it in the tab's sessionStorage only.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

PATH = "/dashboard"
ASSET_PACKAGE = ("cloud", "dashboard")


def install_dashboard(app: FastAPI) -> None:
    # html=True: /dashboard/ serves index.html; the router redirects /dashboard there.
    app.mount(PATH, StaticFiles(packages=[ASSET_PACKAGE], html=True), name="dashboard")
