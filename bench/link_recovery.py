"""Time for the edge to recover after its uplink returns.

    spool ─► Uplink ─► TcpProxy (down for N s, then up) ─► `fchm cloud serve` (child process)

Frames of the real demo video, coded with the default bundle, are spooled at a steady
rate while the link goes down for 1, 5 and 20 seconds. For each outage the bench
measures the time from the link returning until the first acknowledgement, and
until the backlog built up during the outage has drained. It uses the agent's
default backoff (0.2 s doubling to 30 s, with jitter), so longer outages wait longer
for the next attempt.

    .venv/bin/python bench/link_recovery.py [--bundle bundles/default] [--fps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from codec.bundle import Bundle
from edge.backoff import Backoff
from edge.frame_encoder import FrameEncoder
from edge.settings import EdgeSettings
from edge.sources import open_source
from edge.spool import Spool
from edge.uplink import Uplink, UplinkListener
from fchm.cloud_process import CloudProcess
from fchm.demo import packaged_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/
from tests.tcp_proxy import TcpProxy

OUTAGES_S = (1.0, 5.0, 20.0)


class AckClock(UplinkListener):
    def __init__(self) -> None:
        self.last_ack = 0.0
        self.acks = 0

    def on_acked(self, sequence: int, nbytes: int, duplicate: bool) -> None:
        self.last_ack = time.monotonic()
        self.acks += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--fps", type=float, default=2.0, help="frames spooled per second")
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    bundle = Bundle.load(args.bundle)
    encoder = FrameEncoder(bundle, threads=1)
    frames = [encoder.encode(f, args.level).bitstream
              for f in open_source(str(packaged_video()), max_fps=1.0, max_frames=8)]  # fmt: skip
    defaults = EdgeSettings(source="-", camera_id="bench")

    work = Path(tempfile.mkdtemp(prefix="fchm-recovery-"))
    rows = []
    with CloudProcess(args.bundle, work / "cloud") as cloud:
        proxy = TcpProxy(cloud.grpc_port)
        spool = Spool(work / "spool", max_bytes=1 << 30, max_age_s=3600)
        clock = AckClock()
        uplink = Uplink(
            spool, "bench-cam", bundle.hash,
            channel_factory=lambda: grpc.insecure_channel(f"127.0.0.1:{proxy.port}"),
            connect_timeout_s=defaults.grpc_timeout_s,
            backoff=Backoff(defaults.backoff_initial_s, defaults.backoff_max_s),
            listener=clock,
        )  # fmt: skip
        uplink.start()
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                spool.append(time.time_ns(), args.level, frames[i % len(frames)])
                i += 1
                stop.wait(1 / args.fps)

        threading.Thread(target=produce, daemon=True).start()
        time.sleep(3)  # steady state first
        for outage in OUTAGES_S:
            proxy.down()
            time.sleep(outage)
            backlog = spool.frames
            acks_before = clock.acks
            proxy.up()
            back = time.monotonic()
            while clock.acks == acks_before:
                time.sleep(0.01)
            first_ack = clock.last_ack - back
            while spool.frames > 2:  # the backlog has drained (≤ 2 frames in flight)
                time.sleep(0.01)
            drained = time.monotonic() - back
            rows.append(
                {
                    "outage_s": outage,
                    "backlog_frames": backlog,
                    "first_ack_s": round(first_ack, 3),
                    "drained_s": round(drained, 3),
                }
            )
            print(rows[-1], flush=True)
            time.sleep(2)
        stop.set()
        uplink.stop(flush_timeout_s=30)
        proxy.close()

    meta = {
        "fps": args.fps,
        "level": args.level,
        "bytes_per_frame": sum(map(len, frames)) / len(frames),
        "backoff": [defaults.backoff_initial_s, defaults.backoff_max_s],
        "machine": f"{os.cpu_count()} cores",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "link_recovery.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    lines = [
        "| outage (s) | backlog (frames) | first ack after link up (s) | backlog drained (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['outage_s']:g} | {r['backlog_frames']} | {r['first_ack_s']:.2f} | "
              f"{r['drained_s']:.2f} |" for r in rows]  # fmt: skip
    lines.append(f"\n{args.fps:g} frames/s spooled, level {args.level} "
                 f"({meta['bytes_per_frame']:,.0f} B/frame), default backoff "
                 f"{meta['backoff'][0]}→{meta['backoff'][1]} s, loopback.")  # fmt: skip
    (args.out / "link_recovery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
