"""Camera tokens are required whenever gRPC listens beyond loopback."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cloud.settings import CloudSettings, is_loopback
from fchm.cli import app as cli

HASH = "ab" * 32


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "cloud.example.com"])
def test_beyond_loopback_needs_camera_tokens(host: str) -> None:
    with pytest.raises(ValidationError, match=f"grpc_host '{host}'.*camera_tokens must be set"):
        CloudSettings(grpc_host=host)
    assert CloudSettings(grpc_host=host, camera_tokens={"cam1": HASH}).grpc_host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_runs_without_tokens(host: str) -> None:
    assert is_loopback(host)
    assert CloudSettings(grpc_host=host).camera_tokens == {}


def test_serve_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FCHM_CLOUD_GRPC_HOST", "0.0.0.0")
    monkeypatch.setenv("FCHM_CLOUD_DATABASE_URL", "postgresql://fchm:hunter2@db/fchm")
    result = CliRunner().invoke(cli, ["cloud", "serve", "--bundle", "/nonexistent"])
    assert result.exit_code == 2
    assert "grpc_host '0.0.0.0'" in result.stderr and "camera_tokens" in result.stderr
    assert "hunter2" not in result.output  # the whole config is never echoed
