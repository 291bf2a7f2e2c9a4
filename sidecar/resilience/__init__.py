"""Resilience: circuit breakers and fallback responses for failing backends."""

from sidecar.resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from sidecar.resilience.fallback import FallbackConfig, load_static_fallback

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "FallbackConfig",
    "load_static_fallback",
]
