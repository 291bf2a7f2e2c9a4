"""What a hot reload may change: everything but the listeners (and their TLS), the recording
file, the telemetry wiring and the parts built once at start (webhook, outcome ingestion);
and never what an existing model version points at (versions are immutable: a new target
needs a new version)."""

from __future__ import annotations

from sidecar.config.models import Config
from sidecar.errors import ConfigError

__all__ = ["RESTART_ONLY", "check_reload"]

#: Top-level keys a reload refuses to change, with the reason: each is applied once, at
#: start, so accepting a change would report a config the process does not run.
RESTART_ONLY: dict[str, str] = {
    "listen": "the gRPC listener is bound at start",
    "tls": "the gRPC listener's TLS (and mTLS) is set when it is bound, at start",
    "admin": "the admin listener (address, TLS, token, hosts) is set up at start",
    "storage": "the recording file is opened at start",
    "telemetry": "exporters and log format are wired at start",
    "max_message_bytes": "the gRPC listener's message limits are set at start",
    "notify": "the webhook notifier is created at start",
    "outcomes": "outcome ingestion is set up at start",
}


def check_reload(old: Config, new: Config) -> None:
    """Raise ConfigError naming each field a reload cannot change."""
    problems: list[tuple[str, str]] = []
    for key, why in RESTART_ONLY.items():
        if getattr(old, key) != getattr(new, key):
            problems.append((key, f"changes only with a restart ({why})"))
    if new.triggers and not old.triggers:
        problems.append(("triggers", "changes only with a restart (the trigger loop starts "
                         "with the process when the config has triggers)"))
    targets = {(b.name, b.version): b.target for b in old.backends}
    for i, backend in enumerate(new.backends):
        before = targets.get((backend.name, backend.version))
        if before is not None and before != backend.target:
            problems.append((
                f"backends[{i}].target",
                f"{backend.name} version {backend.version} already points at {before}; "
                "model versions are immutable, so a new target needs a new version",
            ))
    if problems:
        raise ConfigError(problems, "reload")
