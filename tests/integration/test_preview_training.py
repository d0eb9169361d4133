"""The trained preview: any learned bundle's latent → RGB, trained, exported, served, judged.

Real parts throughout: the tiny real detector's learned bundle, its ONNX encoder making
the training latents, pytorch-msssim and the detector's own layers in the loss, ONNX
export into the bundle (hashes re-written and verified), the cloud's PreviewRestorer on a
frame the edge encoded, and ``fchm model eval --human`` on a real photo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from codec.bundle import Bundle
from model.preview_training import (
    PreviewTrainConfig,
    export_preview,
    latent_id,
    load_preview,
    train_preview,
)
from model.training_data import load_pool
from tests.conftest import sample_images

TINY = {"steps": 3, "batch": 2, "crop": 176, "crops": 4, "widths": (8, 8, 4, 4)}


def _train(bundle: Bundle, weights: Path, out: Path) -> Path:
    pool = load_pool([sample_images()[0].parent], use_packaged=False)
    cfg = PreviewTrainConfig(bundle=bundle.path, out=out, weights=weights, **TINY)  # type: ignore[arg-type]
    return train_preview(cfg, pool).checkpoint


@pytest.fixture(scope="module")
def preview_checkpoint(
    tiny_learned_bundle: Bundle, tiny_checkpoint: Path, tmp_path_factory
) -> Path:  # type: ignore[no-untyped-def]
    return _train(tiny_learned_bundle, tiny_checkpoint, tmp_path_factory.mktemp("pv") / "pv.pt")


def test_training_is_seeded_and_records_what_it_read(
    preview_checkpoint: Path, tiny_learned_bundle: Bundle, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    again = _train(tiny_learned_bundle, tiny_checkpoint, tmp_path / "again.pt")
    a, state = load_preview(preview_checkpoint)
    b, _ = load_preview(again)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert state["latent_id"] == latent_id(tiny_learned_bundle)
    assert state["step"] == TINY["steps"]
    assert state["trained_on"]["data"]["images"] >= 2
    assert {"l1", "ms_ssim", "feature"} <= set(state["last_loss"])


def test_export_writes_a_verified_preview_the_cloud_serves(
    preview_checkpoint: Path, tiny_learned_bundle: Bundle, tmp_path: Path
) -> None:
    import cv2

    from cloud.frame_decoder import FrameDecoder
    from cloud.restorers import RESTORERS
    from edge.frame_encoder import FrameEncoder
    from edge.sources import CapturedFrame

    target = tmp_path / "bundle"
    shutil.copytree(tiny_learned_bundle.path, target)
    bundle = export_preview(preview_checkpoint, target)
    assert Bundle.load(target).hash == bundle.hash  # every file matches its sha256
    assert bundle.hash != tiny_learned_bundle.hash
    assert "trained semantic-aggregation decoder" in bundle.manifest.notes["preview"]

    original = cv2.imread(str(sample_images()[0]))
    decoded = FrameDecoder(bundle).decode(
        FrameEncoder(bundle).encode(CapturedFrame(0, 0, original), 7).bitstream
    )
    image = RESTORERS["preview"](bundle)(decoded, decoded.geometry.image_size)
    assert image.shape == original.shape and image.dtype == np.uint8
    # ONNX Runtime computes what the trained network computes.
    net, _ = load_preview(preview_checkpoint)
    with torch.no_grad():
        want = net(torch.from_numpy(decoded.features[None])).numpy()
    from cloud.onnx_sessions import open_session

    (got,) = open_session(bundle.file("preview")).run(None, {"features": decoded.features[None]})
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_refuses_a_bundle_with_another_latent(
    preview_checkpoint: Path, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    target = tmp_path / "uniform"
    shutil.copytree(tiny_bundle.path, target)
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="another latent.*retrain"):
        export_preview(preview_checkpoint, target)
    assert (target / "manifest.json").read_bytes() == before


def test_training_refuses_widths_that_miss_the_latent_stride(
    tiny_learned_bundle: Bundle, tmp_path: Path
) -> None:
    pool = load_pool([sample_images()[0].parent], use_packaged=False)
    cfg = PreviewTrainConfig(
        bundle=tiny_learned_bundle.path,
        out=tmp_path / "x.pt",
        **{**TINY, "widths": (8, 8)},  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match="stride 16: give 4 widths"):
        train_preview(cfg, pool)


def human_eval_rows(
    bundle: Bundle, weights: Path, tmp_path: Path, *options: str
) -> list[dict[str, Any]]:
    """``fchm model eval --human`` on one sample photo, through the CLI: its JSON rows."""
    from typer.testing import CliRunner

    from fchm.cli import app

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample_images()[1], images)
    result = CliRunner().invoke(
        app,
        [
            "model", "eval", "--human", "--bundle", str(bundle.path), "--images", str(images),
            "--json", str(tmp_path / "h.json"), "--weights", str(weights), *options,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return list(json.loads((tmp_path / "h.json").read_text())["rows"])


def test_human_eval_rows_and_grid(
    preview_checkpoint: Path, tiny_learned_bundle: Bundle, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    trained = _exported(preview_checkpoint, tiny_learned_bundle, tmp_path)
    rows = human_eval_rows(
        tiny_learned_bundle, tiny_checkpoint, tmp_path, "--grid", str(tmp_path / "grid.png"),
        "--extra-preview", f"trained={trained}", "--levels", "0,6,12",
        "--enhanced-bytes", "4000,32000",
    )  # fmt: skip
    views = {r["view"] for r in rows}
    assert views == {"preview", "trained", "jpeg", "webp", "enhanced"}
    for row in rows:
        assert {
            "view",
            "setting",
            "bytes_per_frame",
            "psnr",
            "ms_ssim",
            "map50",
            "ms_per_frame",
        } <= set(row)
        assert 0 < row["ms_ssim"] <= 1 and row["psnr"] > 0 and row["bytes_per_frame"] > 0
    # Pixel codecs are held to the machine bitstream's bytes (quality 1 when nothing fits).
    import cv2

    from model.eval_pixel_codecs import code_image

    photo = cv2.imread(str(sample_images()[1]))
    by = {(r["view"], r["setting"]): r for r in rows}
    for (view, setting), row in by.items():
        if view in ("jpeg", "webp"):
            floor = code_image(view, photo, 1).nbytes
            if setting.startswith("B "):
                budget = int(setting.split()[-1])
            else:
                budget = by[("preview", setting)]["bytes_per_frame"]
            assert row["bytes_per_frame"] <= max(budget, floor)
    # The enhanced view at each total budget B (--enhanced-bytes), beside JPEG and WebP at
    # the same B: level 0's bitstream plus an enhancement, held to B in all.
    machine = by[("preview", "level 0")]["bytes_per_frame"]
    assert {s for v, s in by if v == "enhanced"} == {"B 4000", "B 32000"}
    for budget in (4000, 32000):
        row = by[("enhanced", f"B {budget}")]
        assert {"edge_ms_per_frame", "fallback_frames", "feature_distance"} <= set(row)
        assert ("jpeg", f"B {budget}") in by and ("webp", f"B {budget}") in by
        assert row["fallback_frames"] == 0 and row["frames"] == 1
        assert machine < row["bytes_per_frame"] <= budget
        assert 0 < row["ms_ssim"] <= 1 and row["map50"] is not None
        assert row["edge_ms_per_frame"] > 0 and row["ms_per_frame"] > 0
    assert by[("enhanced", "B 32000")]["psnr"] > by[("enhanced", "B 4000")]["psnr"]
    # The served enhanced kind wants a payload: no rows of the machine bitstream alone.
    assert not [s for v, s in by if v == "enhanced" and not s.startswith("B ")]

    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid is not None and grid.shape[1] > 4 * 200


def test_enhanced_view_falls_back_to_the_preview_where_no_enhancement_fits(
    tiny_learned_bundle: Bundle, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A budget under the machine bytes + MIN_BUDGET_BYTES buys no enhancement: the frame is
    the preview at level 0's bytes, counted in fallback_frames; the table lists budgets
    after levels."""
    from model.human_eval import HumanEvalConfig, evaluate_human, markdown_table

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sample_images()[1], images)
    result = evaluate_human(
        HumanEvalConfig(
            bundle=tiny_learned_bundle.path, images=images, levels=(0, 2), views=("preview",),
            weights=tiny_checkpoint, enhanced_bytes=(100, 6000), threads=1,
        )
    )  # fmt: skip
    by = {(r["view"], r["setting"]): r for r in result["rows"]}
    preview = by[("preview", "level 0")]
    starved, fed = by[("enhanced", "B 100")], by[("enhanced", "B 6000")]
    assert starved["fallback_frames"] == 1 and fed["fallback_frames"] == 0
    assert starved["bytes_per_frame"] == preview["bytes_per_frame"]
    assert starved["psnr"] == pytest.approx(preview["psnr"])
    assert preview["bytes_per_frame"] < fed["bytes_per_frame"] <= 6000
    assert fed["psnr"] > preview["psnr"]
    assert preview["edge_ms_per_frame"] is None and preview["fallback_frames"] is None
    assert result["meta"]["enhanced_bytes"] == [100, 6000]
    table = markdown_table(result).splitlines()
    settings = [line.split(" | ")[1] for line in table[2:]]
    assert settings == sorted(settings, key=lambda s: (s.startswith("B"), int(s.split()[-1])))
    assert any("| enhanced | B 100 |" in line and "| 1/1 |" in line for line in table)


def _exported(checkpoint: Path, bundle: Bundle, tmp_path: Path) -> Path:
    target = tmp_path / "with-preview"
    shutil.copytree(bundle.path, target)
    return export_preview(checkpoint, target).file("preview")


def test_bad_extra_preview_is_refused_by_name(tiny_learned_bundle: Bundle, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fchm.cli import app

    result = CliRunner().invoke(
        app,
        ["model", "eval", "--human", "--bundle", str(tiny_learned_bundle.path), "--images",
         str(tmp_path), "--json", str(tmp_path / "h.json"), "--extra-preview", "nothing"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "--extra-preview" in result.output
    result = CliRunner().invoke(
        app,
        ["model", "eval", "--human", "--bundle", str(tiny_learned_bundle.path), "--images",
         str(tmp_path), "--json", str(tmp_path / "h.json"), "--enhanced-bytes", "4k"],
    )  # fmt: skip
    assert result.exit_code != 0 and "--enhanced-bytes: '4k'" in result.output
