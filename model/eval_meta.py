"""The facts behind one ``fchm model eval`` run: inputs, versions, timings, references.

    EvalConfig + bundle + frames + reference detections + rows ─► meta dict (JSON-safe)

A reader needs these to rerun the numbers and to judge them: which frames (clips, rate,
sizes as coded), how many reference boxes every mAP rests on, which encoders and
libraries made the baselines, what was fitted on what.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import onnxruntime as ort
import PIL

from cloud.detector_tail import Detection
from codec.bundle import Bundle
from model.eval_pixel_codecs import VIDEO_CODECS, image_codecs, unavailable, video_codecs
from model.eval_signals import EvalFrame, FullDetector, VideoInfo, packaged_copies

if TYPE_CHECKING:
    from model.eval_rows import EvalRow
    from model.evaluate import EvalConfig


def run_meta(
    cfg: EvalConfig,
    bundle: Bundle,
    detector: FullDetector,
    frames: list[EvalFrame],
    video: VideoInfo | None,
    reference: list[list[Detection]],
    stage: dict[str, list[float]],
    rows: list[EvalRow],
    gop: int,
) -> dict[str, Any]:
    ms = {k: round(1e3 * float(np.mean(v)), 2) for k, v in stage.items()}
    full_ms = ms["encoder"] + ms["tail"]
    return {
        "bundle": str(cfg.bundle),
        "bundle_hash": bundle.hash,
        "bundle_codec": bundle.manifest.codec,
        "fit_images": _fit_images(bundle),
        "eval_images_in_packaged_fit_set": packaged_copies(cfg.images),
        "images": None if cfg.images is None else str(cfg.images),
        "image_frames": sum(f.source == "images" for f in frames),
        "video": None
        if video is None
        else {
            "path": str(video.path),
            "size": list(video.size),
            "total_frames": video.total_frames,
            "source_fps": video.source_fps,
            "fps": video.fps,
            "frames_per_clip": cfg.frames,
            "clips": [list(c) for c in video.clips],
        },
        "image_codecs": image_codecs(),
        "video_codecs": {n: asdict(VIDEO_CODECS[n]) for n in video_codecs()} if video else {},
        "video_gop_frames": gop if video else None,
        "feature_inter": _feature_inter(cfg, rows, gop),
        "video_options": "preset medium, tune zerolatency (no B-frames, no lookahead), CRF "
        "sweep; inter: keyframe every --gop seconds; intra: every frame a keyframe",
        "baselines_unavailable": unavailable(),
        "frames": len(frames),
        "coded_sizes": sorted({f"{f.image.shape[1]}x{f.image.shape[0]}" for f in frames}),
        "pixel_codec_input": "each frame at its own size, downscaled to the detector's input "
        "size only when larger; the cloud letterboxes the decoded frame for the detector",
        "bpp_pixels": "the frame as coded (its own size, before any letterbox)",
        "reference_conf": cfg.conf,
        "confident_conf": cfg.confident,
        "prediction_conf": cfg.pred_conf,
        "reference_detections": sum(len(r) for r in reference),
        "confident_reference_detections": sum(
            d.score >= cfg.confident for r in reference for d in r
        ),
        "frames_without_reference_detections": sum(not r for r in reference),
        "real_labels": "none: no labelled person set is available offline; every mAP is "
        "agreement with the uncompressed detector",
        "bd_rate": "Bjøntegaard, PCHIP of ln(bytes/frame) over mAP50 on each curve's "
        "rate-fidelity envelope, averaged over the shared mAP50 range; None: no overlap",
        "bytes_at": "ln(bytes) interpolated linearly between the envelope points bracketing "
        "the target; bound=true: the cheapest setting already exceeds it (an upper bound)",
        "timing_ms_per_frame": {**ms, "full_detector_on_edge": round(full_ms, 2)},
        "compare_bundles": [str(p) for p in cfg.compare],
        "edge_encode_over_full_detector": {
            f"{r.codec} {r.setting}": round(r.edge_ms_per_frame / full_ms, 3)
            for r in rows
            if r.codec.removesuffix("-inter") in ("fchm", "uniform")
        },
        "onnxruntime": ort.__version__,
        "encoder_backend": detector.encoder.name,
        "reference_detector": "the bundle's encoder → tail"
        if detector.whole is None
        else "plain fp32 detector from its weights",
        "tail_providers": detector.tail.session.get_providers(),
        "threads": cfg.threads or "auto",
        "cpu_count": os.cpu_count(),
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "pyav": av.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _feature_inter(cfg: EvalConfig, rows: list[EvalRow], gop: int) -> dict[str, Any] | None:
    """How the ``<family>-inter`` rows were streamed; None when no family was."""
    inter = sorted({r.codec for r in rows if r.codec.endswith("-inter")})
    if not inter:
        return None
    return {
        "families": inter,
        "keyframe_every_frames": gop,
        "skip_threshold": cfg.skip_threshold,
        "keyframes": {
            name: sorted({r.keyframes for r in rows if r.codec == name and r.keyframes is not None})
            for name in inter
        },
        "coding": "per clip and rate level, one stream through the container and the cloud's "
        "FrameDecoder: the clip's first frame and every keyframe_every_frames-th intra, the "
        "rest P-frames against the previous frame's decoded latent (closed loop); photos intra",
    }


def _fit_images(bundle: Bundle) -> str | dict[str, str]:
    recorded = {k: v for k, v in bundle.manifest.notes.items() if "fit" in k.lower()}
    return recorded or (
        "not recorded in the manifest; model/bundle_export.py fits the uniform codec on the "
        "images packaged with ultralytics and scikit-image unless given --fit-images"
    )
