"""Issue 17: per-backend model names (``backends[].model``, ``model_version``) and per-model
routes (``match: {method, model}``) in the config: accepted forms, and errors naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.config.load import canonical_json
from sidecar.errors import ConfigError

INFER = "/inference.GRPCInferenceService/ModelInfer"

GOOD: dict[str, Any] = {
    "listen": "127.0.0.1:50551",
    "admin": {"listen": None},
    "storage": {"path": "x.duckdb"},
    "backends": [
        {"name": "lr", "version": "1", "target": "127.0.0.1:6001"},
        {"name": "gbm", "version": "2", "target": "127.0.0.1:6001", "model": "fraud-gbm",
         "model_version": "3"},
        {"name": "rf", "version": "1", "target": "127.0.0.1:6002", "model": "credit-rf"},
    ],
    "routes": [
        {"match": {"method": INFER, "model": "fraud-lr"}, "primary": "lr", "codec": "oip",
         "shadows": [{"backend": "gbm"}]},
        {"match": {"method": INFER, "model": "credit"}, "primary": "rf", "codec": "oip"},
        {"match": INFER, "primary": "lr", "codec": "oip"},
    ],
}


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return dict(err.value.problems)


def test_both_match_forms_and_model_fields_load() -> None:
    loaded = parse_config(copy.deepcopy(GOOD))
    routes = loaded.config.routes
    assert [r.match for r in routes] == [
        f"{INFER};model=fraud-lr", f"{INFER};model=credit", INFER]
    assert [(r.method, r.model) for r in routes] == [
        (INFER, "fraud-lr"), (INFER, "credit"), (INFER, None)]
    gbm = loaded.config.backends[1]
    assert (gbm.model, gbm.model_version) == ("fraud-gbm", "3")
    # The one-string form round-trips: the canonical form loads to the same version.
    import json

    again = parse_config(json.loads(canonical_json(loaded.config)))
    assert again.version == loaded.version
    # {method} alone is the string form.
    data = copy.deepcopy(GOOD)
    data["routes"][2]["match"] = {"method": INFER}
    assert parse_config(data).config.routes[2].match == INFER


@pytest.mark.parametrize(("match", "where"), [
    ({"method": "/inference.GRPCInferenceService/*", "model": "m"}, "routes[0].match"),
    ({"method": INFER, "model": "has space"}, "routes[0].match"),
    ({"method": INFER, "model": ""}, "routes[0].match"),
    ({"method": INFER, "model": 3}, "routes[0].match"),
    ({"model": "m"}, "routes[0].match"),
    ({"method": INFER, "model": "m", "version": "1"}, "routes[0].match"),
    ({"method": "/x.Y/Z", "model": "m"}, "routes[0].match.method"),
    (f"{INFER};model=", "routes[0].match"),
])
def test_bad_match_mappings_name_the_field(match: Any, where: str) -> None:
    data = copy.deepcopy(GOOD)
    data["routes"][0]["match"] = match
    assert where in _problems(data)


def test_a_per_model_route_needs_the_oip_codec() -> None:
    data = copy.deepcopy(GOOD)
    data["routes"][1]["codec"] = "raw"
    problems = _problems(data)
    assert "routes[1].codec" in problems
    assert "codec: oip" in problems["routes[1].codec"]


def test_duplicate_per_model_routes_are_refused() -> None:
    data = copy.deepcopy(GOOD)
    data["routes"][1]["match"] = {"method": INFER, "model": "fraud-lr"}
    assert "duplicate route" in _problems(data)["routes[1].match"]


@pytest.mark.parametrize("key", ["model", "model_version"])
def test_a_model_name_on_a_backend_without_oip_routes_is_refused(key: str) -> None:
    data = copy.deepcopy(GOOD)
    data["backends"].append({"name": "raw", "version": "1", "target": "127.0.0.1:6003",
                             key: "x"})
    data["routes"].append({"match": "/x.Y/Z", "primary": "raw"})
    problems = _problems(data)
    assert f"backends[3].{key}" in problems
    assert "codec: oip" in problems[f"backends[3].{key}"]


@pytest.mark.parametrize(("key", "value"), [
    ("model", "bad name"), ("model", ""), ("model_version", ""), ("model_version", "a\nb"),
])
def test_bad_backend_model_values_name_the_field(key: str, value: str) -> None:
    data = copy.deepcopy(GOOD)
    data["backends"][1][key] = value
    assert f"backends[1].{key}" in _problems(data)


def test_an_oip_backend_may_also_serve_a_raw_route() -> None:
    """Its raw routes forward bytes as they come; only its OIP routes are rewritten."""
    data = copy.deepcopy(GOOD)
    data["routes"].append({"match": "/inference.GRPCInferenceService/*", "primary": "gbm"})
    parse_config(data)
