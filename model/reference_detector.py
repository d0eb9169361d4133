"""The plain detector that evaluation compares every codec against.

    bundle manifest (weights name + sha256) ┐
    weights.pt (--weights, default: packaged)┴► check sha ─► detector layers 0..Detect
                                            ─► var/cache/reference/detector-<sha>.onnx (once)

A uniform bundle's encoder.onnx → tail.onnx *is* the detector, so it needs nothing
here. A learned bundle folds the analysis transform into its encoder and the synthesis
into its tail (whose weights it stores as int8), so its reference is rebuilt from the
detector's own fp32 weights. Nothing deployed runs the plain detector, so the bundle
does not carry its 45 MB; the manifest pins the weights by hash instead.
"""

from __future__ import annotations

from pathlib import Path

from codec.bundle import Bundle, file_sha256

DEFAULT_CACHE = Path("var/cache/reference")


def needs_reference(bundle: Bundle) -> bool:
    """Whether encoder → tail differs from the plain detector (any learned codec)."""
    return bundle.manifest.codec != "uniform"


def reference_detector(
    bundle: Bundle, weights: Path | None = None, cache: Path = DEFAULT_CACHE
) -> Path | None:
    """ONNX of the plain detector (input "image", output "predictions"), or None where
    the bundle's own encoder → tail is the detector."""
    if not needs_reference(bundle):
        return None
    if "detector" in bundle.manifest.files:  # bundles exported before the reference moved out
        return bundle.file("detector")
    info = bundle.manifest.detector
    if weights is None:
        from model.default_weights import default_weights

        weights = default_weights()
    if not weights.is_file():
        raise FileNotFoundError(f"--weights: {weights} does not exist")
    sha = file_sha256(weights)
    if info.weights_sha256 is not None and sha != info.weights_sha256:
        raise ValueError(
            f"--weights: {weights} (sha256 {sha[:12]}…) is not the checkpoint bundle "
            f"{bundle.path} was exported from ({info.weights}, sha256 {info.weights_sha256[:12]}…)"
        )
    out = cache / f"detector-{sha[:16]}-split{info.split_layer}.onnx"
    if not out.is_file():
        _export(weights, info.split_layer, len(info.class_names), out)
    return out


def _export(weights: Path, split_layer: int, num_classes: int, out: Path) -> None:
    import torch
    from torch import nn

    from model.bundle_export import export_onnx
    from model.detector_split import EncoderHalf, TailHalf, load_detector

    detector = load_detector(weights, num_classes)
    # The two halves the uniform bundle ships, in a row: the same graph as its encoder →
    # tail, so both families' references agree to float rounding.
    whole = nn.Sequential(
        EncoderHalf(detector, split_layer), TailHalf(detector, split_layer)
    ).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    export_onnx(whole, torch.zeros(1, 3, 64, 96), partial, "image", "predictions")
    partial.replace(out)  # a killed export never leaves a half-written reference
