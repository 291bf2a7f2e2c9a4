"""Resilience: circuit breakers and fallback responses for failing backends."""

from sidecar.resilience.breaker import (
    CALLER_DEADLINE,
    CALLER_FAULTS,
    PASS,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Ticket,
)
from sidecar.resilience.fallback import FallbackConfig, load_static_fallback

__all__ = [
    "CALLER_DEADLINE",
    "CALLER_FAULTS",
    "PASS",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "FallbackConfig",
    "Ticket",
    "load_static_fallback",
]
