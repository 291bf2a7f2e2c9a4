"""``summarize``: the compared output, score and label the ``calls`` table records."""

from __future__ import annotations

import pytest

from sidecar.codecs import CodecError, OutputSummary, Tensor, summarize

_PROBS = Tensor("probabilities", "FP32", (1, 3), [0.1, 0.7, 0.2], None)
_SCORE = Tensor("score", "FP64", (1,), [0.42], None)
_LABEL = Tensor("label", "BYTES", (1,), None, ["fraud", "ok"])


def test_first_output_by_default() -> None:
    assert summarize([_PROBS, _SCORE], None) == OutputSummary(
        output=[0.1, 0.7, 0.2], score=0.2, label="1"
    )


def test_named_output_and_score_index() -> None:
    assert summarize([_PROBS, _SCORE], "probabilities", score_index=1) == OutputSummary(
        output=[0.1, 0.7, 0.2], score=0.7, label="1"
    )
    assert summarize([_PROBS, _SCORE], "score") == OutputSummary(
        output=[0.42], score=0.42, label=None
    )


def test_scalar_shape_is_a_score_without_label() -> None:
    scalar = Tensor("y", "FP64", (), [3.0], None)
    assert summarize([scalar], None) == OutputSummary(output=[3.0], score=3.0, label=None)


def test_bytes_output_gives_the_first_text_as_label() -> None:
    assert summarize([_PROBS, _LABEL], "label") == OutputSummary(
        output=None, score=None, label="fraud"
    )
    empty = Tensor("label", "BYTES", (0,), None, [])
    assert summarize([empty], None) == OutputSummary(output=None, score=None, label=None)


def test_batches_are_flattened() -> None:
    batch = Tensor("p", "FP32", (2, 2), [0.9, 0.1, 0.3, 0.7], None)
    assert summarize([batch], None) == OutputSummary(
        output=[0.9, 0.1, 0.3, 0.7], score=0.7, label="0"
    )


def test_degenerate_outputs() -> None:
    assert summarize([], None) == OutputSummary(output=None, score=None, label=None)
    empty = Tensor("p", "FP32", (0,), [], None)
    assert summarize([empty], None) == OutputSummary(output=[], score=None, label=None)
    assert summarize([_PROBS], None, score_index=5) == OutputSummary(
        output=[0.1, 0.7, 0.2], score=None, label="1"
    )


def test_missing_named_output_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match=r"'logits' not in the response.*'probabilities'"):
        summarize([_PROBS], "logits")
