"""The cloud at scale, real processes on loopback: ingest frames/s against cameras with 1
and 2 `fchm cloud serve` replicas, view latency with 1 and 2 `fchm worker` processes,
and the cloud's memory under a steady load of 8 live cameras.

    fixed-camera clip at 5 fps ─► FrameEncoder (keyframe every 50) ─► bitstreams, once
    1. ingest:  K spools, filled first ─► K Uplinks (gRPC) ─► R replicas ─► PostgreSQL │ SQLite
                                                               (+ one shared blob directory)
                frames/s = frames acked / wall time from the uplinks' start to the last ack
    2. views:   POST /v1/views (reuse false) ─► Redis db 12 ─► W `fchm worker` ─► PNG blob
                (or the embedded cloud: its own restore worker, in-process queue, SQLite)
                POST ─► status done, polled every 20 ms; one at a time, and a burst at once
    3. memory:  8 spools appended at a fixed rate ─► 8 Uplinks ─► one embedded cloud
                VmRSS of the cloud process every 5 s for --duration-s

Each PostgreSQL database is a throwaway one (created, dropped after); Redis db 12 is
flushed before and after. Every child process is stopped on the way out, failure or not.

    .venv/bin/python bench/cloud_scale.py --bundle bundles/default
    .venv/bin/python bench/cloud_scale.py --quick          # a smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from dev_sets import DEV_SETS, fetch, path_of
from tail_batching import bitstreams

from cloud.settings import CloudSettings
from codec.bundle import Bundle
from edge.backoff import Backoff
from edge.settings import EdgeSettings
from edge.spool import Spool
from edge.uplink import Uplink, UplinkListener
from fchm.cloud_process import CloudProcess, WorkerProcess

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.020
KEYFRAME_INTERVAL = 50  # tail_batching.bitstreams' FrameEncoder
WARMUP_FRAMES = 3


# ── edge side: spools and uplinks in this process ───────────────────────────
class Acks(UplinkListener):
    """When each sequence was acknowledged (wall clock, ns)."""

    def __init__(self) -> None:
        self.at: dict[int, int] = {}
        self.lock = threading.Lock()

    def on_acked(self, sequence: int, nbytes: int, duplicate: bool) -> None:
        with self.lock:
            self.at[sequence] = time.time_ns()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.at)


class Camera:
    def __init__(self, name: str, directory: Path, bundle: Bundle, target: str) -> None:
        self.name, self.acks = name, Acks()
        self.spool = Spool(directory, max_bytes=1 << 30, max_age_s=86_400)
        self.appended: dict[int, int] = {}  # sequence → append time (ns)
        self.uplink = Uplink(
            self.spool, name, bundle.hash,
            channel_factory=lambda: grpc.insecure_channel(target),
            max_in_flight=EdgeSettings.model_fields["max_in_flight"].default,
            connect_timeout_s=10, backoff=Backoff(initial_s=0.05, max_s=0.5),
            listener=self.acks,
        )  # fmt: skip

    def append(self, level: int, data: bytes) -> None:
        now = time.time_ns()
        self.appended[self.spool.append(now, level, data)] = now


def wait_acked(cameras: list[Camera], total: int, timeout_s: float) -> float:
    """Seconds until ``total`` frames are acked over ``cameras`` (raises on timeout)."""
    start = time.perf_counter()
    while sum(c.acks.count for c in cameras) < total:
        for c in cameras:
            if c.uplink.fatal is not None:
                raise RuntimeError(f"{c.name}: {c.uplink.fatal}")
        if time.perf_counter() - start > timeout_s:
            acked = sum(c.acks.count for c in cameras)
            raise RuntimeError(f"only {acked}/{total} frames acked after {timeout_s:g} s")
        time.sleep(0.005)
    return time.perf_counter() - start


def stop_uplinks(cameras: list[Camera], flush_s: float = 5) -> None:
    for c in cameras:
        c.uplink.stop(flush_timeout_s=flush_s)


def stream(cameras: list[Camera], streams: list[tuple[int, bytes]], frames: int) -> None:
    """Spool ``frames`` per camera, start the uplinks, wait for every ack."""
    for c in cameras:
        for i in range(frames):
            c.append(*streams[i % len(streams)])
        c.uplink.start()
    wait_acked(cameras, frames * len(cameras), timeout_s=300)


# ── servers: throwaway PostgreSQL databases, Redis db 12, child processes ───
@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    name = f"fchm_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


class Children:
    """Every child process started, stopped in reverse order by close()."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[CloudProcess | WorkerProcess] = []

    def cloud(self, bundle: Path, data_dir: Path, env: dict[str, str] | None = None,
              onnx_threads: int = 1) -> CloudProcess:  # fmt: skip
        cloud = CloudProcess(bundle, data_dir, self.logs / "cloud.log", onnx_threads, env=env)
        self.started.append(cloud)
        return cloud.start()

    def worker(self, bundle: Path, data_dir: Path, env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(bundle, data_dir, self.logs / "worker.log", env)
        self.started.append(worker)
        return worker.start()

    def close(self) -> None:
        while self.started:
            self.started.pop().stop()


def stored_frames(cloud: CloudProcess) -> dict[str, int]:
    with cloud.api() as api:
        items = api.get("/v1/cameras").raise_for_status().json()["items"]
    return {c["camera_id"]: c["num_frames"] for c in items}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ── 1. ingest frames/s against cameras and replicas ─────────────────────────
def ingest_run(args: argparse.Namespace, streams: list[tuple[int, bytes]], database: str,
               replicas: int, cameras: int, work: Path) -> dict[str, Any]:  # fmt: skip
    children = Children(work)
    edges: list[Camera] = []
    try:
        with _database(args, database) as url:
            env = {"FCHM_CLOUD_DATABASE_URL": url} if url else {}
            data_dir = work / "data"  # blobs (and the SQLite file): shared by the replicas
            clouds = [children.cloud(args.bundle, data_dir, env, args.onnx_threads)
                      for _ in range(replicas)]  # fmt: skip
            bundle = Bundle.load(args.bundle)
            # Warm-up: a camera per replica, a keyframe and two P-frames, not timed.
            warm = [Camera(f"warm-{r}", work / f"spool-warm-{r}", bundle, c.grpc_target)
                    for r, c in enumerate(clouds)]  # fmt: skip
            edges += warm
            stream(warm, streams, WARMUP_FRAMES)
            stop_uplinks(warm)
            timed = [Camera(f"cam-{k}", work / f"spool-{k}", bundle,
                            clouds[k % replicas].grpc_target) for k in range(cameras)]  # fmt: skip
            edges += timed
            for c in timed:
                for i in range(args.frames):
                    c.append(*streams[i % len(streams)])
            load_before = loadavg()
            start = time.time_ns()
            for c in timed:
                c.uplink.start()
            seconds = wait_acked(timed, args.frames * cameras, timeout_s=600)
            load_after = loadavg()
            stop_uplinks(timed)
            stored = stored_frames(clouds[0])
            total = args.frames * cameras
            if sum(stored.get(c.name, 0) for c in timed) != total:
                raise RuntimeError(f"stored {stored}, expected {args.frames} per camera")
            per_cam = [len(c.acks.at) / ((max(c.acks.at.values()) - start) / 1e9)
                       for c in timed]  # fmt: skip
            return {"database": database, "replicas": replicas, "cameras": cameras,
                    "frames": total, "seconds": round(seconds, 2),
                    "frames_per_s": round(total / seconds, 2),
                    "slowest_camera_fps": round(min(per_cam), 2),
                    "load_before": load_before, "load_after": load_after}  # fmt: skip
    finally:
        stop_uplinks(edges, 0)
        children.close()


@contextmanager
def _database(args: argparse.Namespace, database: str) -> Iterator[str | None]:
    if database == "sqlite":
        yield None
    else:
        with postgres_database(args.postgres) as url:
            yield url


def part_ingest(args: argparse.Namespace, streams: list[tuple[int, bytes]],
                work: Path) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    configs = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)]
    for cameras in args.cameras:
        for database, replicas in configs:
            run_dir = work / f"ingest-{database}-{replicas}-{cameras}"
            rows.append(ingest_run(args, streams, database, replicas, cameras, run_dir))
            print(rows[-1], flush=True)
    return rows


# ── 2. view latency ─────────────────────────────────────────────────────────
def view_frames(cloud: CloudProcess, camera: str) -> list[dict[str, Any]]:
    """The camera's stored frames in order, each with ``chain``: the frames a view of it
    decodes (its keyframe up to it; the camera streamed from a keyframe)."""
    with cloud.api() as api:
        page = api.get("/v1/frames", params={"camera": camera, "limit": 1000}).json()
    frames = sorted(page["items"], key=lambda f: f["sequence"])
    return [{**f, "chain": i % KEYFRAME_INTERVAL + 1} for i, f in enumerate(frames)]


def request_views(api: httpx.Client, frames: list[dict[str, Any]], chains: list[int],
                  burst: bool) -> list[dict[str, Any]]:  # fmt: skip
    """POST a view of each frame (all at once, or each after the one before is done),
    poll every 20 ms; per view: latency as polled and as the server recorded it."""
    out: list[dict[str, Any]] = []

    def post(frame: dict[str, Any]) -> tuple[str, int]:
        posted = time.time_ns()
        job = api.post("/v1/views", json={"frame_id": frame["id"], "reuse": False})
        if job.status_code != 202:
            raise RuntimeError(f"POST /v1/views: {job.status_code} {job.text}")
        return str(job.json()["id"]), posted

    def poll(pending: dict[str, tuple[int, int]]) -> None:
        deadline = time.monotonic() + 300
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} views not done after 300 s")
            for view_id in list(pending):
                view = api.get(f"/v1/views/{view_id}").raise_for_status().json()
                if view["status"] == "failed":
                    raise RuntimeError(f"view {view_id} failed: {view['error']}")
                if view["status"] == "done":
                    seen = time.time_ns()
                    posted, chain = pending.pop(view_id)
                    out.append({
                        "polled_ms": (seen - posted) / 1e6,
                        "server_ms": (view["finished_ns"] - posted) / 1e6,
                        "queued_ms": (view["started_ns"] - view["created_ns"]) / 1e6,
                        "render_ms": (view["finished_ns"] - view["started_ns"]) / 1e6,
                        "chain": chain})  # fmt: skip
            time.sleep(POLL_S)

    if burst:
        posted = [post(f) for f in frames]
        poll({view_id: (t, chain) for (view_id, t), chain in zip(posted, chains, strict=True)})
    else:
        for frame, chain in zip(frames, chains, strict=True):
            view_id, t = post(frame)
            poll({view_id: (t, chain)})
    return out


def view_rows(api: httpx.Client, frames: list[dict[str, Any]], setup: str,
              args: argparse.Namespace) -> list[dict[str, Any]]:  # fmt: skip
    """The serial and the burst run on distinct frames spread over the stored GOPs."""
    n = args.views
    step = max(1, len(frames) // n)
    rows = []
    for mode, offset in (("one at a time", 0), ("burst", step // 2)):
        picked = [frames[(offset + i * step) % len(frames)] for i in range(n)]
        chains = [f["chain"] for f in picked]
        views = request_views(api, picked, chains, burst=mode == "burst")
        rows.append(summarize_views(setup, mode, views))
        print(rows[-1], flush=True)
    return rows


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def chain_slope(views: list[dict[str, Any]]) -> float:
    """Least-squares slope of render ms against the chain's length: what each P-frame
    decoded on the way from the keyframe adds to a view."""
    chains = [v["chain"] for v in views]
    if len(set(chains)) < 2:
        return float("nan")
    return float(np.polyfit(chains, [v["render_ms"] for v in views], 1)[0])


def summarize_views(setup: str, mode: str, views: list[dict[str, Any]]) -> dict[str, Any]:
    polled = [v["polled_ms"] for v in views]
    server = [v["server_ms"] for v in views]
    return {"setup": setup, "mode": mode, "views": len(views),
            "p50_ms": pct(polled, 50), "p95_ms": pct(polled, 95), "max_ms": round(max(polled), 1),
            "server_p50_ms": pct(server, 50), "server_p95_ms": pct(server, 95),
            "queued_p50_ms": pct([v["queued_ms"] for v in views], 50),
            "render_p50_ms": pct([v["render_ms"] for v in views], 50),
            "render_max_ms": round(max(v["render_ms"] for v in views), 1),
            "mean_chain": round(statistics.mean(v["chain"] for v in views), 1),
            "render_ms_per_chain_frame": round(chain_slope(views), 2),
            "samples": views}  # fmt: skip


def part_views(args: argparse.Namespace, streams: list[tuple[int, bytes]],
               work: Path) -> list[dict[str, Any]]:  # fmt: skip
    bundle = Bundle.load(args.bundle)
    frames = args.views * 2 * 2 + 10  # room for two sets of distinct frames
    rows: list[dict[str, Any]] = []
    # a. embedded: SQLite, the cloud's own restore worker on its in-process queue
    children, edges = Children(work), []
    try:
        cloud = children.cloud(args.bundle, work / "embedded", None, args.onnx_threads)
        cam = Camera("view-cam", work / "spool-embedded", bundle, cloud.grpc_target)
        edges.append(cam)
        stream([cam], streams, frames)
        stop_uplinks([cam])
        with cloud.api(timeout=60) as api:
            rows += view_rows(api, view_frames(cloud, "view-cam"), "embedded (view_workers=1, "
                              "in-process queue, SQLite)", args)  # fmt: skip
    finally:
        stop_uplinks(edges, 0)
        children.close()
    # b. `fchm worker` processes on Redis db 12, the cloud renders nothing
    flush_redis(args.redis)
    children, edges = Children(work), []
    try:
        with postgres_database(args.postgres) as url:
            env = {"FCHM_CLOUD_DATABASE_URL": url, "FCHM_CLOUD_VIEW_QUEUE_URL": args.redis,
                   "FCHM_CLOUD_VIEW_WORKERS": "0"}  # fmt: skip
            shared = work / "scaled"
            cloud = children.cloud(args.bundle, shared, env, args.onnx_threads)
            cam = Camera("view-cam", work / "spool-scaled", bundle, cloud.grpc_target)
            edges.append(cam)
            stream([cam], streams, frames)
            stop_uplinks([cam])
            stored = view_frames(cloud, "view-cam")
            for workers in (1, 2):
                while len([w for w in children.started if isinstance(w, WorkerProcess)]) < workers:
                    children.worker(args.bundle, shared, env)
                with cloud.api(timeout=60) as api:
                    half = (
                        stored[: len(stored) // 2] if workers == 1 else stored[len(stored) // 2 :]
                    )
                    rows += view_rows(api, half, f"{workers} `fchm worker` (Redis, PostgreSQL)",
                                      args)  # fmt: skip
            for child in children.started:  # stop them while their database still exists
                child.stop()
    finally:
        stop_uplinks(edges, 0)
        children.close()
        flush_redis(args.redis)
    return rows


# ── 3. the cloud's memory under 8 live cameras ──────────────────────────────
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def part_memory(args: argparse.Namespace, streams: list[tuple[int, bytes]],
                work: Path) -> dict[str, Any]:  # fmt: skip
    bundle = Bundle.load(args.bundle)
    children = Children(work)
    edges: list[Camera] = []
    stop = threading.Event()
    failures: list[BaseException] = []
    try:
        cloud = children.cloud(args.bundle, work / "memory", None, args.onnx_threads)
        assert cloud.process is not None
        pid = cloud.process.pid
        edges += [Camera(f"live-{k}", work / f"spool-live-{k}", bundle, cloud.grpc_target)
                  for k in range(args.memory_cameras)]  # fmt: skip
        for c in edges:
            c.uplink.start()
        total_rate = args.memory_cameras * args.memory_fps
        t0 = time.monotonic()

        def produce() -> None:  # camera k's frame i is due at t0 + (i·cameras + k) / rate
            try:
                n = 0
                while not stop.is_set():
                    due = t0 + n / total_rate
                    if due - t0 >= args.duration_s:
                        return
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    camera, index = edges[n % len(edges)], n // len(edges)
                    camera.append(*streams[index % len(streams)])
                    n += 1
            except BaseException as exc:
                failures.append(exc)

        producer = threading.Thread(target=produce, name="producer")
        producer.start()
        samples = []
        while True:
            t = time.monotonic() - t0
            samples.append({"t_s": round(t, 1), "rss_mib": round(rss_mib(pid), 1),
                            "appended": sum(len(c.appended) for c in edges),
                            "acked": sum(c.acks.count for c in edges),
                            "load1": loadavg()[0]})  # fmt: skip
            if t >= args.duration_s or failures:
                break
            time.sleep(max(0.0, t0 + len(samples) * args.sample_s - time.monotonic()))
        producer.join()
        if failures:
            raise RuntimeError(f"producer failed: {failures[0]!r}") from failures[0]
        appended = sum(len(c.appended) for c in edges)
        acked_at_end = sum(c.acks.count for c in edges)
        drain_s = wait_acked(edges, appended, timeout_s=120)
        stop_uplinks(edges)
        stored = sum(stored_frames(cloud).values())
        latencies = [(c.acks.at[s] - t) / 1e6 for c in edges for s, t in c.appended.items()]
        tail = [s for s in samples if s["t_s"] >= args.duration_s - min(240, 0.8 * args.duration_s)]
        slope = float(np.polyfit([s["t_s"] for s in tail], [s["rss_mib"] for s in tail], 1)[0])
        return {"cameras": args.memory_cameras, "fps_per_camera": args.memory_fps,
                "duration_s": args.duration_s, "sample_s": args.sample_s,
                "rss_start_mib": samples[0]["rss_mib"],
                "rss_peak_mib": max(s["rss_mib"] for s in samples),
                "rss_end_mib": samples[-1]["rss_mib"],
                "growth_window_s": round(tail[-1]["t_s"] - tail[0]["t_s"], 1),
                "growth_mib_per_min": round(slope * 60, 2),
                "appended": appended, "acked_at_end": acked_at_end,
                "backlog_at_end": appended - acked_at_end, "drain_s": round(drain_s, 2),
                "stored": stored, "ack_latency_p50_ms": pct(latencies, 50),
                "ack_latency_p95_ms": pct(latencies, 95),
                "ack_latency_max_ms": round(max(latencies), 1), "samples": samples}  # fmt: skip
    finally:
        stop.set()
        stop_uplinks(edges, 0)
        children.close()


# ── report ──────────────────────────────────────────────────────────────────
def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")  # fmt: skip
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"nproc": int(nproc), "cpu": model, "mem_gib": round(int(mem) / 2**20, 1),
            "gpu": "none"}  # fmt: skip


def report(result: dict[str, Any]) -> str:
    meta, ing, views, mem = result["meta"], result["ingest"], result["views"], result["memory"]
    m = meta["machine"]
    lines = ["# The cloud at scale", "",
             f"{meta['date']}, {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, no GPU; "
             f"bundle {meta['bundle']} ({meta['bundle_hash'][:12]}); `{meta['command']}`. "
             f"Load average before {meta['load_before']}, after {meta['load_after']}. "
             f"{meta['note']}", "",
             "## 1. Ingest over gRPC: frames/s against cameras and replicas", "",
             f"Fixed-camera clip at 5 fps, level {meta['level']} ({meta['mean_bytes']:,.0f} "
             f"B/frame, keyframe every {KEYFRAME_INTERVAL}); {meta['frames']} frames per camera "
             "spooled first, then every Uplink started; frames/s = frames acked / seconds "
             "from the start to the last ack. Cameras split evenly over the replicas; both "
             "replicas share one PostgreSQL database and one blob directory. Each cloud: "
             f"FCHM_CLOUD_ONNX_THREADS={meta['onnx_threads']}, the tail at the cloud's "
             f"defaults (FCHM_CLOUD_TAIL_MAX_BATCH={meta['tail_max_batch']}, "
             f"FCHM_CLOUD_TAIL_MAX_DELAY_MS={meta['tail_max_delay_ms']:g}, "
             f"FCHM_CLOUD_INGEST_WORKERS={meta['ingest_workers']}: asyncio's pool); the "
             "uplinks run in the bench process on the same cores.", "",
             "| cameras | SQLite, 1 replica (embedded) | PostgreSQL, 1 replica | "
             "PostgreSQL, 2 replicas | 2 replicas / 1 |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for k in sorted({r["cameras"] for r in ing}):
        fps = {(r["database"], r["replicas"]): r["frames_per_s"] for r in ing
               if r["cameras"] == k}  # fmt: skip
        one, two = fps[("postgresql", 1)], fps[("postgresql", 2)]
        lines.append(f"| {k} | {fps[('sqlite', 1)]} | {one} | {two} | {two / one:.2f}x |")
    lines += ["", "| database | replicas | cameras | frames | s | frames/s | slowest camera "
              "frames/s | load before → after |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    lines += [f"| {r['database']} | {r['replicas']} | {r['cameras']} | {r['frames']} | "
              f"{r['seconds']} | {r['frames_per_s']} | {r['slowest_camera_fps']} | "
              f"{r['load_before'][0]} → {r['load_after'][0]} |" for r in ing]  # fmt: skip
    lines += ["", "## 2. View latency: POST /v1/views to status done (preview)", "",
              f"{meta['views']} views per row, `reuse: false`, each of a distinct stored frame "
              "spread over the GOPs; GET /v1/views/{id} polled every 20 ms (one poller; in "
              "the burst it walks every pending job per round). `server` = the job's "
              "finished_ns − the POST's send time; queued = started − created; render = "
              "finished − started, which includes decoding the frame's P-frame chain from "
              "its keyframe (chain = frames decoded, mean over the row). Only the `preview` "
              "kind exists: **to final cannot be measured until the diffusion view exists.**",
              "", "| setup | requests | p50 ms | p95 ms | max ms | server p50 / p95 | "
              "queued p50 | render p50 / max | mean chain | render ms per chain frame (slope) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['setup']} | {r['mode']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
              f"{r['server_p50_ms']} / {r['server_p95_ms']} | {r['queued_p50_ms']} | "
              f"{r['render_p50_ms']} / {r['render_max_ms']} | {r['mean_chain']} | "
              f"{r['render_ms_per_chain_frame']} |" for r in views]  # fmt: skip
    lines += ["", f"## 3. Cloud memory: {mem['cameras']} live cameras × {mem['fps_per_camera']:g} "
              f"fps for {mem['duration_s']:g} s", "",
              "One embedded `fchm cloud serve` (SQLite, blobs on disk); the spools appended at "
              "the fixed rate (not a burst), 8 Uplinks streaming live; VmRSS of the cloud "
              f"process every {mem['sample_s']:g} s; growth = least-squares slope over the "
              f"last {mem['growth_window_s']:g} s.", "",
              "| RSS start MiB | peak | end | growth MiB/min | frames appended | acked by the "
              "end | drained after | stored | spool → ack p50 / p95 / max ms |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| {mem['rss_start_mib']} | {mem['rss_peak_mib']} | {mem['rss_end_mib']} | "
              f"{mem['growth_mib_per_min']:+} | {mem['appended']} | {mem['acked_at_end']} | "
              f"{mem['drain_s']} s | {mem['stored']} | {mem['ack_latency_p50_ms']} / "
              f"{mem['ack_latency_p95_ms']} / {mem['ack_latency_max_ms']} |", "",
              "| t s | RSS MiB | appended | acked | load 1 min |",
              "|---:|---:|---:|---:|---:|"]  # fmt: skip
    every = max(1, round(30 / mem["sample_s"]))
    shown = mem["samples"][::every]
    if shown[-1] is not mem["samples"][-1]:
        shown.append(mem["samples"][-1])
    lines += [f"| {s['t_s']:g} | {s['rss_mib']} | {s['appended']} | {s['acked']} | "
              f"{s['load1']} |" for s in shown]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--cameras", default="2,4,8", help="camera counts of part 1")
    parser.add_argument("--frames", type=int, default=100, help="frames per camera, part 1")
    parser.add_argument("--level", type=int, default=4)
    parser.add_argument("--views", type=int, default=20, help="views per row, part 2")
    parser.add_argument("--memory-cameras", type=int, default=8)
    parser.add_argument("--memory-fps", type=float, default=None,
                        help="frames/s per camera in part 3 (default: half of what part 1 "
                        "measured for 8 cameras on SQLite, over the cameras, rounded down "
                        "to 0.25)")  # fmt: skip
    parser.add_argument("--duration-s", type=float, default=300.0, help="part 3's length")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--onnx-threads", type=int, default=1, help="per cloud process")
    parser.add_argument("--parts", default="ingest,views,memory")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,4 cameras × 12 frames, 5 views, 30 s")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("var/bench/cloud_scale"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--note", default="", help="a sentence for the results (e.g. load)")
    parser.add_argument("--rewrite", type=Path, default=None,
                        help="only write the .md again from this .json (with --note)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:  # its results go next to the work directory, not to bench/results
        args.cameras, args.frames, args.views, args.duration_s = "2,4", 12, 5, 30.0
        args.out = args.work.parent
    args.cameras = [int(v) for v in args.cameras.split(",")]
    args.parts = set(args.parts.split(","))
    return args


def main() -> None:
    args = parse_args()
    if args.rewrite is not None:  # e.g. to add what was seen on the machine during the run
        done = json.loads(args.rewrite.read_text())
        done["meta"]["note"] = args.note or done["meta"]["note"]
        args.rewrite.write_text(json.dumps(done, indent=2) + "\n")
        args.rewrite.with_suffix(".md").write_text(report(done))
        return
    fetch()
    bundle = Bundle.load(args.bundle)
    video = path_of(next(d for d in DEV_SETS if d.name == "fixed_camera"))
    count = max(args.frames, KEYFRAME_INTERVAL * 2)
    streams = [(args.level, b) for b in bitstreams(bundle, video, count, args.level)]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    defaults = CloudSettings.model_fields
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "bundle": str(args.bundle), "bundle_hash": bundle.hash,
            "command": "python bench/cloud_scale.py " + " ".join(sys.argv[1:]),
            "level": args.level, "frames": args.frames, "views": args.views,
            "mean_bytes": sum(len(b) for _, b in streams) / len(streams),
            "onnx_threads": args.onnx_threads,
            "tail_max_batch": defaults["tail_max_batch"].default,
            "tail_max_delay_ms": defaults["tail_max_delay_ms"].default,
            "ingest_workers": defaults["ingest_workers"].default,
            "load_before": loadavg(), "note": args.note}  # fmt: skip
    result: dict[str, Any] = {"meta": meta, "ingest": [], "views": [], "memory": None}
    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = step()
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {timings[name]} s", flush=True)
        return value

    if "ingest" in args.parts:
        result["ingest"] = timed("ingest", lambda: part_ingest(args, streams, args.work / "1"))
    if "views" in args.parts:
        result["views"] = timed("views", lambda: part_views(args, streams, args.work / "2"))
    if "memory" in args.parts:
        if args.memory_fps is None:
            eight = [r for r in result["ingest"] if r["database"] == "sqlite"]
            if not eight:
                raise SystemExit("--memory-fps is needed without part 1's SQLite rows")
            fps = max(eight, key=lambda r: r["cameras"])["frames_per_s"]
            args.memory_fps = max(0.25, int(0.5 * fps / args.memory_cameras * 4) / 4)
        result["memory"] = timed("memory", lambda: part_memory(args, streams, args.work / "3"))
    meta["load_after"], meta["seconds"] = loadavg(), timings
    args.out.mkdir(parents=True, exist_ok=True)
    name = "cloud_scale_quick" if args.quick else "cloud_scale"
    if result["ingest"] and result["views"] and result["memory"]:
        md = report(result)
        (args.out / f"{name}.md").write_text(md)
        print(md)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
