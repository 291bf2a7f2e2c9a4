"""The gRPC face of the sidecar: a generic raw-bytes handler over the forwarding core."""

from sidecar.server.call import Call
from sidecar.server.forwarding import HOP_BY_HOP, Dispatch, forward_metadata
from sidecar.server.handler import ProxyHandler, stop_serving

__all__ = ["HOP_BY_HOP", "Call", "Dispatch", "ProxyHandler", "forward_metadata", "stop_serving"]
