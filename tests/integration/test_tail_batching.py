"""Dynamic batching of the detector tail: one ORT call for frames of several cameras,
each caller getting exactly its own frame's detections.

Real parts: the tiny real detector's bundle (its tail.onnx exported with a batch axis),
latents the edge's encoder made from real photos and the cloud's decoder rebuilt, real
threads standing in for ingest workers of different cameras.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from cloud.detector_tail import Detection, DetectorTail
from cloud.frame_decoder import DecodedFrame, FrameDecoder
from cloud.tail_batcher import BatchedTail
from codec.bundle import Bundle
from edge.frame_encoder import FrameEncoder
from edge.sources import CapturedFrame
from tests.conftest import sample_images


def _decoded(bundle: Bundle) -> list[DecodedFrame]:
    import cv2

    encoder, decoder = FrameEncoder(bundle), FrameDecoder(bundle)
    out = []
    for i, path in enumerate(sample_images()):  # two photos: two latent shapes
        image = cv2.imread(str(path))
        for level in (2, 5):
            out.append(decoder.decode(encoder.encode(CapturedFrame(i, 0, image), level).bitstream))
    return out


def _same(a: list[Detection], b: list[Detection]) -> None:
    assert [d.class_id for d in a] == [d.class_id for d in b]
    np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-4)
    np.testing.assert_allclose([d.box for d in a], [d.box for d in b], atol=1e-2)


def test_concurrent_cameras_share_calls_and_each_gets_its_own_detections(
    tiny_bundle: Bundle,
) -> None:
    tail = DetectorTail(tiny_bundle, conf=0.01)
    assert tail.batchable
    frames = _decoded(tiny_bundle)
    assert len({f.features.shape for f in frames}) == 2
    want = [tail(f.features, f.geometry) for f in frames]
    assert sum(len(w) for w in want) > 0
    sizes: list[int] = []
    batched = BatchedTail(tail, max_batch=4, max_delay_s=0.05, observe=sizes.append)
    got: dict[tuple[int, int], list[Detection]] = {}
    errors: list[BaseException] = []

    def camera(k: int) -> None:
        try:
            for _ in range(3):
                for i, f in enumerate(frames):
                    got[(k, i)] = batched(f.features, f.geometry)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    batched.close()
    assert not errors
    for (_, i), dets in got.items():
        _same(dets, want[i])
    assert sum(sizes) == 6 * 3 * len(frames)
    assert max(sizes) > 1  # frames of different cameras did share calls


def test_a_frame_that_fails_fails_alone_and_the_batcher_goes_on(tiny_bundle: Bundle) -> None:
    tail = DetectorTail(tiny_bundle)
    good = _decoded(tiny_bundle)[0]
    batched = BatchedTail(tail, max_batch=4, max_delay_s=0.01)
    bad = np.zeros((good.features.shape[0] + 1, *good.features.shape[1:]), np.float32)
    with pytest.raises(Exception, match="(?i)invalid|dimension|channel"):
        batched(bad, good.geometry)
    _same(batched(good.features, good.geometry), tail(good.features, good.geometry))
    batched.close()


def test_a_tail_exported_for_one_frame_is_called_frame_by_frame(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    # Bundles exported before batching: tail.onnx takes a batch of exactly 1.
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle.path, old)
    model = onnx.load(str(old / "tail.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(old / "tail.onnx"))
    tail = DetectorTail(Bundle.load(old, verify=False))
    assert not tail.batchable
    batched = BatchedTail(tail, max_batch=8)
    assert batched.max_batch == 1
    frame = _decoded(tiny_bundle)[0]
    _same(batched(frame.features, frame.geometry), tail(frame.features, frame.geometry))


def test_close_serves_what_is_queued(tiny_bundle: Bundle) -> None:
    tail = DetectorTail(tiny_bundle)
    frame = _decoded(tiny_bundle)[0]
    batched = BatchedTail(tail, max_batch=16, max_delay_s=0.2)
    results: list[list[Detection]] = []
    threads = [
        threading.Thread(target=lambda: results.append(batched(frame.features, frame.geometry)))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    batched.close()
    for t in threads:
        t.join(30)
    assert len(results) == 5


def test_a_cloud_batching_its_tail_stores_what_frame_by_frame_would(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    """Three cameras stream at once into a real cloud with tail_max_batch=4: every frame is
    acked and stored once, with the detections the unbatched tail finds on it."""
    from tests.conftest import RunningCloud, cloud_settings
    from tests.integration.test_grpc_ingest import encoded_frames, stream

    settings = cloud_settings(tiny_bundle, tmp_path, tail_max_batch=4, tail_max_delay_ms=50)
    cloud = RunningCloud(settings)
    try:
        frames = encoded_frames(tiny_bundle) * 3  # keyframes; the same bytes per camera
        frames = [replace_capture(f, i) for i, f in enumerate(frames)]
        uplinks: dict[str, object] = {}
        threads = [
            threading.Thread(
                target=lambda c=c: uplinks.__setitem__(
                    c, stream(cloud, tiny_bundle, c, frames, tmp_path)
                )
            )
            for c in ("cam-1", "cam-2", "cam-3")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(u.stats.acked == len(frames) for u in uplinks.values())  # type: ignore[attr-defined]
        tail = DetectorTail(tiny_bundle, conf=settings.detector_conf, iou=settings.detector_iou)
        decoded = [FrameDecoder(tiny_bundle).decode(f.bitstream) for f in frames]
        want = [len(tail(d.features, d.geometry)) for d in decoded]
        api = cloud.api()
        for camera in ("cam-1", "cam-2", "cam-3"):
            stored = api.get("/v1/frames", params={"camera": camera, "limit": 100}).json()["items"]
            assert [f["num_detections"] for f in stored] == want
        metrics = api.get("/metrics").text
        count = float(metrics.split("fchm_tail_batch_frames_count ")[1].split()[0])
        total = float(metrics.split("fchm_tail_batch_frames_sum ")[1].split()[0])
        assert total == 3 * len(frames)  # every frame went through the tail…
        assert count < total  # …and cameras shared calls (here: 6 calls for 18 frames)
    finally:
        cloud.stop()


def replace_capture(frame, i: int):  # type: ignore[no-untyped-def]
    """The same encoded frame at a later capture time (a camera's next frame)."""
    from dataclasses import replace

    return replace(frame, capture_time_ns=1_000_000_000 * (i + 1))


class _RefusesNaN(DetectorTail):
    """The real tail, refusing a latent with a NaN: a frame that fails inside a batch."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        if np.isnan(features).any():
            raise ValueError("latent holds NaN")
        return super().predict(features)


def test_a_batch_with_a_bad_frame_is_rerun_so_the_good_frames_succeed(
    tiny_bundle: Bundle,
) -> None:
    tail = _RefusesNaN(tiny_bundle)
    good = _decoded(tiny_bundle)[0]
    bad = np.full_like(good.features, np.nan)
    sizes: list[int] = []
    batched = BatchedTail(tail, max_batch=3, max_delay_s=0.5, observe=sizes.append)
    results: dict[str, object] = {}

    def call(name: str, features: np.ndarray) -> None:
        try:
            results[name] = batched(features, good.geometry)
        except ValueError as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=call, args=(n, f))
        for n, f in (("a", good.features), ("bad", bad), ("b", good.features))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    batched.close()
    assert isinstance(results["bad"], ValueError)
    want = tail(good.features, good.geometry)
    _same(results["a"], want)  # type: ignore[arg-type]
    _same(results["b"], want)  # type: ignore[arg-type]
    assert sizes == [1, 1]  # the failed batch of 3 was rerun frame by frame
