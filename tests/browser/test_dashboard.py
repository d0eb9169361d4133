"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
real cloud: CloudServer with uvicorn on a loopback port and a real restore worker, over
real stored frames (tiny bundle → codec → detector tail → store).

    sign in (a bad key is refused) ─► cameras with live status ─► a timeline with bars
    ─► click a detection ─► the view job goes queued → … → done ─► PNG with the box
    ─► a frame whose bitstream is gone: the failed job says why ─► a full queue: 429
      (a real one: a cloud whose views wait in Redis for workers that are not running)

Screenshots of every step go to test-artifacts/dashboard/ (kept by CI). Every request
the page makes must go to the cloud's own origin: the page works offline.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from cloud.store.frame_store import FrameStore
from cloud.store.schema import cameras
from codec.bundle import Bundle
from tests.conftest import RunningCloud, cloud_settings, sample_images
from tests.integration.stored_frames import T0_NS, FrameMaker, StoredSample

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
LIVE, OLD = "gate-1", "yard-2"
S = 1_000_000_000
WAIT_MS = 20_000

if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `make system-deps` (apt-get install chromium) installs it",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="install the dev extra (playwright)")


@dataclass
class Site:
    cloud: RunningCloud
    base: str
    live: list[StoredSample]
    old: list[StoredSample]
    broken: StoredSample  # an old frame whose bitstream blob was deleted

    def get(self, path: str, **params: Any) -> Any:
        with self.cloud.api() as api:
            r = api.get(path, params=params)
            assert r.status_code == 200, r.text
            return r.json()


@pytest.fixture(scope="module")
def site(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard")
    # Online for 10 min: a slow machine must not see the live camera go offline mid-test.
    # No edge is connected: an enhanced view of the live camera waits 3 s, then falls back.
    settings = cloud_settings(tiny_bundle, root, camera_online_after_s=600, enhancement_wait_s=3)
    cloud = RunningCloud(settings)
    store = FrameStore.open(settings.resolved_database_url(), settings.data_dir / "blobs")
    maker = FrameMaker(tiny_bundle)
    images = sample_images()
    for camera in (LIVE, OLD):
        store.register_camera(camera, tiny_bundle.hash, 0, "test")
    now = time.time_ns()
    live = [  # 3 s apart, the newest 2 s ago: several 10 s bars
        maker.store(store, LIVE, i, now - (2 + 3 * (9 - i)) * S, images[i % 2], level=3)
        for i in range(10)
    ]
    old = [maker.store(store, OLD, i, T0_NS + 20 * i * S, images[i % 2], level=1) for i in range(4)]
    with store.engine.begin() as conn:  # the old camera last spoke long ago: offline
        conn.execute(
            update(cameras).where(cameras.c.camera_id == OLD).values(last_seen_ns=T0_NS + 90 * S)
        )
    broken = next(s for s in reversed(old) if s.detections)
    frame = store.get_frame(broken.frame_id)
    assert frame is not None
    store.blobs.delete(frame.bitstream_key)
    store.engine.dispose()
    assert all(s.detections for s in live), "the tiny detector finds objects in both images"
    try:
        yield Site(cloud, cloud.http_base, live, old, broken)
    finally:
        cloud.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def dashboard_tab(browser: Any, base: str) -> Iterator[Any]:
    """A fresh tab (empty sessionStorage) on the dashboard at ``base``; every URL it asks
    for is kept and checked to be the cloud's own."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{base}/dashboard/")
    yield tab
    context.close()
    assert requested, "the page made requests"
    outside = [u for u in requested if not u.startswith((f"{base}/", "blob:", "data:"))]
    assert not outside, f"the dashboard fetched from outside the cloud: {outside}"


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    with dashboard_tab(browser, site.base) as tab:
        yield tab


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#connect")


def test_a_bad_key_is_refused_and_a_good_one_shows_the_cameras(page: Any, site: Site) -> None:
    page.wait_for_selector("#login-form")
    shot(page, "01-sign-in")
    sign_in(page, "not-a-real-key")
    error = page.wait_for_selector("#login-error:not([hidden])")
    assert "API key refused (401)" in error.inner_text()
    assert page.is_hidden("#app")
    shot(page, "02-bad-key")

    sign_in(page, site.cloud.api_key)
    live = page.wait_for_selector(f'[data-camera="{LIVE}"][data-online="true"]')
    text = live.inner_text()
    assert "online" in text and "Last frame" in text and " s ago" in text
    assert "fps" in text and "kbit/s" in text and "level 3" in text
    old = page.wait_for_selector(f'[data-camera="{OLD}"][data-online="false"]')
    assert "offline" in old.inner_text() and "level 1" in old.inner_text()
    # The key is kept for this tab: a reload stays signed in.
    page.reload()
    page.wait_for_selector(f'[data-camera="{LIVE}"]')
    shot(page, "03-cameras")


def test_timeline_then_a_detection_viewed_with_its_box(page: Any, site: Site) -> None:
    sign_in(page, site.cloud.api_key)
    page.click(f'[data-camera="{LIVE}"]')
    page.wait_for_selector(".chart rect.bar")
    page.wait_for_selector("#detection-rows tr.detection")
    # The bars count every detection of the live camera (all inside the 10-minute window).
    counts = page.eval_on_selector_all(".chart rect.bar", "bars => bars.map(b => +b.dataset.count)")
    total = sum(len(s.detections) for s in site.live)
    assert sum(counts) == total and len(counts) >= 3
    labels = set(page.eval_on_selector_all(".chart rect.bar", "bs => bs.map(b => b.dataset.label)"))
    assert labels == {d.label for s in site.live for d in s.detections}
    rows = page.query_selector_all("#detection-rows tr.detection")
    assert len(rows) == min(50, total)
    shot(page, "04-timeline")

    newest = site.get("/v1/detections", camera=LIVE, order="newest", limit=1)["items"][0]
    assert rows[0].get_attribute("data-detection") == newest["id_str"]
    rows[0].click()
    shot(page, "05-view-requested")
    page.wait_for_selector('#view-panel[data-status="done"]')
    page.wait_for_function(
        "() => { const i = document.getElementById('view-image'); return"
        " !document.getElementById('view-stage').hidden && i.complete && i.naturalWidth > 0; }"
    )
    history = page.get_attribute("#view-panel", "data-history").split(",")
    assert history[0] == "queued" and history[-1] == "done", history
    assert page.inner_text("#job-steps li.current").lower() == "done"
    assert "preview" in page.inner_text("#view-meta")

    # The PNG is the view's size; the box is the detection's, scaled from frame to view.
    view = site.get("/v1/views", frame_id=newest["frame_id_str"])["items"][0]
    frame = site.get(f"/v1/frames/{newest['frame_id_str']}")
    natural = page.eval_on_selector("#view-image", "i => [i.naturalWidth, i.naturalHeight]")
    assert natural == [view["width"], view["height"]]
    rect = page.eval_on_selector(
        "#view-overlay rect.chosen",
        "r => ({id: r.dataset.detection, x: +r.getAttribute('x'), y: +r.getAttribute('y'),"
        " w: +r.getAttribute('width'), h: +r.getAttribute('height')})",
    )
    sx, sy = view["width"] / frame["image_width"], view["height"] / frame["image_height"]
    box = newest["box"]
    assert rect["id"] == newest["id_str"]
    assert rect["x"] == pytest.approx(box["x1"] * sx) and rect["y"] == pytest.approx(box["y1"] * sy)
    assert rect["w"] == pytest.approx((box["x2"] - box["x1"]) * sx)
    assert rect["h"] == pytest.approx((box["y2"] - box["y1"]) * sy)
    others = page.eval_on_selector_all("#view-overlay rect.box:not(.chosen)", "rs => rs.length")
    assert others == len(frame["detections"]) - 1
    # The next kind is diffusion; this cloud has no prior for it, and the view says so.
    assert page.inner_text("#refine") == "Refine → diffusion"
    shot(page, "06-view-done")
    page.click("#refine")
    page.wait_for_selector('#view-panel[data-status="failed"]')
    assert "diffusion_prior_dir" in page.inner_text("#view-error")
    shot(page, "06b-refine-without-a-prior")

    # A bar narrows the list to its bucket.
    page.click(".chart rect.bar >> nth=0")
    page.wait_for_selector("#filter-note:not([hidden])")
    shot(page, "07-bucket-filter")


def test_an_enhanced_view_shows_its_preview_first_then_why_it_fell_back(
    page: Any, site: Site
) -> None:
    sign_in(page, site.cloud.api_key)
    page.click(f'[data-camera="{LIVE}"]')
    page.wait_for_selector("#detection-rows tr.detection")
    page.click("#detection-rows tr.detection >> nth=1")
    page.wait_for_selector('#view-panel[data-status="done"]')
    assert page.inner_text("#enhance") == "Enhance from camera"
    page.click("#enhance")
    # The worker stores the preview first; the page shows it while the job still runs.
    page.wait_for_selector('#view-stage[data-stage="preview"]')
    assert page.get_attribute("#view-panel", "data-status") == "running"
    assert page.is_visible("#stage-note") and page.is_disabled("#enhance")
    shot(page, "06c-enhance-preview-first")
    page.wait_for_selector('#view-stage[data-stage="final"]')
    assert page.get_attribute("#view-panel", "data-status") == "done"
    note = page.inner_text("#view-fallback")
    assert f"no enhancement from camera {LIVE} within 3 s" in note, note
    assert "enhanced" in page.inner_text("#view-meta") and page.is_hidden("#stage-note")
    assert page.is_disabled("#refine")  # the camera's pixels have no refinement
    assert page.is_visible("#view-overlay rect.chosen")
    shot(page, "06d-enhance-fell-back")


def test_a_failed_view_says_why(page: Any, site: Site) -> None:
    sign_in(page, site.cloud.api_key)
    page.click(f'[data-camera="{OLD}"]')
    page.wait_for_selector(".chart rect.bar")  # its window ends at its last frame
    broken = site.get("/v1/frames/" + str(site.broken.frame_id))["detections"][0]
    page.click(f'tr[data-detection="{broken["id_str"]}"]')
    page.wait_for_selector('#view-panel[data-status="failed"]')
    error = page.inner_text("#view-error")
    assert "The view failed" in error and "bitstream blob is missing" in error
    assert page.inner_text("#job-steps li.failed").lower() == "failed"
    assert page.is_hidden("#view-stage")
    shot(page, "08-view-failed")


def test_a_full_view_queue_is_shown(
    browser: Any, tiny_bundle: Bundle, tmp_path: Path, redis_url: str
) -> None:
    """A cloud whose views are rendered elsewhere (view_workers 0, the shared Redis queue)
    and nobody rendering, with room for one job: the second request is a real 429."""
    settings = cloud_settings(
        tiny_bundle,
        tmp_path,
        camera_online_after_s=600,
        view_queue_url=redis_url,
        view_workers=0,
        max_queued_views=1,
    )
    cloud = RunningCloud(settings)
    try:
        store = FrameStore.open(settings.resolved_database_url(), settings.data_dir / "blobs")
        store.register_camera(LIVE, tiny_bundle.hash, 0, "test")
        maker, now = FrameMaker(tiny_bundle), time.time_ns()
        for i, image in enumerate(sample_images()):
            maker.store(store, LIVE, i, now - (5 - i) * S, image, level=3)
        store.engine.dispose()
        with dashboard_tab(browser, cloud.http_base) as page:
            sign_in(page, cloud.api_key)
            page.click(f'[data-camera="{LIVE}"]')
            rows = page.locator("#detection-rows tr.detection")
            rows.first.wait_for()  # the timeline loads after the click: read it once it is there
            frames = rows.evaluate_all("rs => rs.map(r => r.dataset.frame)")
            first = frames.index(frames[0])
            other = next(i for i, f in enumerate(frames) if f != frames[0])
            rows.nth(first).click()  # queued, and it stays queued: the queue is full
            page.wait_for_selector('#view-panel[data-status="queued"]')
            rows.nth(other).click()  # another frame: no job to reuse, no room
            error = page.wait_for_selector("#view-error:not([hidden])")
            assert "The view queue is full (429)" in error.inner_text()
            assert "Retry in 5 s" in error.inner_text()
            shot(page, "09-queue-full")
    finally:
        cloud.stop()


def test_dashboard_files_ship_with_the_package() -> None:
    import cloud

    folder = Path(cloud.__file__).parent / "dashboard"
    assert {p.name for p in folder.iterdir()} >= {"index.html", "dashboard.js", "dashboard.css"}
    assert shutil.which("chromium") or CHROMIUM.exists()
