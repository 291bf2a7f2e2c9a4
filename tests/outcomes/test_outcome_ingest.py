"""The ingestion core: each validation rule, repeats, drops, limits, and junk never escaping."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ShadowcarError
from sidecar.outcomes import (
    EVENT_FIELDS,
    BatchTooLarge,
    IngestResult,
    MemoryOutcomeSink,
    OutcomeIngest,
    Rejection,
)
from sidecar.outcomes.ingest import METRIC_PATTERN

NOW = 1_700_000_000.0


def make(sink: MemoryOutcomeSink | None = None, **kwargs: Any) -> OutcomeIngest:
    return OutcomeIngest(sink or MemoryOutcomeSink(), clock=lambda: NOW, **kwargs)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": "e1", "unit_id": "u1", "metric": "click", "value": 1}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def reason_for(ev: object, **kwargs: Any) -> str:
    result = make(**kwargs).ingest([ev])  # type: ignore[list-item]
    assert result.accepted == 0 and len(result.rejected) == 1, result
    return result.rejected[0].reason


def test_a_valid_event_becomes_a_record() -> None:
    sink = MemoryOutcomeSink()
    result = make(sink).ingest([event(request_id="r1", value=2.5, ts=NOW - 60)])
    assert result == IngestResult(accepted=1)
    (row,) = sink.rows
    assert row._asdict() == {
        "event_id": "e1",
        "unit_id": "u1",
        "request_id": "r1",
        "metric": "click",
        "value": 2.5,
        "ts": NOW - 60,
        "received_at": NOW,
    }
    assert isinstance(row.value, float)


def test_ts_defaults_to_the_time_received_and_request_id_alone_is_enough() -> None:
    sink = MemoryOutcomeSink()
    make(sink).ingest([event(unit_id=..., request_id="r9", value=0)])
    assert (sink.rows[0].ts, sink.rows[0].unit_id, sink.rows[0].value) == (NOW, None, 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20.5+00:00", NOW + 0.5),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T22:13:20", NOW),  # naive means UTC
        ("2023-11-14 22:13:20", NOW),
        ("2023-11-14", NOW - 80_000),
    ],
)
def test_iso_timestamps(text: str, expected: float) -> None:
    sink = MemoryOutcomeSink()
    assert make(sink).ingest([event(ts=text)]).accepted == 1
    assert sink.rows[0].ts == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        (event(event_id=...), "event_id: required"),
        (event(event_id=None), "event_id: required"),
        (event(event_id=""), "event_id: must not be empty"),
        (event(event_id="  "), "event_id: must not be empty"),
        (event(event_id=7), "event_id: must be a string, not a number"),
        (event(event_id="x" * 129), "event_id: must be at most 128 characters, got 129"),
        (event(event_id="bad\ud800"), "event_id: must be valid Unicode text"),
        (event(unit_id=...), "unit_id, request_id: at least one is required"),
        (event(unit_id=None, request_id=None), "unit_id, request_id: at least one is required"),
        (event(unit_id=""), "unit_id: must not be empty"),
        (event(unit_id="u" * 257), "unit_id: must be at most 256 characters, got 257"),
        (event(request_id=["r"]), "request_id: must be a string, not a list"),
        (event(metric=...), "metric: required"),
        (event(metric="1click"), "metric: must match"),
        (event(metric="click rate"), "metric: must match"),
        (event(metric="m" * 129), "metric: must match"),
        (event(metric=3), "metric: must match"),
        (event(value=...), "value: required"),
        (event(value=True), "value: must be a finite number, not a boolean"),
        (event(value="1.0"), "value: must be a finite number, not a string"),
        (event(value=math.nan), "value: must be a finite number"),
        (event(value=-math.inf), "value: must be a finite number"),
        (event(value=10**400), "value: must be a finite number"),
        (event(value={"x": 1}), "value: must be a finite number, not an object"),
        (event(ts="yesterday"), "ts: must be epoch seconds or an ISO-8601 time"),
        (event(ts="2023-13-01T00:00:00Z"), "ts: must be epoch seconds or an ISO-8601 time"),
        (event(ts="2" * 65), "ts: must be epoch seconds or an ISO-8601 time"),
        (event(ts=False), "ts: must be epoch seconds or an ISO-8601 time"),
        (event(ts=math.inf), "ts: must be a finite number"),
        (event(ts=-1), "ts: must not be before 1970-01-01T00:00:00Z"),
        (event(ts=NOW + 301), "ts: 2023-11-14T22:18:21Z is more than 300s in the future"),
        (event(ts=NOW * 1000), "(epoch seconds are expected, not milliseconds)"),
        (event(ts=1e300), "ts: 1e+300 is more than 300s in the future"),
        (event(colour="red"), "colour: unknown field (expected event_id, unit_id"),
        ("click", "event: must be an object, not a string"),
        (None, "event: must be an object, not null"),
        ([1, 2], "event: must be an object, not a list"),
    ],
)
def test_each_rule_names_its_field(ev: object, expected: str) -> None:
    assert expected in reason_for(ev)


def test_future_tolerance_is_configurable() -> None:
    assert make(max_future_s=0).ingest([event(ts=NOW)]).accepted == 1
    assert "more than 0s in the future" in reason_for(event(ts=NOW + 1), max_future_s=0)
    assert make(max_future_s=3600).ingest([event(ts=NOW + 3000)]).accepted == 1


def test_every_problem_of_an_event_is_reported_and_its_id_kept() -> None:
    result = make().ingest([event(value="x", metric="", a=1, b=2)])
    (rejection,) = result.rejected
    assert rejection.event_id == "e1"
    assert rejection.reason.split("; ") == [
        "a, b: unknown field (expected event_id, unit_id, request_id, metric, value, ts)",
        "metric: must match [A-Za-z_][A-Za-z0-9_.:-]{0,127} (a letter or _, then up to 127 "
        "letters, digits or _.:-), got ''",
        "value: must be a finite number, not a string",
    ]


def test_junk_is_not_echoed_at_length() -> None:
    reason = reason_for(event(**{"k" * 10_000: 1}, metric="m" * 10_000))
    assert len(reason) < 500


def test_good_events_are_kept_when_others_in_the_batch_are_rejected() -> None:
    sink = MemoryOutcomeSink()
    batch: list[Any] = [
        event(event_id="a"),
        event(event_id="b", value=None),
        5,
        event(event_id="c"),
    ]
    result = make(sink).ingest(batch)
    assert result.accepted == 2
    assert [(r.index, r.event_id) for r in result.rejected] == [(1, "b"), (2, None)]
    assert [r.event_id for r in sink.rows] == ["a", "c"]
    assert not result.all_rejected and result.received == 4


def test_repeats_in_a_batch_and_across_batches_are_duplicates() -> None:
    sink = MemoryOutcomeSink()
    ingest = make(sink)
    first = ingest.ingest([event(event_id="a"), event(event_id="a", value=9), event(event_id="b")])
    assert (first.accepted, first.duplicates) == (2, ("a",))
    second = ingest.ingest([event(event_id="b"), event(event_id="c")])
    assert (second.accepted, second.duplicates) == (1, ("b",))
    assert [(r.event_id, r.value) for r in sink.rows] == [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    assert (ingest.accepted_total, ingest.duplicates_total, ingest.rejected_total) == (3, 2, 0)


def test_recent_ids_are_a_bounded_lru() -> None:
    sink = MemoryOutcomeSink()
    ingest = make(sink, recent_ids=2)
    ingest.ingest([event(event_id=i) for i in ("a", "b")])
    assert ingest.ingest([event(event_id="a")]).duplicates == ("a",)  # a is now most recent
    ingest.ingest([event(event_id="c")])  # evicts b
    result = ingest.ingest([event(event_id="a"), event(event_id="b")])
    # b fell out of memory and goes to the sink again (whose insert is idempotent).
    assert (result.accepted, result.duplicates) == (1, ("a",))
    assert make(MemoryOutcomeSink(), recent_ids=0).ingest([event(), event()]).accepted == 2


def test_a_full_sink_drops_and_a_retry_gets_through() -> None:
    sink = MemoryOutcomeSink(capacity=1)
    ingest = make(sink)
    result = ingest.ingest([event(event_id="a"), event(event_id="b")])
    assert (result.accepted, result.dropped, result.duplicates) == (1, 1, ())
    sink.capacity = None
    assert ingest.ingest([event(event_id="b")]).accepted == 1
    assert ingest.dropped_total == 1 and sink.dropped == 1


def test_an_oversized_batch_raises_and_stores_nothing() -> None:
    sink = MemoryOutcomeSink()
    ingest = make(sink, max_events=3)
    assert ingest.ingest([event(event_id=str(i)) for i in range(3)]).accepted == 3
    with pytest.raises(BatchTooLarge) as info:
        ingest.ingest([event(event_id=f"x{i}") for i in range(4)])
    assert isinstance(info.value, ValueError) and isinstance(info.value, ShadowcarError)
    assert (info.value.size, info.value.limit) == (4, 3)
    assert "at most 3 events, got 4" in str(info.value)
    assert len(sink.rows) == 3


@pytest.mark.parametrize(
    "kwargs",
    [{"max_events": 0}, {"recent_ids": -1}, {"max_future_s": -1.0}, {"max_future_s": math.nan}],
)
def test_settings_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(**kwargs)


def test_result_dict_and_counters() -> None:
    ingest = make()
    result = ingest.ingest([event(), event(), event(event_id=None)])
    assert result.to_dict() == {
        "accepted": 1,
        "duplicates": ["e1"],
        "rejected": [{"index": 2, "event_id": None, "reason": "event_id: required"}],
        "dropped": 0,
    }
    assert make().ingest([{}]).all_rejected
    assert not make().ingest([]).all_rejected
    assert (ingest.accepted_total, ingest.duplicates_total, ingest.rejected_total) == (1, 1, 1)
    assert Rejection(0, None, "x").to_dict() == {"index": 0, "event_id": None, "reason": "x"}


# -- random input -------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers().map(lambda i: i * 10**400),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["", " ", "\ud800", "2023-11-14T22:13:20Z", "x" * 300, "9999-12-31T23:59:59-23:59"]
    ),
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.one_of(st.sampled_from(EVENT_FIELDS), st.text(max_size=8))
_junk_event = st.one_of(_json, st.dictionaries(_keys, _json, max_size=8))
_valid_event = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=128).filter(str.strip),
        "metric": st.from_regex(METRIC_PATTERN, fullmatch=True),
        "value": st.one_of(
            st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False)
        ),
    },
    optional={
        "unit_id": st.text(min_size=1, max_size=256).filter(str.strip),
        "ts": st.floats(min_value=0, max_value=NOW + 300),
    },
).map(lambda e: e if "unit_id" in e else {**e, "request_id": "r"})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_junk_event, _valid_event), max_size=12))
def test_junk_only_ever_yields_rejections(events: list[Any]) -> None:
    sink = MemoryOutcomeSink()
    result = make(sink).ingest(events)
    assert result.received == len(events)
    for rejection in result.rejected:
        assert rejection.reason and ": " in rejection.reason
        assert rejection.event_id is None or isinstance(rejection.event_id, str)
    for row in sink.rows:
        assert isinstance(row.event_id, str) and 0 < len(row.event_id) <= 128
        assert row.unit_id is not None or row.request_id is not None
        assert METRIC_PATTERN.fullmatch(row.metric)
        assert math.isfinite(row.value) and isinstance(row.value, float)
        assert 0 <= row.ts <= NOW + 300
        row.event_id.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.lists(_valid_event, max_size=8, unique_by=lambda e: e["event_id"]))
def test_valid_events_are_always_accepted(events: list[dict[str, Any]]) -> None:
    result = make().ingest(events)
    assert result == IngestResult(accepted=len(events)), result
