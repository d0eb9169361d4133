"""What ``fchm cloud retention sweep [--dry-run]`` does: one sweep with the cloud's own
settings (--config, FCHM_CLOUD_*, --data-dir, --database-url), the report as lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cloud.metrics import CloudMetrics
from cloud.retention_sweeper import RetentionSweeper, SweepReport, policy_of
from cloud.settings import CloudSettings
from cloud.store import open_store
from infra.settings_files import load_settings


def sweep_command(
    config: Path | None, data_dir: Path | None, database_url: str | None, dry_run: bool
) -> tuple[list[str], bool]:
    """The lines to print and whether every camera's sweep succeeded."""
    s = load_settings(CloudSettings, config, data_dir=data_dir, database_url=database_url)
    policy = policy_of(s)
    if not policy.enabled:
        raise ValueError("no retention configured: set retention_days or retention_per_camera")
    store = open_store(s)
    try:
        sweeper = RetentionSweeper(store, policy, CloudMetrics(), batch=s.retention_batch)
        report = sweeper.sweep_once(dry_run=dry_run)
    finally:
        store.engine.dispose()
    return report_lines(report, dry_run), not report.failed


def report_lines(report: SweepReport, dry_run: bool) -> list[str]:
    verb = "would delete" if dry_run else "deleted"
    lines = []
    for done in report.sweeps:
        cutoff = datetime.fromtimestamp(done.cutoff_ns / 1e9, UTC).isoformat(timespec="seconds")
        start = done.keep_from_sequence
        kept = "" if start is None else f"; kept from sequence {start}"
        held = f"; {done.held} frames held by running views" if done.held else ""
        what = f"{verb} {done.deleted.summary()}"
        lines.append(f"{done.camera_id}: {what} (before {cutoff}{kept}{held})")
    lines += [f"{camera}: failed: {error}" for camera, error in report.failed.items()]
    return lines or ["no camera has a retention"]
