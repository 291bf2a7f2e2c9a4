"""Mirroring of sampled requests to shadow backends, never awaited by the caller."""

from sidecar.mirror.mirror import SHADOW_METADATA, Mirror

__all__ = ["SHADOW_METADATA", "Mirror"]
