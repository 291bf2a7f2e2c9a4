"""What a hot reload may change: everything but the listeners, the recording file and the
telemetry wiring; and never what an existing model version points at (versions are
immutable: a new target needs a new version)."""

from __future__ import annotations

from sidecar.config.models import Config
from sidecar.errors import ConfigError

__all__ = ["check_reload"]

_RESTART_ONLY = ("listen", "admin", "storage", "telemetry", "max_message_bytes")


def check_reload(old: Config, new: Config) -> None:
    """Raise ConfigError naming each field a reload cannot change."""
    problems: list[tuple[str, str]] = []
    for key in _RESTART_ONLY:
        if getattr(old, key) != getattr(new, key):
            problems.append((key, "changes only with a restart"))
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
