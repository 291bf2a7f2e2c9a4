"""Fuzzed config files: a config error naming a field, never a traceback."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import parse_config
from sidecar.config.load import load_config
from sidecar.errors import ConfigError

GOOD = {
    "listen": "127.0.0.1:50551",
    "backends": [{"name": "a", "version": "1", "target": "127.0.0.1:6001"},
                 {"name": "b", "version": "2", "target": "127.0.0.1:6002"}],
    "routes": [{"match": "/x.Y/Z", "primary": "a", "codec": "oip",
                "shadows": [{"backend": "b", "sample_percent": 25}],
                "experiment": {"name": "e", "variants": [
                    {"name": "control", "backend": "a", "weight": 50},
                    {"name": "treat", "backend": "b", "weight": 50}]}}],
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), c,
                                                                   max_size=3)),
                      max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = [p for p in _paths(GOOD) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), values, st.booleans()), max_size=4))
def test_mutated_configs_fail_cleanly(mutations) -> None:
    data = copy.deepcopy(GOOD)
    for path, value, delete in mutations:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        parse_config(data)
    except ConfigError as exc:
        assert exc.problems
        for path, message in exc.problems:
            assert isinstance(path, str) and message


def test_random_yaml_text_fails_cleanly(tmp_path) -> None:
    path = tmp_path / "c.yaml"

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=200))
    def check(text: str) -> None:
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert exc.problems

    check()


def test_yaml_round_trip_of_good_config_is_valid() -> None:
    assert parse_config(yaml.safe_load(yaml.safe_dump(GOOD))).version


def test_random_bytes_fail_cleanly() -> None:
    """Issue 14.10: whatever bytes a file or a POST /v1/config body holds, the answer is a
    ConfigError (exit 2, HTTP 400): not UTF-8, deep, aliased, or just wrong."""
    from sidecar.config.load import parse_config_text

    fragments = st.sampled_from([b"[", b"]", b"{", b"}", b"&a ", b"*a ", b"a: ", b"\n",
                                 b"- ", b"\xff", b"\xc3", b"!!python/object ", b".inf", b"'"])

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=300),
                     st.lists(fragments, max_size=400).map(b"".join)))
    def check(raw: bytes) -> None:
        try:
            parse_config_text(raw, "fuzz")
        except ConfigError as exc:
            assert exc.problems

    check()
