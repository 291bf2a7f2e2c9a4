"""The admin HTTP API: health, readiness, configuration and live statistics."""

from sidecar.admin.http import AdminServer

__all__ = ["AdminServer"]
