"""Field paths into decoded messages, leaf enumeration, and the output/score/label summary."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.codecs import CodecError
from sidecar.codecs.fieldpath import extract, leaf_paths, parse_path, summarize_json

DOC: dict[str, Any] = {
    "scores": [0.1, 0.7, 0.2],
    "result": {"label": "cat", "confidence": 0.7, "flags": {"ok": True}},
    "items": [
        {"id": "a", "score": 1, "tags": ["x", "y"]},
        {"id": "b", "score": 2.5, "tags": []},
        {"id": "c", "tags": ["z"]},
    ],
    "grid": [[1, 2], [3]],
    "empty": [],
    "nothing": None,
    "probs": {"cat": 0.9, "dog": 0.1},
}


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("scores", [0.1, 0.7, 0.2]),
        ("scores[]", [0.1, 0.7, 0.2]),
        ("scores[1]", [0.7]),
        ("scores[-1]", []),  # only non-negative indexes parse, see the error test
        ("result.label", ["cat"]),
        ("result.flags.ok", [True]),
        ("result", []),  # an object is not a leaf
        ("items[].score", [1, 2.5]),
        ("items.score", [1, 2.5]),
        ("items[].tags", ["x", "y", "z"]),
        ("items[].tags[]", ["x", "y", "z"]),
        ("items[0].id", ["a"]),
        ("items[9].id", []),
        ("grid", [1, 2, 3]),
        ("grid[1]", [3]),
        ("empty", []),
        ("nothing", []),
        ("missing.deeper", []),
        ("probs.cat", [0.9]),
        ("scores.x", []),
    ],
)
def test_extract(path: str, values: list[Any]) -> None:
    if path == "scores[-1]":
        with pytest.raises(CodecError):
            extract(DOC, path)
        return
    assert extract(DOC, path) == values


@pytest.mark.parametrize("bad", ["", " a", "a..b", "a[", "a]", "a[x]", ".a", "a."])
def test_malformed_paths_are_codec_errors(bad: str) -> None:
    with pytest.raises(CodecError, match="field path"):
        parse_path(bad)


def test_parse_path_steps() -> None:
    assert parse_path("items[][2].score").steps == (("items", (None, 2)), ("score", ()))


def test_leaf_paths() -> None:
    assert leaf_paths(DOC) == [
        "empty", "grid[]", "items[].id", "items[].score", "items[].tags", "nothing",
        "probs.cat", "probs.dog", "result.confidence", "result.flags.ok", "result.label",
        "scores",
    ]
    assert leaf_paths({}) == []
    assert leaf_paths({"a": [{"b": [{"c": 1}]}]}) == ["a[].b[].c"]


def test_every_leaf_path_extracts_what_the_document_holds() -> None:
    for path in leaf_paths(DOC):
        if path not in ("empty", "nothing"):
            assert extract(DOC, path), path


@pytest.mark.parametrize(
    ("compare", "expected"),
    [
        (["scores", "result.label"], ([0.1, 0.7, 0.2], 0.2, "cat")),
        (["result.label", "result.confidence"], ([0.7], 0.7, "cat")),
        (["items[].score"], ([1.0, 2.5], 2.5, None)),
        (["result.flags.ok"], (None, None, "true")),
        (["missing", "items[].id", "scores"], ([0.1, 0.7, 0.2], 0.2, "a")),
        (["empty", "nothing"], (None, None, None)),
        ([], (None, None, None)),
        # The first numeric path wins; later ones do not overwrite it.
        (["result.confidence", "scores"], ([0.7], 0.7, None)),
    ],
)
def test_summarize_json(compare: list[str], expected: tuple[Any, ...]) -> None:
    assert summarize_json(DOC, compare) == expected


def test_summarize_json_score_index() -> None:
    assert summarize_json(DOC, ["scores"], score_index=1) == ([0.1, 0.7, 0.2], 0.7, None)
    assert summarize_json(DOC, ["scores"], score_index=5) == ([0.1, 0.7, 0.2], None, None)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False)
    | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text("abc", min_size=1, max_size=2), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(doc=st.dictionaries(st.text("abc", min_size=1, max_size=2), _JSON, max_size=4))
def test_any_document_extracts_only_scalars(doc: dict[str, Any]) -> None:
    for path in leaf_paths(doc):
        values = extract(doc, path)
        assert all(isinstance(v, str | int | float) for v in values)
    summarize_json(doc, leaf_paths(doc))
