from pathlib import Path

import pytest

from cloud.settings import CloudSettings
from edge.settings import EdgeSettings
from infra.settings_files import ConfigError, load_settings


def test_yaml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cloud.yaml"
    config.write_text("grpc_port: 6000\nhttp_port: 7000\ndetector_conf: 0.4\n")
    monkeypatch.setenv("FCHM_CLOUD_HTTP_PORT", "7100")
    settings = load_settings(CloudSettings, config, detector_conf=0.5)
    assert (settings.grpc_port, settings.http_port, settings.detector_conf) == (6000, 7100, 0.5)


def test_unknown_yaml_field_is_named(tmp_path: Path) -> None:
    config = tmp_path / "cloud.yaml"
    config.write_text("grpc_prot: 6000\n")
    with pytest.raises(ConfigError, match="grpc_prot"):
        load_settings(CloudSettings, config)


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FCHM_EDGE_MAX_IN_FLIGHT", "0")
    with pytest.raises(ConfigError, match="max_in_flight"):
        load_settings(EdgeSettings, None, source="x.mp4", camera_id="cam1")


def test_bad_cloud_address_and_camera_id_are_named() -> None:
    with pytest.raises(ConfigError, match="cloud"):
        load_settings(EdgeSettings, None, source="x.mp4", camera_id="cam1", cloud="nohost")
    with pytest.raises(ConfigError, match="camera_id"):
        load_settings(EdgeSettings, None, source="x.mp4", camera_id="bad id!")


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(CloudSettings, tmp_path / "nope.yaml")
