"""A real live-video server for the source tests: MPEG-TS over HTTP on loopback.

    python -m tests.integration.stream_server PORT VIDEO [--fps 25]

Every GET gets its own endless stream: VIDEO decoded in a loop, re-encoded as
MPEG-2 (a keyframe every 10 frames, so a client joining or rejoining starts
quickly) and muxed to MPEG-TS, paced at --fps like a camera. Prints "ready"
once it listens. Kill it to drop every client at once, the way a camera or a
recorder that loses power does.
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av


def serve(port: int, video: str, fps: float) -> None:
    class LiveStream(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            out = av.open(self.wfile, "w", format="mpegts")
            # MPEG-2 knows a few frame rates only: other --fps are paced, not signalled.
            nominal = round(fps) if round(fps) in (24, 25, 30, 50, 60) else 25
            stream = out.add_stream("mpeg2video", rate=nominal)
            stream.gop_size = 10
            stream.pix_fmt = "yuv420p"
            pts, started = 0, time.monotonic()
            try:
                while True:
                    with av.open(video) as source:
                        for frame in source.decode(video=0):
                            if pts == 0:
                                stream.width, stream.height = frame.width, frame.height
                            frame = frame.reformat(format="yuv420p")
                            frame.pts, frame.time_base = pts, Fraction(1, nominal)
                            out.mux(stream.encode(frame))
                            pts += 1
                            time.sleep(max(0.0, started + pts / fps - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError, av.error.FFmpegError, OSError):
                return  # the client went away

        def log_message(self, format: str, *args: object) -> None:
            return  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", port), LiveStream)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("video")
    parser.add_argument("--fps", type=float, default=25.0)
    args = parser.parse_args()
    serve(args.port, args.video, args.fps)
