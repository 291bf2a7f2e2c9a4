"""Assignment: the portable hash, uniformity, stable ranges, layers, holdout, forcing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sidecar.assignment import RouteAssigner, UnitKey, bucket
from sidecar.config.experiments import AssignmentConfig, ExperimentConfig, UnitSource

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "assignment_vectors.json").read_text())
BY_USER = UnitKey.of(UnitSource(metadata="x-user-id"))


def test_golden_vectors() -> None:
    assert len(VECTORS["vectors"]) >= 8
    for v in VECTORS["vectors"]:
        assert bucket(v["salt"], v["unit"]) == v["bucket"], v
        assert int(v["sha256_first8_hex"], 16) % 10_000 == v["bucket"]


def test_buckets_are_uniform_over_100k_units() -> None:
    counts = np.bincount([bucket("uniformity", f"u{i}") // 100 for i in range(100_000)],
                         minlength=100)
    p = stats.chisquare(counts).pvalue
    assert p > 0.001, p


def _experiment(weights: list[float], coverage: float = 100, **kw) -> ExperimentConfig:
    names = ["control", "treat", "third", "fourth", "fifth"]
    return ExperimentConfig(
        name=kw.pop("name", "exp"),
        variants=[{"name": names[i], "backend": f"b{i}", "weight": w}
                  for i, w in enumerate(weights)],
        coverage=coverage,
        **kw,
    )


def _assign(assigner: RouteAssigner, unit: str, extra=()) -> tuple[str | None, str | None]:
    d = assigner.decide((("x-user-id", unit), *extra), b"", "rid")
    return d.experiment, d.variant


def test_split_matches_weights() -> None:
    a = RouteAssigner("p", (_experiment([20, 80]),), BY_USER, AssignmentConfig())
    variants = [_assign(a, f"user-{i}")[1] for i in range(20_000)]
    share = variants.count("control") / len(variants)
    assert abs(share - 0.2) < 0.015
    assert set(variants) == {"control", "treat"}


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    new_weight=st.integers(1, 10),
    coverage=st.integers(1, 100),
    lower_to=st.integers(0, 100),
)
def test_ranges_are_stable_when_coverage_shrinks_or_a_variant_is_appended(
    weights, new_weight, coverage, lower_to
) -> None:
    units = [f"u{i}" for i in range(400)]
    base = RouteAssigner("p", (_experiment(weights, coverage),), BY_USER, AssignmentConfig())
    before = {u: _assign(base, u)[1] for u in units}
    appended = RouteAssigner(
        "p", (_experiment([*weights, new_weight], coverage),), BY_USER, AssignmentConfig()
    )
    lowered = RouteAssigner(
        "p", (_experiment(weights, min(lower_to, coverage)),), BY_USER, AssignmentConfig()
    )
    for u in units:
        # Appending never moves a unit between the variants that were there.
        after = _assign(appended, u)[1]
        if before[u] is not None:
            assert after == before[u]
        # Lowering coverage only removes units; it never moves one to another variant.
        low = _assign(lowered, u)[1]
        if low is not None:
            assert low == before[u]


def test_namespaces_keep_experiments_mutually_exclusive() -> None:
    a = _experiment([50, 50], name="a", namespace={"name": "layer", "start": 0, "end": 50})
    b = _experiment([50, 50], name="b", namespace={"name": "layer", "start": 50, "end": 100})
    assigner = RouteAssigner("p", (a, b), BY_USER, AssignmentConfig())
    seen = {}
    for i in range(5_000):
        seen[f"u{i}"] = _assign(assigner, f"u{i}")[0]
    share_a = list(seen.values()).count("a") / len(seen)
    assert abs(share_a - 0.5) < 0.03
    assert set(seen.values()) == {"a", "b"}  # every unit in exactly one of them
    for unit, exp in seen.items():
        in_a = bucket("layer", unit) < 5000
        assert exp == ("a" if in_a else "b")


def test_holdout_is_out_of_every_experiment() -> None:
    assigner = RouteAssigner(
        "p", (_experiment([50, 50]),), BY_USER, AssignmentConfig(holdout_percent=10)
    )
    held = 0
    for i in range(5_000):
        unit = f"u{i}"
        d = assigner.decide((("x-user-id", unit),), b"", "r")
        if bucket("shadowcar-holdout", unit) < 1000:
            held += 1
            assert (d.backend, d.exposed, d.variant) == ("p", False, "holdout")
        else:
            assert d.exposed
    assert 400 < held < 600


def test_forced_variant_only_when_allowed() -> None:
    forced = (("x-force-variant", "treat"),)
    strict = RouteAssigner("p", (_experiment([100, 0]),), BY_USER, AssignmentConfig())
    assert _assign(strict, "u1", forced) == ("exp", "control")
    qa = RouteAssigner("p", (_experiment([100, 0], allow_force=True),), BY_USER,
                       AssignmentConfig())
    d = qa.decide((("x-user-id", "u1"), *forced), b"", "r")
    assert (d.variant, d.backend, d.forced, d.exposed) == ("treat", "b1", True, True)


def test_missing_unit_is_served_by_primary_not_exposed() -> None:
    assigner = RouteAssigner("p", (_experiment([50, 50]),), BY_USER, AssignmentConfig())
    d = assigner.decide((("other", "x"),), b"", "rid")
    assert (d.backend, d.exposed, d.unit_id) == ("p", False, None)


def test_unit_fallback_list_and_oip_fields() -> None:
    from sidecar._proto import inference_pb2 as pb

    key = UnitKey.of((UnitSource(field="parameters.user_id"), UnitSource(metadata="x-session"),
                      UnitSource(request_id=True)))
    req = pb.ModelInferRequest(model_name="m")
    req.parameters["user_id"].string_param = "alice"
    assert key.extract((), req.SerializeToString(), "rid") == "alice"
    assert key.extract((("x-session", "s1"),), b"", "rid") == "s1"
    assert key.extract((), b"", "rid-9") == "rid-9"
    by_input = UnitKey.of(UnitSource(field="inputs.user"))
    req2 = pb.ModelInferRequest(model_name="m")
    t = req2.inputs.add(name="user", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"bob")
    assert by_input.extract((), req2.SerializeToString(), "r") == "bob"
    req3 = pb.ModelInferRequest(model_name="m")
    req3.inputs.add(name="user", datatype="BYTES", shape=[1])
    req3.raw_input_contents.append((3).to_bytes(4, "little") + b"eve")
    assert by_input.extract((), req3.SerializeToString(), "r") == "eve"
    assert by_input.extract((), b"\xff\xff garbage", "r") is None


def test_the_documented_sql_form_reproduces_the_buckets() -> None:
    """docs/assignment.md gives a DuckDB SQL expression; it must agree with bucket()."""
    import duckdb

    con = duckdb.connect()
    sql = "SELECT (('0x' || substr(sha256(? || ':' || ?), 1, 16))::UBIGINT % 10000)::INTEGER"
    units = [f"u{i}" for i in range(200)] + [v["unit"] for v in VECTORS["vectors"]]
    for unit in units:
        got = con.execute(sql, ["exp-salt", unit]).fetchall()[0][0]
        assert got == bucket("exp-salt", unit)
    con.close()
