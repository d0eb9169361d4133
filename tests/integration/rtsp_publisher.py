"""Publish a video, looped and paced like a camera, to an RTSP server (RECORD).

    python -m tests.integration.rtsp_publisher rtsp://127.0.0.1:PORT/cam VIDEO [--fps 24]

Re-encodes to MPEG-4 with a keyframe every 10 frames so a client joining late starts
quickly, and sends RTP over UDP (what Debian's rtsp-server-perl relays). Prints
"publishing" once the server has accepted the stream.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import av


def publish(url: str, video: str, fps: float) -> None:
    out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "udp"})
    stream = out.add_stream("mpeg4", rate=round(fps))
    stream.gop_size = 10
    stream.pix_fmt = "yuv420p"
    with av.open(video) as probe:
        first = probe.streams.video[0]
        stream.width, stream.height = first.codec_context.width, first.codec_context.height
    pts, started, announced = 0, time.monotonic(), False
    while True:
        with av.open(video) as source:
            for frame in source.decode(video=0):
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = pts, Fraction(1, round(fps))
                out.mux(stream.encode(frame))
                if not announced:
                    print("publishing", flush=True)
                    announced = True
                pts += 1
                time.sleep(max(0.0, started + pts / fps - time.monotonic()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("video")
    parser.add_argument("--fps", type=float, default=24.0)
    args = parser.parse_args()
    publish(args.url, args.video, args.fps)
