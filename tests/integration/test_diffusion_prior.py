"""The diffusion view with a Stable-Diffusion-class prior from local disk.

The prior here is a tiny random one in diffusers layout (UNet, VAE, CLIP text encoder and a
tokenizer from a hand-written vocabulary), built and saved in the test as diffusers' own
tests build theirs: nothing is fetched. It is loaded by DiffusionRestorer as a user's
SD-Turbo would be and rendered through the real restore worker; its pictures mean nothing,
which is not what is tested.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud.frame_decoder import FrameDecoder
from cloud.latent_references import LatentReferences
from cloud.metrics import CloudMetrics
from cloud.restore_worker import RestoreWorker, restorer_options
from cloud.restorers import (
    DiffusionRestorer,
    PreviewRestorer,
    RestorerOptions,
    RestorerUnavailable,
    UnavailableRestorer,
    load_restorers,
)
from cloud.settings import CloudSettings
from cloud.view_queue import ViewQueue
from codec.bundle import Bundle
from tests.conftest import sample_images
from tests.integration.stored_frames import T0_NS, FrameMaker, open_store


def tiny_prior(root: Path) -> Path:
    """A Stable-Diffusion img2img checkpoint of random weights, a few KB, in diffusers layout."""
    from model.torchvision_cpu import ensure_torchvision_nms

    ensure_torchvision_nms()
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
    )  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16,
            intermediate_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=100,
            projection_dim=16,
        )
    )  # fmt: skip
    words = root / "words"
    words.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[ch], vocab[ch + "</w>"] = 3 + i, 30 + i
    (words / "vocab.json").write_text(json.dumps(vocab))
    (words / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=8
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    out = root / "tiny-sd"
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_prior(tmp_path_factory.mktemp("prior"))


def stored_frame(bundle: Bundle, root: Path):  # type: ignore[no-untyped-def]
    store = open_store(root, bundle, ["cam"])
    sample = FrameMaker(bundle).store(store, "cam", 0, T0_NS, sample_images()[0], level=5)
    return store, sample


def test_a_diffusion_view_renders_from_a_local_prior_with_its_seed(
    tiny_bundle: Bundle, prior: Path, tmp_path: Path
) -> None:
    store, _sample = stored_frame(tiny_bundle, tmp_path)
    decoded = LatentReferences(FrameDecoder(tiny_bundle), store).decode_stored("cam", 0)
    size = (60, 80)
    seeded = DiffusionRestorer(tiny_bundle, 1, RestorerOptions(prior, 2, 0.6, 7))
    first = seeded(decoded, size)
    assert first.shape == (80, 60, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(seeded(decoded, size), first)  # the seed makes it repeatable
    other = DiffusionRestorer(tiny_bundle, 1, RestorerOptions(prior, 2, 0.6, 8))(decoded, size)
    assert not np.array_equal(other, first)
    preview = PreviewRestorer(tiny_bundle, 1)(decoded, size)
    assert not np.array_equal(preview, first)  # the prior changed the preview
    assert seeded.seed_text.startswith("7 ") and "2 steps" in seeded.seed_text
    assert seeded.model_sha256 and seeded.model_sha256 != PreviewRestorer(tiny_bundle).model_sha256
    assert "invented" in DiffusionRestorer.description


def test_without_a_prior_the_kind_is_not_served_and_says_why(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    loaded = load_restorers(tiny_bundle, 1)
    assert isinstance(loaded["preview"], PreviewRestorer)
    missing = loaded["diffusion"]
    assert isinstance(missing, UnavailableRestorer)
    with pytest.raises(LookupError, match="FCHM_CLOUD_DIFFUSION_PRIOR_DIR.*nothing is fetched"):
        missing(None, (8, 8))  # type: ignore[arg-type]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RestorerUnavailable, match="holds no model_index.json"):
        DiffusionRestorer(tiny_bundle, 1, RestorerOptions(tmp_path / "empty"))
    with pytest.raises(ValueError, match="diffusion_steps 0"):
        DiffusionRestorer(tiny_bundle, 1, RestorerOptions(tmp_path / "empty", 0))


@pytest.mark.parametrize("configured", [True, False])
def test_a_diffusion_view_job_through_the_worker(
    tiny_bundle: Bundle, prior: Path, tmp_path: Path, configured: bool
) -> None:
    """With a prior the job is done and its PNG says what made it; without one it fails,
    and its error says what to set."""
    store, sample = stored_frame(tiny_bundle, tmp_path)
    settings = CloudSettings(
        data_dir=tmp_path, diffusion_prior_dir=prior if configured else None, diffusion_steps=2
    )
    metrics = CloudMetrics()
    queue = ViewQueue(store, settings, metrics)
    restorers = load_restorers(tiny_bundle, 1, None, restorer_options(settings))
    worker = RestoreWorker(store, FrameDecoder(tiny_bundle), restorers, queue, metrics, 64)
    job = queue.submit(sample.frame_id, "diffusion")
    assert asyncio.run(asyncio.wait_for(queue.get(), 5)) == job.id
    done = worker.render_once(job.id)
    assert done is not None
    if not configured:
        assert done.status == "failed" and "diffusion_prior_dir" in (done.error or "")
        return
    assert done.status == "done", done.error
    image = Image.open(io.BytesIO(store.blobs.get(done.image_key or "")))
    assert max(image.size) == 64
    assert image.info["fchm:kind"] == "diffusion" and image.info["fchm:reconstruction"] == "true"
    assert image.info["fchm:seed"].startswith("0 ") and "2 steps" in image.info["fchm:seed"]
    assert image.info["fchm:model_sha256"] == restorers["diffusion"].model_sha256


def test_eval_human_judges_the_diffusion_view_from_a_local_prior(
    tiny_learned_bundle: Bundle, tiny_checkpoint: Path, prior: Path, tmp_path: Path
) -> None:
    from tests.integration.test_preview_training import human_eval_rows

    rows = human_eval_rows(
        tiny_learned_bundle, tiny_checkpoint, tmp_path, "--levels", "6",
        "--diffusion-prior", str(prior), "--diffusion-steps", "2",
    )  # fmt: skip
    assert {r["view"] for r in rows} == {"preview", "diffusion", "jpeg", "webp", "enhanced"}
    diffusion = next(r for r in rows if r["view"] == "diffusion")
    preview = next(r for r in rows if r["view"] == "preview")
    # The same machine bitstream under both views; the prior's time is its own.
    assert diffusion["bytes_per_frame"] == preview["bytes_per_frame"] > 0
    assert 0 < diffusion["ms_ssim"] <= 1 and diffusion["ms_per_frame"] > 0


def test_a_diffusion_job_shows_its_preview_first_and_deletes_it_with_itself(
    tiny_bundle: Bundle, prior: Path, tmp_path: Path
) -> None:
    """GET …/preview: 409 while queued, the preview once the worker has it (before the
    refined image), 404 for a preview job; DELETE takes both images."""
    from fastapi.testclient import TestClient

    from cloud.api.app import create_app
    from cloud.api.deps import Services, readiness_checks
    from cloud.store.records import view_image_key, view_preview_key
    from tests.conftest import admin_headers

    store, sample = stored_frame(tiny_bundle, tmp_path)
    settings = CloudSettings(data_dir=tmp_path, diffusion_prior_dir=prior, diffusion_steps=2)
    metrics = CloudMetrics()
    queue = ViewQueue(store, settings, metrics)
    restorers = load_restorers(tiny_bundle, 1, None, restorer_options(settings))
    worker = RestoreWorker(store, FrameDecoder(tiny_bundle), restorers, queue, metrics, 64)
    services = Services(store, queue, tiny_bundle, metrics, readiness_checks({}))
    with TestClient(create_app(settings, services), headers=admin_headers(store)) as client:
        r = client.post("/v1/views", json={"frame_id": sample.frame_id, "kind": "diffusion"})
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["links"]["preview"] == f"/v1/views/{body['id']}/preview"
        early = client.get(body["links"]["preview"])
        assert early.status_code == 409 and early.json()["view_status"] == "queued"

        assert asyncio.run(asyncio.wait_for(queue.get(), 5)) == body["id"]
        done = worker.render_once(body["id"])
        assert done is not None and done.status == "done", done
        first = Image.open(io.BytesIO(client.get(body["links"]["preview"]).content))
        final = Image.open(io.BytesIO(client.get(body["links"]["image"]).content))
        assert first.size == final.size
        assert first.info["fchm:kind"] == "preview" and final.info["fchm:kind"] == "diffusion"
        assert first.info["fchm:stage"] == "preview of a diffusion view"
        assert not np.array_equal(np.asarray(first), np.asarray(final))

        plain = client.post("/v1/views", json={"frame_id": sample.frame_id}).json()
        assert plain["links"]["preview"] is None
        assert client.get(f"/v1/views/{plain['id']}/preview").status_code == 404

        assert client.delete(body["links"]["self"]).status_code == 204
    for blob in (view_image_key(body["id"]), view_preview_key(body["id"])):
        assert not store.blobs.exists(blob)

    # Retention takes a refined view's preview with the frame (its row, its two images).
    kept = queue.submit(sample.frame_id, "diffusion")
    for _ in range(2):  # the plain preview job above, then this one
        assert worker.render_once(asyncio.run(asyncio.wait_for(queue.get(), 5))) is not None
    assert store.blobs.exists(view_preview_key(kept.id))
    from cloud.store.retention import sweep_camera

    swept = sweep_camera(store, "cam", T0_NS + 1)
    assert swept.deleted.frames == 1 and swept.deleted.views >= 1
    assert not store.blobs.exists(view_preview_key(kept.id))
    assert not store.blobs.exists(view_image_key(kept.id))
