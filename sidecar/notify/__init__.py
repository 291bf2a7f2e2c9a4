"""Notifications to people and systems outside the sidecar: webhooks for hold, rollback,
gate and trigger events. Every notifier is an async context manager that owns its task.
"""

from __future__ import annotations

from sidecar.notify.webhook import EVENT_KINDS, EventKind, WebhookNotifier, WebhookStats

__all__ = ["EVENT_KINDS", "EventKind", "WebhookNotifier", "WebhookStats"]
