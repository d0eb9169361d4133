"""``fchm model eval`` end to end: tiny real bundle, real images, frames of a real video.

bus.jpg, zidane.jpg ──────────────────┐
demo.mp4 (3 consecutive frames, 5 fps) ┴─► python -m fchm model eval ─► OUT.json (rows, meta)
                                                   └► OUT.png (rate–fidelity plot)
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
    assert set(result["bd_rate_vs_jpeg"]) == {"uniform", *image_codecs(), *video_codecs()} - {
        "jpeg"
    }
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
    assert "176x144" in meta["coded_sizes"]  # the video is coded at its own size
    equal = meta["bytes_at_equal_map50"]
    assert set(equal) == {f"{m}>={t}" for m in ("map50", "map50_confident")
                          for t in (0.5, 0.9, 0.95)}  # fmt: skip
    for by_codec in equal.values():
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
