"""``fchm cloud serve``: every cloud part in one process (the embedded default).

    edges ─► gRPC ingest (grpc.aio) ─► FrameIngest ─► FrameStore (SQLite/PostgreSQL + blobs)
                                                          ▲           │
    users ─► REST API (FastAPI on uvicorn) ───────────────┘     view queue ─► restore workers

Start order: bundle → store → ingest → view workers → retention → REST; stop in reverse, with
a grace period so in-flight frames are acked before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import grpc
import uvicorn

from cloud.api.app import create_app
from cloud.api.deps import Services, readiness_checks
from cloud.camera_auth import CameraAuth
from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import FrameDecoder
from cloud.frame_ingest import FrameIngest
from cloud.ingest_lag import IngestLag
from cloud.ingest_servicer import IngestServicer
from cloud.metrics import CloudMetrics
from cloud.restore_worker import restorer_options, start_view_workers
from cloud.retention_sweeper import start_retention_sweeper
from cloud.settings import CloudSettings
from cloud.store import open_store
from cloud.tail_batcher import BatchedTail
from cloud.view_queue import ViewJobQueue, open_view_queue
from codec.bundle import Bundle
from fchm.v1 import ingest_pb2_grpc
from infra.tls import read_pem

log = logging.getLogger(__name__)


# Edges ping every 20 s (edge/channel.py) so a dead link is noticed; a server that
# does not allow that closes the connection with GOAWAY "too_many_pings". The
# server pings too, so the stream of a vanished camera is released.
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 5),
]


def server_credentials(settings: CloudSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext (no tls_cert)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (read_pem(settings.tls_key, "tls_key"), read_pem(settings.tls_cert, "tls_cert"))
    client_ca = None
    if settings.tls_client_ca is not None:
        client_ca = read_pem(settings.tls_client_ca, "tls_client_ca")
    # With a client CA, a camera without a certificate signed by it never gets a stream.
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def create_grpc_server(
    servicer: IngestServicer, settings: CloudSettings
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", 1 << 20),
            # gRPC sets SO_REUSEPORT by default: a second cloud on the same port would
            # start and silently take half the cameras. Refuse the port instead.
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_OPTIONS,
        ]
    )
    ingest_pb2_grpc.add_IngestServicer_to_server(servicer, server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc's "Failed to bind to address"
        port = 0
    if port == 0:
        raise OSError(
            f"grpc_port {settings.grpc_port}: cannot bind {address} (is another "
            "`fchm cloud serve` or another program using it?)"
        )
    return server, port


def bind_http_socket(host: str, port: int) -> socket.socket:
    """The REST API's listening socket, bound here so a busy port is one clear error
    (uvicorn would log it and exit the whole process)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"http_host {host!r}: {exc.strerror or exc}") from None
    try:
        # Like uvicorn: a restart may reuse a port in TIME_WAIT; a live listener still wins.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(
            f"http_port {port}: cannot bind {host}:{port}: {exc.strerror or exc} (is another "
            "`fchm cloud serve` or another program using it?)"
        ) from None
    return sock


class _EmbeddedUvicorn(uvicorn.Server):
    # CloudServer owns the signals and stops every part in order.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class CloudServer:
    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._views: ViewJobQueue | None = None
        self._tail: BatchedTail | None = None
        self._retention: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop(0)  # a busy port or a bad setting leaves nothing running
            raise

    async def _start(self) -> None:
        s = self.settings
        # 1. The bundle: a missing or altered one stops here with its path named.
        bundle = Bundle.load(s.bundle)
        metrics = CloudMetrics()

        # 2. Durable state.
        # The bucket is checked here: a wrong one stops the start, not the first frame.
        store = open_store(s)

        # 3. Ingest: decoder + detector tail behind the gRPC servicer.
        decoder = FrameDecoder(bundle)
        tail = BatchedTail(
            DetectorTail(bundle, s.detector_conf, s.detector_iou, threads=s.onnx_threads),
            s.tail_max_batch,
            s.tail_max_delay_ms / 1000,
            metrics.tail_batch.observe,
        )
        self._tail = tail
        ingest = FrameIngest(decoder, tail, store, metrics)
        auth = CameraAuth(s.camera_tokens)
        for name in ("rate_hint", "backpressure_rate_level"):
            level = getattr(s, name)
            if level is not None and level >= decoder.codec.num_levels:
                raise ValueError(f"{name} {level} outside 0..{decoder.codec.num_levels - 1}")
        lag = None if s.max_ingest_lag_s is None else IngestLag(s.max_ingest_lag_s)
        servicer = IngestServicer(
            ingest,
            bundle.hash,
            decoder.codec.num_levels,
            s.rate_hint,
            auth=auth,
            lag=lag,
            workers=s.ingest_workers,
            backpressure_level=s.backpressure_rate_level,
            enhancement_poll_s=s.enhancement_poll_s,
            # Three beats within the online window: a connected camera never looks offline.
            presence_every_s=min(10.0, s.camera_online_after_s / 3),
        )
        self._grpc, self.grpc_port = create_grpc_server(servicer, s)
        await self._grpc.start()
        log.info(
            "gRPC ingest on %s:%d (bundle %s, %s, %s)",
            s.grpc_host,
            self.grpc_port,
            bundle.hash[:12],
            "mutual TLS" if s.tls_client_ca else "TLS" if s.tls_cert else "plaintext",
            f"camera tokens: {len(s.camera_tokens)}" if auth.enabled else "no camera tokens",
        )

        # 4. Views: the queue (restarted jobs re-queued; shared ones kept up by every
        #    process) and this process's workers (none if `fchm worker` renders).
        views = self._views = open_view_queue(s, store, metrics)
        checks = {"database": store.ping, "view_queue": views.ping}
        if s.view_workers:
            checks["view_workers"] = lambda: (
                bool(self._workers) and not any(t.done() for t in self._workers)
            )
        readiness = readiness_checks(checks)
        services = Services(
            store=store, views=views, bundle=bundle, metrics=metrics, readiness=readiness
        )
        self._workers = [asyncio.create_task(views.maintain(), name="view-queue-upkeep")]
        if s.view_workers:
            self._workers += await start_view_workers(
                services,
                decoder,
                s.view_workers,
                s.onnx_threads,
                s.view_max_side,
                s.view_lease_s,
                restorer_options(s),
            )

        # 5. Retention: expired frames, detections, views and blobs (none: keep forever).
        self._retention = start_retention_sweeper(s, store, metrics)

        # 6. REST API.
        app = create_app(s, services)
        sock = bind_http_socket(s.http_host, s.http_port)
        self.http_port = int(sock.getsockname()[1])
        self._http = _EmbeddedUvicorn(
            uvicorn.Config(app, host=s.http_host, port=s.http_port, log_level="warning")
        )
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise OSError(f"http_port: REST API did not start on {s.http_host}:{s.http_port}")
            await asyncio.sleep(0.02)
        log.info("REST API on http://%s:%d (docs at /docs)", s.http_host, self.http_port)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._http is not None and self._http_task is not None and not self._http_task.done():
            self._http.should_exit = True
            await self._http_task
        if self._grpc is not None:
            await self._grpc.stop(grace_s)  # lets in-flight frames finish and be acked
        if self._tail is not None:
            await asyncio.to_thread(self._tail.close)  # after the last in-flight frame
        tasks = [*self._workers, *([self._retention] if self._retention is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._views is not None:
            self._views.close()


async def serve(settings: CloudSettings) -> None:
    server = CloudServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"fchm cloud ready: gRPC {settings.grpc_host}:{server.grpc_port}, "
        f"REST http://{settings.http_host}:{server.http_port}",
        flush=True,
    )
    await stop.wait()
    log.info("stopping")
    await server.stop()
