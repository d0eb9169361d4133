"""Token checks, their settings and the TLS/keepalive options, without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from cloud.camera_auth import AuthRefused, CameraAuth, bearer_token, hash_token
from cloud.server import server_credentials
from cloud.settings import CloudSettings
from edge.channel import call_metadata, channel_options
from edge.settings import EdgeSettings
from fchm.cli import app
from infra.settings_files import ConfigError, load_settings

AUTH = CameraAuth({"cam1": hash_token("s3cret"), "cam2": hash_token("other").upper()})


def refusal(camera: str, metadata: list[tuple[str, str | bytes]]) -> AuthRefused:
    with pytest.raises(AuthRefused) as info:
        AUTH.verify(camera, metadata)
    return info.value


def test_verify_accepts_the_camera_token_and_refuses_the_rest() -> None:
    AUTH.verify("cam1", [("user-agent", "x"), ("authorization", "Bearer s3cret")])
    AUTH.verify("cam2", [("authorization", b"bearer other")])  # scheme is case-insensitive
    assert refusal("cam3", [("authorization", "Bearer s3cret")]).code == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert refusal("cam1", []).code == grpc.StatusCode.UNAUTHENTICATED
    assert refusal("cam1", [("authorization", "s3cret")]).code == grpc.StatusCode.UNAUTHENTICATED
    other = refusal("cam1", [("authorization", "Bearer other")])
    assert other.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(other) == "token is not valid for camera cam1"
    # No camera_tokens: authentication is off and everyone passes.
    CameraAuth({}).verify("anyone", None)


def test_bearer_token_parsing() -> None:
    assert bearer_token([("authorization", "Bearer  abc ")]) == "abc"
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token(None) is None


def test_settings_check_hashes_and_tls_pairs(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"t").hexdigest()
    ok = CloudSettings(camera_tokens={"cam1": digest.upper()})
    assert ok.camera_tokens == {"cam1": digest}
    with pytest.raises(ConfigError, match="camera_tokens.*not the token itself") as info:
        load_settings(CloudSettings, None, camera_tokens={"cam1": "plain-token"})
    assert "plain-token" not in str(info.value)  # the error reaches logs: no secrets in it
    with pytest.raises(ConfigError, match="camera id 'bad id'"):
        load_settings(CloudSettings, None, camera_tokens={"bad id": digest})
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        load_settings(CloudSettings, None, tls_cert=tmp_path / "c.pem")
    with pytest.raises(ConfigError, match="tls_client_ca needs tls_cert"):
        load_settings(CloudSettings, None, tls_client_ca=tmp_path / "ca.pem")


def test_server_credentials_name_a_missing_file(tmp_path: Path) -> None:
    assert server_credentials(CloudSettings()) is None
    settings = CloudSettings(tls_cert=tmp_path / "server.crt", tls_key=tmp_path / "server.key")
    with pytest.raises(ValueError, match=r"tls_key: cannot read .*server\.key"):
        server_credentials(settings)


def test_channel_options_and_metadata() -> None:
    base = {"source": "x.mp4", "camera_id": "cam1"}
    settings = EdgeSettings(**base, token="s3cret", tls_server_name="cloud.example")  # type: ignore[arg-type]
    options = dict(channel_options(settings))
    assert int(options["grpc.keepalive_time_ms"]) < 60_000  # notices a dead link within a minute
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.ssl_target_name_override"] == "cloud.example"
    assert options["grpc.max_reconnect_backoff_ms"] == 30_000
    assert call_metadata(settings) == (("authorization", "Bearer s3cret"),)
    assert call_metadata(EdgeSettings(**base)) == ()  # type: ignore[arg-type]


def test_cli_token_prints_a_token_and_its_hash() -> None:
    result = CliRunner().invoke(app, ["cloud", "token", "--camera", "gate-1"])
    assert result.exit_code == 0, result.output
    lines = dict(
        line.strip().split(": ", 1)
        for line in result.output.splitlines()
        if ": " in line and not line.startswith("#")
    )
    assert lines["gate-1"] == hash_token(lines["token"])
    assert len(lines["token"]) >= 40
    bad = CliRunner().invoke(app, ["cloud", "token", "--camera", "bad id"])
    assert bad.exit_code == 2
