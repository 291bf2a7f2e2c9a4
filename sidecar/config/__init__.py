"""Configuration: the YAML contract, its validation and its version."""

from sidecar.config.load import LoadedConfig, canonical_json, load_config, parse_config
from sidecar.config.models import (
    AdminConfig,
    BackendConfig,
    Config,
    MirrorShadowConfig,
    RouteConfig,
    ShutdownConfig,
    StorageConfig,
    TelemetryConfig,
    TracesConfig,
)

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "Config",
    "LoadedConfig",
    "MirrorShadowConfig",
    "RouteConfig",
    "ShutdownConfig",
    "StorageConfig",
    "TelemetryConfig",
    "TracesConfig",
    "canonical_json",
    "load_config",
    "parse_config",
]
