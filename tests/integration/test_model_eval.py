"""``fchm model eval`` end to end: tiny real bundle, real images, frames of a real video.

bus.jpg, zidane.jpg ──────────────────┐
demo.mp4 (3 consecutive frames, 5 fps) ┴─► python -m fchm model eval ─► OUT.json (rows, meta)
                                                   └► OUT.png (rate–fidelity plot)
a still camera's clip (5 frames) ─► evaluate(): the codec's P-frame stream ("uniform-inter")
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from codec.bundle import Bundle
from model.eval_pixel_codecs import CRFS, image_codecs, video_codecs
from model.evaluate import QUALITIES
from tests.conftest import sample_images

ROW_KEYS = {"codec", "setting", "bytes_per_frame", "bpp", "map50", "map50_95",
            "map50_agnostic", "map50_confident", "map50_95_confident", "reference_boxes",
            "confident_reference_boxes", "edge_ms_per_frame", "decode_ms_per_frame"}  # fmt: skip


def demo_video() -> Path:
    from fchm.demo import packaged_video

    try:
        return packaged_video()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def eval_run(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("eval")
    images = out / "images"
    images.mkdir()
    for path in sample_images():
        shutil.copy(path, images / path.name)
    cmd = [
        sys.executable, "-m", "fchm", "model", "eval", "--bundle", str(tiny_bundle.path),
        "--images", str(images), "--video", str(demo_video()), "--frames", "3", "--fps", "5",
        "--json", str(out / "eval.json"), "--plot", str(out / "eval.png"),
    ]  # fmt: skip
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval" in done.stderr  # the progress bar
    return json.loads((out / "eval.json").read_text()), out / "eval.png"


def test_rows_cover_every_codec_setting_with_the_required_fields(
    eval_run: tuple[dict, Path],  # type: ignore[type-arg]
    tiny_bundle: Bundle,
) -> None:
    result, _ = eval_run
    assert set(result) >= {"rows", "bd_rate_vs_jpeg", "meta"}
    rows = result["rows"]
    for row in rows:
        assert ROW_KEYS <= set(row), row
        for key in ("map50", "map50_95", "map50_agnostic"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0, row
    by_codec: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for row in rows:
        by_codec.setdefault(row["codec"], []).append(row)
    levels = tiny_bundle.manifest.num_levels
    assert [r["setting"] for r in by_codec["uniform"]] == [f"level {i}" for i in range(levels)]
    for codec in image_codecs():
        assert [r["setting"] for r in by_codec[codec]] == [f"q={q}" for q in QUALITIES]
    assert set(video_codecs()) >= {"h264", "h264-intra"}
    for codec in video_codecs():
        assert [r["setting"] for r in by_codec[codec]] == [f"crf={c}" for c in CRFS]
    # The bundle's codec streams the clip too, with P-frames, every level: "uniform-inter".
    assert tiny_bundle.load_codec().supports_inter
    inter = by_codec["uniform-inter"]
    assert [r["setting"] for r in inter] == [f"level {i}" for i in range(levels)]
    assert {(r["frames"], r["frame_set"]) for r in inter} == {(3, "video")}
    assert all("keyframe every 50 frames, skip threshold 6" in r["note"] for r in inter)
    # One clip of 3 frames, GOP 50: one keyframe, in the feature stream as in H.264's.
    assert {r["keyframes"] for r in inter + by_codec["h264"]} == {1}
    assert {r["keyframes"] for r in by_codec["h264-intra"]} == {3}
    assert {r["keyframes"] for r in by_codec["uniform"] + by_codec["jpeg"]} == {None}
    # 2 images + 3 video frames; the video codecs code only the clip, as one stream.
    assert {r["frames"] for r in by_codec["uniform"] + by_codec["jpeg"]} == {5}
    assert {(r["frames"], r["frame_set"]) for r in by_codec["h264"]} == {(3, "video")}
    # Every figure says how many reference boxes it rests on; confident ones are a subset.
    meta = result["meta"]
    for row in rows:
        n = meta["reference_detections"] if row["frames"] == 5 else row["reference_boxes"]
        assert row["reference_boxes"] == n
        assert row["confident_reference_boxes"] <= row["reference_boxes"]
    assert (
        by_codec["jpeg"][0]["confident_reference_boxes"] == meta["confident_reference_detections"]
    )
    # On the same frames all-intra costs more than inter prediction at the same CRF.
    for inter, intra in zip(by_codec["h264"], by_codec["h264-intra"], strict=True):
        assert inter["bytes_per_frame"] < intra["bytes_per_frame"]
    # Coarser settings cost fewer bytes; every coded signal has bytes and timings.
    uniform_bytes = [r["bytes_per_frame"] for r in by_codec["uniform"]]
    assert uniform_bytes == sorted(uniform_bytes)
    h264_bytes = [r["bytes_per_frame"] for r in by_codec["h264"]]
    assert h264_bytes == sorted(h264_bytes, reverse=True)
    for row in rows:
        if row["codec"] != "full-detector":
            assert row["bytes_per_frame"] > 0 and row["bpp"] > 0 and row["decode_ms_per_frame"] >= 0
        assert row["edge_ms_per_frame"] > 0
    # The full detector on the edge: a time, no bytes, and its self-check mAP.
    (full,) = by_codec["full-detector"]
    assert full["bytes_per_frame"] is None
    if full["map50"] is not None:
        assert full["map50"] == 1.0


def test_bd_rates_and_meta(eval_run: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    result, _ = eval_run
    codecs = {"uniform", "uniform-inter", *image_codecs(), *video_codecs()}
    assert set(result["bd_rate_vs_jpeg"]) == codecs - {"jpeg"}
    for name, value in result["bd_rate_vs_jpeg"].items():
        detail = result["bd_rate_details"][name]
        assert detail["bd_rate"] == value
        assert (value is None and detail["note"]) or value > -1.0
    assert result["bd_rate_details"]["h264"]["frame_set"] == "video"
    meta = result["meta"]
    assert meta["frames"] == 5 and meta["image_frames"] == 2
    assert meta["reference_detections"] > 0  # so the mAP columns were really computed
    video = meta["video"]
    assert (video["fps"], video["source_fps"], video["frames_per_clip"]) == (5.0, 24.0, 3)
    (clip,) = video["clips"]
    assert len(clip) == 3 and clip == sorted(clip)
    assert meta["video_gop_frames"] == 50  # 10 s at 5 fps
    assert meta["feature_inter"]["families"] == ["uniform-inter"]
    assert meta["feature_inter"]["keyframe_every_frames"] == 50
    assert meta["feature_inter"]["keyframes"] == {"uniform-inter": [1]}
    assert "176x144" in meta["coded_sizes"]  # the video is coded at its own size
    equal = meta["bytes_at_equal_map50"]
    assert set(equal) == {f"{m}>={t}" for m in ("map50", "map50_confident")
                          for t in (0.5, 0.9, 0.95)}  # fmt: skip
    for by_codec in equal.values():
        assert "uniform-inter" in by_codec
        for v in by_codec.values():
            assert set(v) == {"bytes_per_frame", "bound"}
    # bus.jpg and zidane.jpg ship with ultralytics: the default export fits on them.
    assert sorted(meta["eval_images_in_packaged_fit_set"]) == ["bus.jpg", "zidane.jpg"]


def test_plot_is_a_png(eval_run: tuple[dict, Path]) -> None:  # type: ignore[type-arg]
    _, png = eval_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cli() -> Iterator[CliRunner]:
    # The CLI's callback installs a log handler on CliRunner's stderr; take it off after.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_bad_inputs_are_named(cli: CliRunner, tiny_bundle: Bundle, tmp_path: Path) -> None:
    from fchm.cli import app

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample_images()[0], images)
    (tmp_path / "empty").mkdir()
    out = ["--json", str(tmp_path / "o.json")]
    base = ["model", "eval", "--bundle", str(tiny_bundle.path), *out]
    cases = {
        "--images": [*base, "--images", str(tmp_path / "missing")],
        "--images: no .jpg": [*base, "--images", str(tmp_path / "empty")],
        "--images/--video": base,
        "--video": [*base, "--video", str(tmp_path / "missing.mp4")],
        "--frames": [*base, "--images", str(images), "--frames", "0"],
        "--fps": [*base, "--images", str(images), "--fps", "0"],
        "--clips": [*base, "--images", str(images), "--clips", "0"],
        "--gop": [*base, "--images", str(images), "--gop", "-1"],
        "--skip-threshold": [*base, "--images", str(images), "--skip-threshold", "-1"],
        "--bundle": ["model", "eval", "--bundle", str(tmp_path), *out, "--images", str(images)],
        "--plot": [*base, "--images", str(images), "--plot", str(tmp_path / "p.jpg")],
    }
    for expected, args in cases.items():
        result = cli.invoke(app, args)
        assert result.exit_code == 2, (expected, result.output)
        assert f"error: {expected}" in result.output, result.output
    assert not (tmp_path / "o.json").exists()


def test_compare_runs_a_second_bundles_codec_on_the_same_frames(
    tiny_learned_bundle: Bundle, tiny_bundle: Bundle, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from model.evaluate import EvalConfig, evaluate

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample_images()[0], images / "bus.jpg")
    result = evaluate(
        EvalConfig(
            bundle=tiny_learned_bundle.path, compare=(tiny_bundle.path,), images=images,
            levels=(0, 1), qualities=(50,), weights=tiny_checkpoint,
            reference_cache=tmp_path / "ref", progress=False,
        )
    )  # fmt: skip
    by_codec = {(r.codec, r.setting): r for r in result.rows}
    for family in ("fchm", "uniform"):  # each bundle's own encoder and codec, both levels
        rows = [by_codec[(family, f"level {lv}")] for lv in (0, 1)]
        assert all(r.frames == 1 and r.bytes_per_frame for r in rows), family
        assert rows[0].bytes_per_frame < rows[1].bytes_per_frame, family
    # The two families code different latents: their sizes differ.
    assert (
        by_codec[("fchm", "level 1")].bytes_per_frame
        != by_codec[("uniform", "level 1")].bytes_per_frame
    )


def still_camera_clip(path: Path, frames: int) -> Path:
    """bus.jpg held still at 5 fps with a little sensor noise per frame (MJPEG): what a
    fixed camera sends when nothing moves."""
    image = cv2.resize(cv2.imread(str(sample_images()[0])), (320, 432))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (320, 432))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        noise = rng.normal(0.0, 2.0, image.shape)
        writer.write(np.clip(image + noise, 0, 255).astype(np.uint8))
    writer.release()
    return path


def test_the_codecs_p_frame_stream_codes_a_still_clip_in_fewer_bytes(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    from model.evaluate import EvalConfig, evaluate

    clip = still_camera_clip(tmp_path / "still.avi", 5)
    levels = tiny_bundle.manifest.num_levels
    result = evaluate(
        EvalConfig(
            bundle=tiny_bundle.path, video=clip, fps=5, frames=5, gop_seconds=0.4,
            qualities=(50,), crfs=(28,), progress=False,
        )
    )  # fmt: skip
    rows = {(r.codec, r.setting): r for r in result.rows}
    for lv in range(levels):
        intra, inter = rows[("uniform", f"level {lv}")], rows[("uniform-inter", f"level {lv}")]
        assert intra.frames == inter.frames == 5
        # GOP 0.4 s at 5 fps = 2 frames: keyframes at 0, 2 and 4, P-frames at 1 and 3.
        assert (intra.keyframes, inter.keyframes) == (None, 3)
        assert inter.note is not None and "keyframe every 2 frames" in inter.note
        # Nothing moves: the P-frames cost less than coding those frames intra.
        assert inter.bytes_per_frame is not None and intra.bytes_per_frame is not None
        assert inter.bytes_per_frame < intra.bytes_per_frame, lv
        # Decoded and detected on: the finest level agrees with the uncoded detector.
        assert inter.decode_ms_per_frame is not None and inter.edge_ms_per_frame > 0
    finest = rows[("uniform-inter", f"level {levels - 1}")]
    assert finest.map50 is not None and finest.map50 >= 0.9
    assert rows[("h264", "crf=28")].keyframes == 3  # the same GOP as the baselines'
    assert result.meta["feature_inter"]["keyframes"] == {"uniform-inter": [3]}
    assert "uniform-inter" in result.meta["bytes_at_equal_map50"]["map50>=0.9"]
    assert "uniform-inter" in result.bd_rate_vs_jpeg


def test_feature_stream_keyframes_are_the_intra_frames_and_p_frames_need_their_reference(
    tiny_bundle: Bundle,
) -> None:
    from model.eval_signals import FeaturePath, FeatureStream, FullDetector

    detector = FullDetector(tiny_bundle, 0.25, 0.001, 1)
    path = FeaturePath(tiny_bundle, detector.scorer)
    edges = [detector.encode(cv2.imread(str(p))) for p in sample_images()[:2]]
    level = tiny_bundle.manifest.num_levels - 1
    every = FeatureStream(path, 1, 6.0)  # GOP 1: every frame a keyframe, as intra
    for k, edge in enumerate(edges):
        sent = every(edge, level, k)
        assert sent.keyframe and sent.nbytes == path(edge, level).nbytes
    stream = FeatureStream(path, 10, 6.0)
    assert stream(edges[0], level, 0).keyframe
    same = stream(edges[0], level, 1)  # the same latent again: every cell skipped
    assert not same.keyframe and same.nbytes < path(edges[0], level).nbytes
    with pytest.raises(RuntimeError, match="frame 2 was not sent"):
        stream(edges[0], level, 3)
