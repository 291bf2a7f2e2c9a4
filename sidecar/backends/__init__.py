"""Backends: named, versioned model endpoints called with raw bytes."""

from sidecar.backends.channel import Backend, CallOutcome, Metadata, StreamKind

__all__ = ["Backend", "CallOutcome", "Metadata", "StreamKind"]
