"""``fchm edge``: the camera agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fchm.cli_options import ConfigOpt, fail
from infra.logging_setup import setup_logging

edge_app = typer.Typer(help="The camera edge agent.", no_args_is_help=True)


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
    keyframe_interval: Annotated[
        int | None,
        typer.Option(help="A keyframe every N frames, P-frames between (1: keyframes only)"),
    ] = None,
    spool_dir: Annotated[Path | None, typer.Option(help="Durable spool directory")] = None,
    retention_s: Annotated[
        float | None,
        typer.Option(help="Keep frames' pixels this long for enhanced views (0: none)"),
    ] = None,
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
    from infra.settings_files import ConfigError, load_settings

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
            keyframe_interval=keyframe_interval,
            spool_dir=spool_dir,
            retention_s=retention_s,
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
