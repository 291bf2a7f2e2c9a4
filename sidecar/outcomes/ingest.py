"""The transport-free core of outcome ingestion: validate a batch, skip repeats, queue the rest.

The gRPC servicer and the HTTP handler only translate to and from this module.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.errors import BatchTooLarge
from sidecar.sink.records import OutcomeRecord

if TYPE_CHECKING:
    from sidecar.sink.redaction import Redactor

__all__ = [
    "EVENT_FIELDS",
    "MAX_EVENT_ID_CHARS",
    "MAX_KEY_CHARS",
    "METRIC_PATTERN",
    "BatchTooLarge",
    "IngestResult",
    "MemoryOutcomeSink",
    "OutcomeIngest",
    "OutcomeSink",
    "Rejection",
]

#: The keys an event may carry; any other key rejects the event.
EVENT_FIELDS = ("event_id", "unit_id", "request_id", "metric", "value", "ts")
MAX_EVENT_ID_CHARS = 128
#: Longest ``unit_id`` / ``request_id``.
MAX_KEY_CHARS = 256
METRIC_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
_FIELD_SET = frozenset(EVENT_FIELDS)

# Bounds on what a rejection reason may echo back, so junk input cannot bloat the answer.
_MAX_ECHO_CHARS = 64
_MAX_UNKNOWN_LISTED = 5
_MAX_TS_TEXT = 64
_TS_HINT = "epoch seconds or an ISO-8601 time such as 2024-05-01T12:00:00Z"


class OutcomeSink(Protocol):
    """Where validated outcomes go (``sidecar.sink.DuckDBSink`` in the running service)."""

    def record_outcome(self, row: OutcomeRecord) -> bool:
        """Queue ``row``; False when it was dropped because the buffer is full."""
        ...


class MemoryOutcomeSink:
    """An in-memory :class:`OutcomeSink` for tests: keeps rows, drops beyond ``capacity``."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.rows: list[OutcomeRecord] = []
        self.dropped = 0

    def record_outcome(self, row: OutcomeRecord) -> bool:
        if self.capacity is not None and len(self.rows) >= self.capacity:
            self.dropped += 1
            return False
        self.rows.append(row)
        return True


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event that failed validation."""

    index: int
    """Position of the event in the batch."""
    event_id: str | None
    """The event's id when that itself was valid."""
    reason: str
    """What is wrong, each problem naming its field (``value: must be a finite number``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "event_id": self.event_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to a batch; every event is counted in exactly one field."""

    accepted: int = 0
    """Events queued for storage."""
    duplicates: tuple[str, ...] = ()
    """Ids of valid events seen recently (earlier in this batch or in an earlier one)."""
    rejected: tuple[Rejection, ...] = field(default=())
    """Events that failed validation, in batch order."""
    dropped: int = 0
    """Valid events the sink dropped because its buffer was full (the caller may retry)."""

    @property
    def received(self) -> int:
        """Number of events in the batch."""
        return self.accepted + len(self.duplicates) + len(self.rejected) + self.dropped

    @property
    def all_rejected(self) -> bool:
        """The batch was not empty and no event passed validation."""
        return bool(self.rejected) and len(self.rejected) == self.received

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (the HTTP answer)."""
        return {
            "accepted": self.accepted,
            "duplicates": list(self.duplicates),
            "rejected": [r.to_dict() for r in self.rejected],
            "dropped": self.dropped,
        }


def _echo(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_ECHO_CHARS else text[: _MAX_ECHO_CHARS - 1] + "…"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _text(name: str, value: object, limit: int, problems: list[str]) -> str | None:
    """``value`` when it is a usable id string, else None with the problem appended."""
    if not isinstance(value, str):
        problems.append(f"{name}: must be a string, not {_type_name(value)}")
        return None
    if not value.strip():
        problems.append(f"{name}: must not be empty")
        return None
    if len(value) > limit:
        problems.append(f"{name}: must be at most {limit} characters, got {len(value)}")
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (JSON "\ud800") would fail the whole sink batch later.
        problems.append(f"{name}: must be valid Unicode text")
        return None
    return value


def _finite(name: str, value: object, problems: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{name}: must be a finite number, not {_type_name(value)}")
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        number = math.inf
    if not math.isfinite(number):
        problems.append(f"{name}: must be a finite number")
        return None
    return number


def _epoch(value: object, problems: list[str]) -> float | None:
    """Seconds since the epoch (UTC) from a number or an ISO-8601 string."""
    if isinstance(value, str):
        if len(value) > _MAX_TS_TEXT:
            problems.append(f"ts: must be {_TS_HINT}; got a {len(value)}-character string")
            return None
        try:
            moment = datetime.fromisoformat(value.strip())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
        except (ValueError, OverflowError):
            problems.append(f"ts: must be {_TS_HINT}; got {_echo(value)!r}")
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"ts: must be {_TS_HINT}, not {_type_name(value)}")
        return None
    return _finite("ts", value, problems)


def _iso(ts: float) -> str:
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # beyond year 9999
        return f"{ts:g}"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _redact_unit(row: OutcomeRecord, redactor: Redactor, index: int) -> OutcomeRecord | Rejection:
    """``row`` with its unit id as the requests table records it (hashed, or dropped)."""
    if row.unit_id is None:
        return row
    unit = redactor.value(row.unit_id)
    if unit is None and row.request_id is None:
        return Rejection(index, row.event_id, "unit_id: unit ids are not recorded here "
                         "(redact.unit with mode: drop); identify the outcome by request_id")
    return row._replace(unit_id=unit)


class OutcomeIngest:
    """Validates outcome batches and hands the valid, not recently seen events to a sink.

    Not thread-safe: call it from one event loop (both transports share the admin loop).
    """

    def __init__(
        self,
        sink: OutcomeSink,
        *,
        max_events: int = 10_000,
        recent_ids: int = 100_000,
        max_future_s: float = 300,
        clock: Callable[[], float] = time.time,
        unit_redactor: Callable[[], Redactor | None] | None = None,
    ) -> None:
        """``unit_redactor`` gives, per batch, how recorded unit ids are redacted (the
        config's ``redact.unit``): outcome unit ids get the same keyed hash as the requests'
        so they still join, and are never stored in clear."""
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        if recent_ids < 0:
            raise ValueError(f"recent_ids must not be negative, got {recent_ids}")
        if not math.isfinite(max_future_s) or max_future_s < 0:
            raise ValueError(f"max_future_s must be a finite number >= 0, got {max_future_s}")
        self._sink = sink
        self.max_events = max_events
        self.recent_ids = recent_ids
        self.max_future_s = float(max_future_s)
        self._clock = clock
        self._unit_redactor = unit_redactor
        # Insertion-ordered set of recently stored ids; the oldest falls out first.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._accepted_total = 0
        self._rejected_total = 0
        self._duplicates_total = 0
        self._dropped_total = 0

    # -- counters (read by metrics) ---------------------------------------------------
    @property
    def accepted_total(self) -> int:
        return self._accepted_total

    @property
    def rejected_total(self) -> int:
        return self._rejected_total

    @property
    def duplicates_total(self) -> int:
        return self._duplicates_total

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    # -- ingestion ------------------------------------------------------------------------
    def ingest(self, events: Sequence[Mapping[str, object]]) -> IngestResult:
        """Validate and store a batch; good events are stored even when others are rejected.

        Raises :class:`BatchTooLarge` (storing nothing) when the batch exceeds ``max_events``.
        """
        if len(events) > self.max_events:
            raise BatchTooLarge(len(events), self.max_events)
        now = self._clock()
        redactor = self._unit_redactor() if self._unit_redactor is not None else None
        accepted = dropped = 0
        duplicates: list[str] = []
        rejected: list[Rejection] = []
        for index, event in enumerate(events):
            outcome = self._validate(index, event, now)
            if redactor is not None and not isinstance(outcome, Rejection):
                outcome = _redact_unit(outcome, redactor, index)
            if isinstance(outcome, Rejection):
                rejected.append(outcome)
                continue
            event_id = outcome.event_id
            if event_id in self._recent:
                self._recent.move_to_end(event_id)
                duplicates.append(event_id)
            elif self._sink.record_outcome(outcome):
                accepted += 1
                self._remember(event_id)
            else:
                # Not remembered: a retry of a dropped event must get through.
                dropped += 1
        self._accepted_total += accepted
        self._rejected_total += len(rejected)
        self._duplicates_total += len(duplicates)
        self._dropped_total += dropped
        return IngestResult(accepted, tuple(duplicates), tuple(rejected), dropped)

    def _remember(self, event_id: str) -> None:
        if self.recent_ids == 0:
            return
        self._recent[event_id] = None
        if len(self._recent) > self.recent_ids:
            self._recent.popitem(last=False)

    def _validate(self, index: int, event: object, now: float) -> OutcomeRecord | Rejection:
        if not isinstance(event, Mapping):
            return Rejection(index, None, f"event: must be an object, not {_type_name(event)}")
        problems: list[str] = []
        unknown = event.keys() - _FIELD_SET
        if unknown:
            shown = sorted(_echo(key) for key in unknown)[:_MAX_UNKNOWN_LISTED]
            more = len(unknown) - len(shown)
            names = ", ".join(shown) + (f" and {more} more" if more else "")
            problems.append(f"{names}: unknown field (expected {', '.join(EVENT_FIELDS)})")

        event_id = None
        if event.get("event_id") is None:
            problems.append("event_id: required")
        else:
            event_id = _text("event_id", event["event_id"], MAX_EVENT_ID_CHARS, problems)

        keys: dict[str, str | None] = {}
        for name in ("unit_id", "request_id"):
            raw = event.get(name)
            keys[name] = None if raw is None else _text(name, raw, MAX_KEY_CHARS, problems)
        if event.get("unit_id") is None and event.get("request_id") is None:
            problems.append("unit_id, request_id: at least one is required")

        metric = event.get("metric")
        if metric is None:
            problems.append("metric: required")
        elif not isinstance(metric, str) or METRIC_PATTERN.fullmatch(metric) is None:
            problems.append(
                f"metric: must match {METRIC_PATTERN.pattern} (a letter or _, then up to "
                f"127 letters, digits or _.:-), got {_echo(metric)!r}"
            )

        value = None
        if event.get("value") is None:
            problems.append("value: required")
        else:
            value = _finite("value", event["value"], problems)

        ts: float | None = now
        if event.get("ts") is not None:
            ts = _epoch(event["ts"], problems)
            if ts is not None and ts < 0:
                problems.append("ts: must not be before 1970-01-01T00:00:00Z")
            elif ts is not None and ts > now + self.max_future_s:
                problems.append(
                    f"ts: {_iso(ts)} is more than {self.max_future_s:g}s in the future "
                    "(epoch seconds are expected, not milliseconds)"
                )

        if problems:
            return Rejection(index, event_id, "; ".join(problems))
        assert event_id is not None and isinstance(metric, str)
        assert value is not None and ts is not None
        return OutcomeRecord(
            event_id=event_id,
            unit_id=keys["unit_id"],
            request_id=keys["request_id"],
            metric=metric,
            value=value,
            ts=ts,
            received_at=now,
        )
