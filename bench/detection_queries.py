"""Detection query latency (p50/p99/max) over 1,000,000 stored detections, on SQLite
and on PostgreSQL, for the indexed filters of GET /v1/detections.

    synthetic fleet (16 cameras, event bursts at 2-5 fps over 7 days, ~4 detections a frame)
      ─► FrameStore(open_engine(url), LocalBlobStore) (the real migrations: schema + indexes)
      ─► bulk fill straight into cameras / frames / detections
           SQLite: SQLAlchemy Core executemany │ PostgreSQL: COPY through psycopg, ANALYZE
      ─► FrameStore.query_detections(DetectionQuery(..., limit=101, keyset)) as the API
         calls it, ~200 runs per shape with random parameters, shapes interleaved
      ─► p50 / p99 / max ms per shape and engine; a shape whose p99 misses the target
         gets its plan (EXPLAIN QUERY PLAN │ EXPLAIN (ANALYZE, BUFFERS)) in the results

The PostgreSQL database is a throwaway one (``CREATE DATABASE``, dropped at the end); a
database of that name that already exists is refused, never dropped.

    .venv/bin/python bench/detection_queries.py                         # 1,000,000 detections
    .venv/bin/python bench/detection_queries.py --detections 50000 --skip-postgres   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.engine import Engine, make_url

from cloud.store.blobs import LocalBlobStore
from cloud.store.frame_store import FrameStore, open_engine
from cloud.store.records import DetectionQuery
from cloud.store.schema import cameras, detections, frames

TARGET_P99_MS = 20.0
LIMIT = 101  # the API asks for its page size (100) + 1: the extra row says "next page"
PAGE = LIMIT - 1
DAYS = 7
T_END_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: fixed, so runs are comparable
T0_NS = T_END_NS - DAYS * 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
# (label, COCO class id, share of detections): four common classes and two rare ones.
LABELS = [("person", 0, 0.55), ("car", 2, 0.25), ("bicycle", 1, 0.10), ("dog", 16, 0.095),
          ("horse", 17, 0.004), ("bear", 21, 0.001)]  # fmt: skip
COMMON = [name for name, _, share in LABELS if share >= 0.05]
RARE = [name for name, _, share in LABELS if share < 0.05]
CHUNK = 50_000
FRAME_COLS = ["id", "camera_id", "sequence", "capture_time_ns", "received_time_ns", "rate_level",
              "num_bytes", "crc32", "image_width", "image_height", "num_detections",
              "bitstream_key"]  # fmt: skip
DETECTION_COLS = ["id", "frame_id", "camera_id", "capture_time_ns", "class_id", "label", "score",
                  "x1", "y1", "x2", "y2"]  # fmt: skip


# ── the synthetic fleet ─────────────────────────────────────────────────────
@dataclass
class Fleet:
    camera_ids: list[str]
    fps: list[int]
    f_camera: np.ndarray  # per frame, in capture-time order (frame id = index + 1)
    f_sequence: np.ndarray
    f_time: np.ndarray
    f_count: np.ndarray  # detections per frame
    d_frame: np.ndarray  # per detection: frame index
    d_label: np.ndarray  # index into LABELS
    d_score: np.ndarray
    d_box: np.ndarray  # (n, 4) x1 y1 x2 y2 in a 640x480 frame

    @property
    def num_frames(self) -> int:
        return len(self.f_time)

    @property
    def num_detections(self) -> int:
        return len(self.d_frame)


def make_fleet(num_detections: int, num_cameras: int, seed: int) -> Fleet:
    """Cameras store frames in event bursts (5-60 s at their frame rate, more by day than
    by night), some cameras far busier than others; 1 + Poisson(3) detections a frame."""
    rng = np.random.default_rng(seed)
    counts = 1 + np.minimum(rng.poisson(3.0, size=num_detections // 2 + 16), 19)
    n_frames = int(np.searchsorted(np.cumsum(counts), num_detections)) + 1
    counts = counts[:n_frames]
    counts[-1] -= int(counts.sum()) - num_detections  # exactly num_detections
    camera_ids = [f"cam-{k:02d}" for k in range(num_cameras)]
    fps = [int(v) for v in rng.choice([2, 5], size=num_cameras)]
    weight = rng.lognormal(0.0, 0.6, size=num_cameras)
    per_camera = np.floor(weight / weight.sum() * n_frames).astype(np.int64)
    per_camera[: n_frames - int(per_camera.sum())] += 1
    cam_parts, seq_parts, time_parts = [], [], []
    for k, n in enumerate(per_camera):
        n = int(n)
        # Bursts: a start (day-weighted over the week) and a length in frames.
        lengths = (rng.uniform(5, 60, size=n // (5 * fps[k]) + 8) * fps[k]).astype(np.int64) + 1
        lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]
        lengths[-1] -= int(lengths.sum()) - n
        starts = _day_weighted_times(rng, len(lengths))
        offsets = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        t = np.repeat(starts, lengths) + offsets * (10**9 // fps[k])
        t += rng.integers(0, 2_000_000, size=n)  # capture jitter, up to 2 ms
        t = np.sort(np.clip(t, T0_NS, T_END_NS - 1))
        cam_parts.append(np.full(n, k, dtype=np.int16))
        seq_parts.append(np.arange(n, dtype=np.int64))
        time_parts.append(t)
    f_camera = np.concatenate(cam_parts)
    f_sequence = np.concatenate(seq_parts)
    f_time = np.concatenate(time_parts)
    order = np.argsort(f_time, kind="stable")  # ingest order: ids grow with capture time
    f_camera, f_sequence, f_time = f_camera[order], f_sequence[order], f_time[order]
    counts = rng.permutation(counts)
    shares = np.array([share for _, _, share in LABELS])
    x1 = rng.uniform(0, 600, size=num_detections)
    y1 = rng.uniform(0, 440, size=num_detections)
    w = rng.uniform(8, 200, size=num_detections)
    h = rng.uniform(8, 300, size=num_detections)
    box = np.stack([x1, y1, np.minimum(x1 + w, 640), np.minimum(y1 + h, 480)], axis=1)
    return Fleet(
        camera_ids=camera_ids, fps=fps, f_camera=f_camera, f_sequence=f_sequence,
        f_time=f_time, f_count=counts,
        d_frame=np.repeat(np.arange(n_frames), counts),
        d_label=rng.choice(len(LABELS), size=num_detections, p=shares / shares.sum()),
        d_score=rng.uniform(0.25, 1.0, size=num_detections), d_box=box,
    )  # fmt: skip


def _day_weighted_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` times over the week, 4x as likely at 14:00 as at 02:00 (rejection sampling)."""
    out: list[np.ndarray] = []
    got = 0
    while got < n:
        t = rng.integers(T0_NS, T_END_NS - 60 * 10**9, size=2 * n + 16)
        hour = (t // HOUR_NS) % 24
        keep = rng.uniform(0, 1, size=t.size) < 0.625 - 0.375 * np.cos((hour - 2) / 24 * 2 * np.pi)
        out.append(t[keep])
        got += int(keep.sum())
    return np.concatenate(out)[:n]


def frame_rows(fleet: Fleet, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
    rng = np.random.default_rng(lo)
    received = fleet.f_time[lo:hi] + rng.integers(50, 400, size=hi - lo) * 1_000_000
    crc = rng.integers(0, 2**32, size=hi - lo)
    level = rng.integers(0, 8, size=hi - lo)
    size = rng.integers(800, 30_000, size=hi - lo)
    for i in range(lo, hi):
        cam = fleet.camera_ids[int(fleet.f_camera[i])]
        seq, c = int(fleet.f_sequence[i]), int(crc[i - lo])
        yield (i + 1, cam, seq, int(fleet.f_time[i]), int(received[i - lo]), int(level[i - lo]),
               int(size[i - lo]), c, 640, 480, int(fleet.f_count[i]),
               f"bitstreams/{cam}/{seq:012d}-{c:08x}-bench.fchm")  # fmt: skip


def detection_rows(fleet: Fleet, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
    frame = fleet.d_frame[lo:hi]
    cams = fleet.f_camera[frame].tolist()
    times = fleet.f_time[frame].tolist()
    labels = fleet.d_label[lo:hi].tolist()
    scores = fleet.d_score[lo:hi].tolist()
    boxes = fleet.d_box[lo:hi].tolist()
    for j, f in enumerate(frame.tolist()):
        name, class_id, _ = LABELS[labels[j]]
        yield (lo + j + 1, f + 1, fleet.camera_ids[cams[j]], times[j], class_id, name,
               scores[j], *boxes[j])  # fmt: skip


def camera_rows(fleet: Fleet) -> list[dict[str, Any]]:
    return [{"camera_id": c, "bundle_hash": "0" * 64, "first_seen_ns": T0_NS,
             "last_seen_ns": T_END_NS, "clock_offset_ns": 0, "agent_version": "bench"}
            for c in fleet.camera_ids]  # fmt: skip


def chunks(total: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, total, CHUNK):
        yield lo, min(total, lo + CHUNK)


# ── filling ─────────────────────────────────────────────────────────────────
def fill_sqlite(engine: Engine, fleet: Fleet) -> None:
    with engine.begin() as conn:
        conn.execute(insert(cameras), camera_rows(fleet))
        for lo, hi in chunks(fleet.num_frames):
            rows = [dict(zip(FRAME_COLS, r, strict=True)) for r in frame_rows(fleet, lo, hi)]
            conn.execute(insert(frames), rows)
        for lo, hi in chunks(fleet.num_detections):
            rows = [
                dict(zip(DETECTION_COLS, r, strict=True)) for r in detection_rows(fleet, lo, hi)
            ]
            conn.execute(insert(detections), rows)
    with engine.connect() as conn:  # fold the WAL into the file, so its size is the DB's
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def fill_postgres(engine: Engine, fleet: Fleet) -> None:
    with engine.begin() as conn:
        conn.execute(insert(cameras), camera_rows(fleet))
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        assert pg is not None
        with pg.cursor() as cur:
            for table, cols, rows in (
                ("frames", FRAME_COLS, frame_rows),
                ("detections", DETECTION_COLS, detection_rows),
            ):
                total = fleet.num_frames if table == "frames" else fleet.num_detections
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for lo, hi in chunks(total):
                        for row in rows(fleet, lo, hi):
                            copy.write_row(row)
                # Explicit ids: move the sequence past them, as ingest would have.
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {total})")
        pg.commit()
    finally:
        raw.close()


# ── the query shapes ────────────────────────────────────────────────────────
@dataclass
class Shape:
    name: str
    what: str
    make: Callable[[np.random.Generator, Fleet], DetectionQuery]
    pages: int = 0  # follow the cursor this many pages first; the next page is timed


def _cam(rng: np.random.Generator, fleet: Fleet) -> str:
    return fleet.camera_ids[int(rng.integers(len(fleet.camera_ids)))]


def _newest(rng: np.random.Generator) -> bool:
    return bool(rng.integers(2))


def _window(rng: np.random.Generator, fleet: Fleet) -> DetectionQuery:
    since = int(rng.integers(T0_NS, T_END_NS - HOUR_NS))
    return DetectionQuery(camera_id=_cam(rng, fleet), since_ns=since, until_ns=since + HOUR_NS,
                          limit=LIMIT)  # fmt: skip


def shapes(deep_pages: int) -> list[Shape]:
    labels = [name for name, _, _ in LABELS]
    return [
        Shape("newest", "newest page of all detections",
              lambda r, f: DetectionQuery(limit=LIMIT, newest_first=True)),
        Shape("camera_newest", "one camera, newest first",
              lambda r, f: DetectionQuery(camera_id=_cam(r, f), limit=LIMIT, newest_first=True)),
        Shape("camera_window", "one camera + a 1 h window, oldest first", _window),
        Shape("label", "one common label (person/car/bicycle/dog), either order",
              lambda r, f: DetectionQuery(label=COMMON[int(r.integers(len(COMMON)))],
                                          limit=LIMIT, newest_first=_newest(r))),
        Shape("rare_label", f"a rare label ({'/'.join(RARE)}), either order",
              lambda r, f: DetectionQuery(label=RARE[int(r.integers(len(RARE)))],
                                          limit=LIMIT, newest_first=_newest(r))),
        Shape("camera_label", "one camera + any of the 6 labels, either order",
              lambda r, f: DetectionQuery(camera_id=_cam(r, f),
                                          label=labels[int(r.integers(len(labels)))],
                                          limit=LIMIT, newest_first=_newest(r))),
        Shape("camera_min_score", "one camera + min_score 0.9, either order",
              lambda r, f: DetectionQuery(camera_id=_cam(r, f), min_score=0.9, limit=LIMIT,
                                          newest_first=_newest(r))),
        Shape("deep_page", f"one camera, newest first, page {deep_pages + 1}",
              lambda r, f: DetectionQuery(camera_id=_cam(r, f), limit=LIMIT, newest_first=True),
              pages=deep_pages),
    ]  # fmt: skip


class LastStatement:
    """The SQL and parameters of the engine's last query: what EXPLAIN is run on."""

    def __init__(self, engine: Engine) -> None:
        self.statement = ""
        self.parameters: Any = None
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM detections" in statement:
            self.statement, self.parameters = statement, parameters


def run_shape(store: FrameStore, shape: Shape, q: DetectionQuery) -> tuple[float, int]:
    """ms of the timed call and the rows it returned."""
    if shape.pages:
        q = DetectionQuery(**{**q.__dict__, "after": page_cursor(store, q, shape.pages)})
    start = time.perf_counter()
    found = store.query_detections(q)
    return (time.perf_counter() - start) * 1000, len(found)


def page_cursor(store: FrameStore, q: DetectionQuery, pages: int) -> tuple[int, int] | None:
    """The keyset the API's cursor holds after ``pages`` pages of ``q`` (one camera, no
    other filter): the last row of page ``pages``, found by OFFSET, untimed."""
    d = detections.c
    order = (d.capture_time_ns.desc(), d.id.desc()) if q.newest_first else (d.capture_time_ns, d.id)
    query = (
        select(d.capture_time_ns, d.id)
        .where(d.camera_id == q.camera_id)
        .order_by(*order)
        .offset(pages * PAGE - 1)
        .limit(1)
    )
    with store.engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else (int(row[0]), int(row[1]))  # a short camera: page 1


def explain(engine: Engine, statement: str, parameters: Any) -> str:
    prefix = ("EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite"
              else "EXPLAIN (ANALYZE, BUFFERS) ")  # fmt: skip
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
    if engine.dialect.name == "sqlite":  # (id, parent, notused, detail)
        return "\n".join(str(r[-1]) for r in rows)
    return "\n".join(str(r[0]) for r in rows)


def index_of(plan: str) -> str:
    used = re.findall(r"\b(ix_\w+|sqlite_autoindex_\w+|detections_pkey)\b", plan)
    if used:
        return ", ".join(dict.fromkeys(used))
    return "full scan" if re.search(r"Seq Scan|SCAN detections\b", plan) else "?"


def time_shapes(store: FrameStore, fleet: Fleet, args: argparse.Namespace) -> list[dict[str, Any]]:
    engine = store.engine
    last = LastStatement(engine)
    todo = shapes(args.deep_pages)
    rng = np.random.default_rng(args.seed + 1)  # the same parameters on each engine
    for _ in range(args.warmup):  # not counted: first touches of pages and statements
        for shape in todo:
            run_shape(store, shape, shape.make(rng, fleet))
    ms: dict[str, list[float]] = {s.name: [] for s in todo}
    rows: dict[str, list[int]] = {s.name: [] for s in todo}
    slowest: dict[str, tuple[float, str, Any]] = {}
    for _ in range(args.runs):  # shapes interleaved, as mixed API traffic would be
        for shape in todo:
            t, n = run_shape(store, shape, shape.make(rng, fleet))
            ms[shape.name].append(t)
            rows[shape.name].append(n)
            if t >= slowest.get(shape.name, (-1.0, "", None))[0]:
                slowest[shape.name] = (t, last.statement, last.parameters)
    out = []
    for shape in todo:
        v = np.array(ms[shape.name])
        _, statement, parameters = slowest[shape.name]
        plan = explain(engine, statement, parameters)  # of the slowest run's query
        p99 = float(np.percentile(v, 99))
        out.append({
            "shape": shape.name, "what": shape.what, "runs": len(v),
            "mean_rows": round(float(np.mean(rows[shape.name])), 1),
            "p50_ms": round(float(np.percentile(v, 50)), 2), "p99_ms": round(p99, 2),
            "max_ms": round(float(v.max()), 2), "meets_target": p99 <= TARGET_P99_MS,
            "index": index_of(plan), "plan": plan,
            "slowest_sql": statement, "slowest_parameters": repr(parameters),
        })  # fmt: skip
    return out


# ── the engines ─────────────────────────────────────────────────────────────
def bench_engine(
    label: str,
    engine: Engine,
    blob_dir: Path,
    fleet: Fleet,
    args: argparse.Namespace,
    size: Callable[[Engine], int],
) -> dict[str, Any]:
    store = FrameStore(engine, LocalBlobStore(blob_dir))  # migrations: schema + indexes
    start = time.perf_counter()
    (fill_sqlite if engine.dialect.name == "sqlite" else fill_postgres)(engine, fleet)
    fill_s = time.perf_counter() - start
    analyze_s = None
    if engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk load
        start = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        analyze_s = round(time.perf_counter() - start, 2)
    with engine.connect() as conn:
        counted = {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                   for t in ("cameras", "frames", "detections")}  # fmt: skip
        version = conn.exec_driver_sql(
            "SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SHOW server_version"
        ).scalar_one()
    assert counted["detections"] == fleet.num_detections, counted
    print(f"{label}: filled {counted} in {fill_s:.1f} s", flush=True)
    results = time_shapes(store, fleet, args)
    return {
        "engine": label, "version": str(version), "rows": counted,
        "fill_s": round(fill_s, 2), "fill_rows_per_s": round(
            (fleet.num_frames + fleet.num_detections) / fill_s),
        "analyze_s": analyze_s, "db_bytes": size(engine), "shapes": results,
    }  # fmt: skip


def run_sqlite(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    db = work / "detection_queries.sqlite"
    blobs = work / "detection_queries-blobs"
    _remove_sqlite(db, blobs)
    work.mkdir(parents=True, exist_ok=True)
    engine = open_engine(f"sqlite:///{db}")
    try:
        return bench_engine("SQLite", engine, blobs, fleet, args, lambda _e: db.stat().st_size)
    finally:
        engine.dispose()
        if not args.keep:
            _remove_sqlite(db, blobs)


def _remove_sqlite(db: Path, blobs: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".migrate-lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(blobs, ignore_errors=True)


def _pg_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())


def run_postgres(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    url = make_url(args.postgres_url)
    name = url.database or ""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise SystemExit(f"--postgres-url: database {name!r}: use a plain name like fchm_bench")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            raise SystemExit(
                f"database {name} exists already; this bench drops only what it creates: "
                f"DROP DATABASE {name}, or pick another --postgres-url"
            )
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = open_engine(url.render_as_string(hide_password=False))
    try:
        return bench_engine(
            "PostgreSQL", engine, args.work / "detection_queries-pg-blobs", fleet, args, _pg_size
        )
    finally:
        engine.dispose()
        shutil.rmtree(args.work / "detection_queries-pg-blobs", ignore_errors=True)
        if not args.keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# ── the report ──────────────────────────────────────────────────────────────
def report(runs: list[dict[str, Any]], fleet: Fleet, meta: dict[str, Any]) -> str:
    per_cam = np.bincount(fleet.f_camera, minlength=len(fleet.camera_ids))
    shares = np.bincount(fleet.d_label, minlength=len(LABELS)) / fleet.num_detections
    lines = [
        f"# Detection query latency over {fleet.num_detections:,} detections", "",
        f"{len(fleet.camera_ids)} cameras, {fleet.num_frames:,} frames "
        f"({per_cam.min():,}-{per_cam.max():,} a camera, event bursts of 5-60 s at 2 or 5 fps, "
        f"more by day), {fleet.num_detections / fleet.num_frames:.2f} detections a frame, "
        f"capture times over {DAYS} days; labels "
        + ", ".join(f"{n} {s:.2%}" for (n, _, _), s in zip(LABELS, shares, strict=True))
        + "; scores uniform 0.25-1.", "",
        f"Each shape: `FrameStore.query_detections(DetectionQuery(..., limit={LIMIT}))` as "
        f"GET /v1/detections calls it (an admin key: no camera filter), {meta['runs']} runs "
        f"with random parameters after {meta['warmup']} warm-up runs, shapes interleaved, one "
        f"thread; ms from the call to the records (pool checkout with its pre-ping, SQL, "
        f"rows to DetectionRecord). Target: p99 ≤ {TARGET_P99_MS:g} ms. {meta['machine']}.", "",
        "| shape | engine | mean rows | p50 ms | p99 ms | max ms | index (slowest run) | "
        f"p99 ≤ {TARGET_P99_MS:g} ms |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]  # fmt: skip
    names = [s["shape"] for s in runs[0]["shapes"]]
    for i, name in enumerate(names):
        for r in runs:
            s = r["shapes"][i]
            lines.append(f"| {name} | {r['engine']} | {s['mean_rows']:g} | {s['p50_ms']:.2f} | "
                         f"{s['p99_ms']:.2f} | {s['max_ms']:.2f} | {s['index']} | "
                         f"{'yes' if s['meets_target'] else '**no**'} |")  # fmt: skip
    lines += ["", "Shapes: " + "; ".join(f"`{s['shape']}` {s['what']}"
                                         for s in runs[0]["shapes"]) + ".", "",
              "| engine | version | cameras | frames | detections | fill s | rows/s | "
              "ANALYZE s | DB size MB |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        c = r["rows"]
        analyze = "-" if r["analyze_s"] is None else f"{r['analyze_s']:.1f}"
        lines.append(f"| {r['engine']} | {r['version']} | {c['cameras']} | {c['frames']:,} | "
                     f"{c['detections']:,} | {r['fill_s']:.1f} | {r['fill_rows_per_s']:,} | "
                     f"{analyze} | {r['db_bytes'] / 2**20:,.0f} |")  # fmt: skip
    lines += ["", "Fill: straight into the tables with every index of the migrations in "
              f"place, in capture-time order, {CHUNK:,} rows a batch, one transaction (SQLite: "
              "SQLAlchemy Core executemany, then a WAL checkpoint, so the size is the file's; "
              "PostgreSQL: COPY through psycopg, then ANALYZE, as autovacuum would soon after a "
              "bulk load). SQLite gets no ANALYZE: the service never runs one.", ""]  # fmt: skip
    for r in runs:
        met = [s["shape"] for s in r["shapes"] if s["meets_target"]]
        missed = [s["shape"] for s in r["shapes"] if not s["meets_target"]]
        lines.append(f"- **{r['engine']}**: {len(met)}/{len(r['shapes'])} shapes meet p99 ≤ "
                     f"{TARGET_P99_MS:g} ms" + (f"; missed: {', '.join(missed)}" if missed
                                                else " (all)") + ".")  # fmt: skip
    for r in runs:
        for s in r["shapes"]:
            if not s["meets_target"]:
                lines += ["", f"## {r['engine']} `{s['shape']}`: p99 {s['p99_ms']:.2f} ms, plan "
                          "of its slowest run", "", "```", s["slowest_sql"].strip(),
                          f"-- parameters: {s['slowest_parameters']}", "", s["plan"],
                          "```"]  # fmt: skip
    lines += ["", "Every shape's plan (of its slowest run) is in "
              "`bench/results/detection_queries.json`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detections", type=int, default=1_000_000)
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per shape")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per shape first")
    parser.add_argument(
        "--deep-pages", type=int, default=250, help="pages before the one deep_page times"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/fchm_bench",
                        help="a database it creates and drops (must not exist)")  # fmt: skip
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--keep", action="store_true",
                        help="keep the SQLite file and the PostgreSQL database")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", default="detection_queries", help="results file stem")
    args = parser.parse_args()
    start = time.perf_counter()
    fleet = make_fleet(args.detections, args.cameras, args.seed)
    print(f"fleet: {fleet.num_frames:,} frames, {fleet.num_detections:,} detections "
          f"({time.perf_counter() - start:.1f} s)", flush=True)  # fmt: skip
    runs = []
    if not args.skip_sqlite:
        runs.append(run_sqlite(fleet, args))
    if not args.skip_postgres:
        runs.append(run_postgres(fleet, args))
    if not runs:
        raise SystemExit("nothing to run: --skip-sqlite and --skip-postgres")
    meta = {"detections": fleet.num_detections, "frames": fleet.num_frames,
            "cameras": len(fleet.camera_ids), "camera_fps": fleet.fps, "days": DAYS,
            "runs": args.runs, "warmup": args.warmup, "deep_pages": args.deep_pages,
            "limit": LIMIT, "seed": args.seed, "target_p99_ms": TARGET_P99_MS,
            "machine": f"{os.cpu_count()} cores, database on the same machine"}  # fmt: skip
    md = report(runs, fleet, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(md)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"runs": runs, "meta": meta}, indent=2) + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
