"""Shared fixtures: a tiny *real* detector exported to a real bundle.

The detector is a YOLOv8-shaped model with 8-32 channels and random weights; its
class bias is raised so it produces a handful of detections per image, which lets
the whole edge → gRPC → cloud → REST path run on CPU in seconds.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from fchm import cloud_process

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process installs a handler on pytest's captured stderr, which
    closes with the test; later log lines (Alembic's, say) would hit a closed file."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


TINY_YAML = {
    "nc": 2,
    "depth_multiple": 0.33,
    "width_multiple": 0.125,
    "backbone": [
        [-1, 1, "Conv", [64, 3, 2]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C2f", [128, True]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 6, "C2f", [256, True]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 6, "C2f", [256, True]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 3, "C2f", [256, True]],
        [-1, 1, "SPPF", [256, 5]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C2f", [256]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C2f", [128]],
        [-1, 1, "Conv", [128, 3, 2]],
        [[-1, 12], 1, "Concat", [1]],
        [-1, 3, "C2f", [256]],
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 9], 1, "Concat", [1]],
        [-1, 3, "C2f", [256]],
        [[15, 18, 21], 1, "Detect", ["nc"]],
    ],
}


def sample_images() -> list[Path]:
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    return [assets / "bus.jpg", assets / "zidane.jpg"]


def build_tiny_checkpoint(path: Path, class_bias: float = -3.5) -> Path:
    import cv2
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from edge.preprocess import letterbox

    torch.manual_seed(0)
    model = DetectionModel(dict(TINY_YAML), nc=2, verbose=False).eval()
    # Default init shrinks activations layer by layer; He init keeps image structure.
    # (DFL's conv is a fixed 0..15 ramp that decodes box distances: leave it.)
    dfl = model.model[-1].dfl.conv
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m is not dfl:
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    # Scale each class-logit conv to unit spread on a real image, then bias it so
    # that only the top ~1% of anchors pass conf=0.25: a few detections per image.
    x, _ = letterbox(cv2.imread(str(sample_images()[0])), 320, 32)
    finals = [seq[-1] for seq in model.model[-1].cv3]
    spread: dict[int, float] = {}
    hooks = [
        conv.register_forward_hook(lambda _m, _i, out, k=k: spread.__setitem__(k, float(out.std())))
        for k, conv in enumerate(finals)
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    for k, conv in enumerate(finals):
        conv.weight.data /= spread[k]
        conv.bias.data[:] = class_bias
    model.names = {0: "person", 1: "fall"}
    torch.save({"model": model.half(), "train_args": {}}, path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from model.bundle_export import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return export_bundle(
        ExportConfig(
            weights=tiny_checkpoint,
            out=out,
            input_size=320,
            fit_images=sample_images(),
            max_fit_images=2,
        )
    )


def train_tiny_bottleneck(weights: Path, out: Path, steps: int = 2, **overrides):  # type: ignore[no-untyped-def]
    """A few real optimizer steps on real images: enough for a valid checkpoint."""
    from model.train import TrainConfig, train

    images = sample_images()[0].parent
    settings = {"batch": 2, "crop": 64, "checkpoint_every": 1, **overrides}
    cfg = TrainConfig(
        weights=weights, out=out, data=[images], use_packaged=False, steps=steps, **settings
    )
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_learned_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from model.learned_export import LearnedExportConfig, export_learned_bundle

    root = tmp_path_factory.mktemp("learned")
    report = train_tiny_bottleneck(tiny_checkpoint, root / "tiny-fchm.pt")
    return export_learned_bundle(
        LearnedExportConfig(
            checkpoint=report.checkpoint,
            weights=tiny_checkpoint,
            out=root / "bundle",
            input_size=320,
            fit_images=sample_images(),
            max_fit_images=2,
        )
    )


free_port = cloud_process.free_port


def admin_headers(store) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Headers with a new admin API key in ``store``'s database, for a TestClient."""
    from cloud.store.api_keys import ApiKeyStore

    key = ApiKeyStore(store.engine).create("tests", ["admin"])[1]
    return {"Authorization": f"Bearer {key}"}


def create_api_key(settings, name: str, scopes: list[str], cameras: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    """A REST API key in the cloud's database, as `fchm cloud key create` makes it."""
    from cloud.store.api_keys import ApiKeyStore
    from cloud.store.frame_store import open_engine

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = open_engine(settings.resolved_database_url())
    try:
        return ApiKeyStore(engine).create(name, scopes, cameras)[1]
    finally:
        engine.dispose()


class RunningCloud:
    """A real CloudServer on loopback ports, on its own event loop in a thread."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        import asyncio
        import threading

        from cloud.server import CloudServer

        self.settings = settings
        self.api_key = create_api_key(settings, "tests", ["admin"])
        self.server = CloudServer(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def api(self, key: str | None = None, timeout: float = 30.0):  # type: ignore[no-untyped-def]
        """An httpx client for this cloud's REST API (tests call REST only through it),
        with ``key`` or else the admin key made at start."""
        import httpx

        headers = {"Authorization": f"Bearer {key or self.api_key}"}
        return httpx.Client(base_url=self.http_base, headers=headers, timeout=timeout)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(1.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def cloud_settings(bundle, tmp_path: Path, **overrides):  # type: ignore[no-untyped-def]
    """CloudSettings of a test cloud: the bundle, a fresh data dir, free loopback ports."""
    from cloud.settings import CloudSettings

    return CloudSettings(
        bundle=bundle.path,
        data_dir=tmp_path / "cloud",
        grpc_port=free_port(),
        http_port=free_port(),
        onnx_threads=1,
        **overrides,
    )


@pytest.fixture
def cloud(tiny_bundle, tmp_path: Path):  # type: ignore[no-untyped-def]
    running = RunningCloud(cloud_settings(tiny_bundle, tmp_path))
    yield running
    running.stop()


def wait_for_view(api, view_id: str, timeout_s: float = 20.0) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Poll ``GET /v1/views/{id}`` with an httpx-like client until the job is done or
    failed; the last body (the caller asserts on it)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        view = api.get(f"/v1/views/{view_id}").json()
        if view["status"] in ("done", "failed") or time.monotonic() > deadline:
            return view  # type: ignore[no-any-return]
        time.sleep(0.05)


PG_SERVER = os.environ.get("FCHM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
"""The loopback PostgreSQL server tests make throwaway databases on (the dev and CI
machines run one; trust auth)."""


@pytest.fixture
def postgres_url():  # type: ignore[no-untyped-def]
    """A new, empty PostgreSQL database for one test, dropped after it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    name = f"fchm_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL server at {PG_SERVER}: {exc.orig}")
    yield f"{PG_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


REDIS_SERVER = os.environ.get("FCHM_TEST_REDIS", "redis://127.0.0.1:6379")
"""The loopback Redis server (the dev and CI machines run one); tests use database 13."""


@pytest.fixture
def redis_url():  # type: ignore[no-untyped-def]
    """Database 13 of the loopback Redis server, emptied before and after the test."""
    import redis

    url = f"{REDIS_SERVER}/13"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_SERVER}: {exc}")
    yield url
    client.flushdb()
    client.close()
