"""The cloud scaled out on the loopback PostgreSQL and Redis servers: two `fchm cloud
serve` replicas share one database, blob directory and view queue, a `fchm worker`
renders for both, and a replica is SIGKILLed mid-stream.

    cam-1 ─► TcpProxy (the load balancer) ─► replica A ─╮  SIGKILL A: the proxy sends
    cam-2 ─────────────────────────────────► replica B ─┤  cam-1 to B, which resumes it
                       POST /v1/views on B ─► Redis ─► fchm worker ─► PNG
                                            PostgreSQL + blobs (shared)

Nothing an edge saw acknowledged may be missing, nothing may be stored twice, and a
view asked of one replica is rendered by a worker elsewhere."""

from __future__ import annotations

import time
from pathlib import Path

from codec.bundle import Bundle
from edge.spool import Spool
from fchm.cloud_process import CloudProcess, WorkerProcess
from tests.conftest import wait_for_view
from tests.integration.test_link_faults import Acks, bitstreams, make_uplink, stored_sequences
from tests.tcp_proxy import TcpProxy

FRAMES = 300


def test_two_replicas_share_the_database_and_a_sigkill_loses_no_acked_frame(
    tiny_bundle: Bundle, tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    env = {
        "FCHM_CLOUD_DATABASE_URL": postgres_url,
        "FCHM_CLOUD_VIEW_QUEUE_URL": redis_url,
        "FCHM_CLOUD_VIEW_WORKERS": "0",  # views: the worker process
        "FCHM_CLOUD_VIEW_LEASE_S": "2",
    }
    shared = tmp_path / "cloud"  # the blob directory both replicas and the worker use
    log = tmp_path / "cloud.log"
    a = CloudProcess(tiny_bundle.path, shared, log, env=env)
    b = CloudProcess(tiny_bundle.path, shared, log, env=env)
    worker = WorkerProcess(tiny_bundle.path, shared, log, env)
    data = bitstreams(tiny_bundle)
    proxy, uplinks = None, []
    try:
        a.start()
        b.start()
        worker.start()
        proxy = TcpProxy(a.grpc_port)
        acks = {"cam-1": Acks(), "cam-2": Acks()}
        spools = {cam: Spool(tmp_path / cam, max_bytes=1 << 30, max_age_s=3600) for cam in acks}
        uplinks = [
            make_uplink(spools["cam-1"], tiny_bundle, proxy.port, "cam-1", acks["cam-1"]),
            make_uplink(spools["cam-2"], tiny_bundle, b.grpc_port, "cam-2", acks["cam-2"]),
        ]
        for uplink in uplinks:
            uplink.start()
        sent = {
            cam: [spool.append(time.time_ns(), *data[i % len(data)]) for i in range(FRAMES)]
            for cam, spool in spools.items()
        }

        # 1. A dies mid-stream; the load balancer sends cam-1's reconnect to B.
        deadline = time.monotonic() + 60
        while len(acks["cam-1"].sequences) < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        a.kill()
        with acks["cam-1"].lock:
            acked_before_kill = list(acks["cam-1"].sequences)
        assert 100 <= len(acked_before_kill) < FRAMES, "the kill should land mid-stream"
        proxy.retarget(b.grpc_port)
        proxy.cut()

        # 2. Every frame of both cameras ends up stored once, through B.
        for uplink in uplinks:
            assert uplink.stop(flush_timeout_s=120), "frames still spooled"
        uplinks = []
        stored = {cam: stored_sequences(b, cam) for cam in acks}

        # 3. A view asked of B is rendered by the worker, into the shared blobs.
        with b.api() as api:
            frame = api.get("/v1/frames", params={"camera": "cam-1", "limit": 1}).json()
            job = api.post("/v1/views", json={"frame_id": frame["items"][0]["id"]})
            assert job.status_code == 202, job.text
            view = wait_for_view(api, job.json()["id"], timeout_s=60)
            assert view["status"] == "done", view
            png = api.get(f"/v1/views/{view['id']}/image")
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert worker.stop() == 0
    finally:
        for uplink in uplinks:
            uplink.stop(flush_timeout_s=1)
        if proxy is not None:
            proxy.close()
        for process in (a, b):
            process.stop()
        worker.stop()

    assert set(acked_before_kill) <= set(stored["cam-1"]), "an acknowledged frame was lost"
    for cam in acks:
        assert len(stored[cam]) == len(set(stored[cam])) == FRAMES, cam
        assert sorted(stored[cam]) == sent[cam], cam
