"""Settings loading shared by every service: YAML file < environment < command line.

Each service has one pydantic-settings class (``extra="forbid"``, a description on
every field); this module only decides where values come from and turns a
validation failure into one message that names the bad field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

S = TypeVar("S", bound=BaseSettings)


class ConfigError(ValueError):
    """A configuration value that is missing, unknown or invalid."""


def _shown(err: Any) -> str:
    # Error messages reach logs: never echo a value that may be a secret (a token
    # pasted where its hash belongs).
    if any("token" in str(part) for part in err["loc"]):
        return "<redacted>"
    return repr(err.get("input"))


def load_settings(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class WithYaml(cls):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(yaml_file=config_file)

        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)

    WithYaml.__name__ = cls.__name__
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return WithYaml(**given)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            # A model-level check (no loc) names its fields itself; its input is the whole
            # config, secrets (database_url's password) included: never shown.
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {_shown(err)})"
            if err["loc"]
            else err["msg"]
            for err in exc.errors()
        )
        source = f" in {config_file}" if config_file else ""
        raise ConfigError(
            f"invalid {cls.__name__}{source} (env prefix {prefix}): {problems}"
        ) from None
