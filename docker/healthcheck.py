"""Container health check: asks the sidecar's grpc.health.v1 service; exit 0 only on SERVING.

Used by the Dockerfile's HEALTHCHECK; standalone (grpcio and grpcio-health-checking only).
Exit codes: 0 SERVING, 1 any other status, 2 unreachable or no answer within the timeout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def check(target: str, service: str = "", timeout_s: float = 2.0) -> int:
    """The exit code for the health of ``service`` ("" = the whole server) at ``target``."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            print(f"unhealthy: {target} did not answer: {code}", file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        print(f"healthy: {target} {status}")
        return 0
    print(f"unhealthy: {target} {status}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default=os.environ.get("SHADOWCAR_HEALTH_TARGET",
                                                           DEFAULT_TARGET),
                        help="host:port of the sidecar's gRPC listener")
    parser.add_argument("--service", default="", help="service name ('' = overall)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait")
    args = parser.parse_args(argv)
    return check(args.target, args.service, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
