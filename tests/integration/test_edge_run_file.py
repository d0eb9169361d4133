"""``fchm edge run`` on a short file, as a process: every frame acked, progress shown,
exit 0; with the cloud unreachable, exit 3 naming what stays spooled, which the next
run sends."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av

from fchm.demo import packaged_video
from tests.conftest import RunningCloud, free_port

FRAMES = 48


def short_clip(path: Path, frames: int = FRAMES) -> Path:
    """The first ``frames`` frames of the demo video as their own file (2 s at 24 fps)."""
    with av.open(str(packaged_video())) as source, av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        for i, frame in enumerate(source.decode(video=0)):
            if i == frames:
                break
            if i == 0:
                stream.width, stream.height = frame.width, frame.height
                stream.pix_fmt = "yuv420p"
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def edge_run(clip: Path, cloud: str, bundle: Path, spool: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FCHM_EDGE_PROGRESS_INTERVAL_S": "0.5",
        "FCHM_EDGE_FLUSH_STALL_S": "3",
        "FCHM_EDGE_GRPC_TIMEOUT_S": "0.5",
        "FCHM_EDGE_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "fchm", "edge", "run", "--source", str(clip), "--camera",
         "file-1", "--cloud", cloud, "--rate", "6", "--bundle", str(bundle),
         "--spool-dir", str(spool)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def stored(cloud: RunningCloud) -> list[int]:
    with cloud.api() as api:
        items = api.get("/v1/frames", params={"camera": "file-1", "limit": 1000}).json()["items"]
    return sorted(f["sequence"] for f in items)


def test_a_file_is_sent_whole_with_progress(cloud: RunningCloud, tmp_path: Path) -> None:
    clip = short_clip(tmp_path / "clip.mp4")
    run = edge_run(clip, cloud.grpc_target, cloud.settings.bundle, tmp_path / "spool")
    assert run.returncode == 0, run.stderr
    assert f"{FRAMES} frames, {FRAMES} acked" in run.stdout
    assert "captured" in run.stderr and "acked" in run.stderr, "no progress lines"
    assert len(stored(cloud)) == FRAMES


def test_an_unreachable_cloud_leaves_the_file_spooled_for_the_next_run(
    cloud: RunningCloud, tmp_path: Path
) -> None:
    clip = short_clip(tmp_path / "clip.mp4")
    nobody = f"127.0.0.1:{free_port()}"
    down = edge_run(clip, nobody, cloud.settings.bundle, tmp_path / "spool")
    assert down.returncode == 3, down.stderr
    assert f"{FRAMES} frames stay in the spool for the next run" in down.stderr
    # The next run skips what is spooled, sends it, and exits 0.
    up = edge_run(clip, cloud.grpc_target, cloud.settings.bundle, tmp_path / "spool")
    assert up.returncode == 0, up.stderr
    assert f"0 frames, {FRAMES} acked" in up.stdout
    assert len(stored(cloud)) == FRAMES
