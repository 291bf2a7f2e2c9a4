"""Arbitrary bytes never make the OIP codec raise anything but CodecError.

The sink's writer thread decodes whatever a backend sent; one bad message must cost one row,
never the thread.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto import inference_pb2 as pb
from sidecar.codecs import CodecError, OipCodec, Tensor

_CODEC = OipCodec()


def _seeds() -> list[bytes]:
    """Valid messages to mutate, so the fuzzing reaches past the protobuf parser."""
    request = pb.ModelInferRequest(model_name="m", id="1")
    request.inputs.add(name="f", datatype="FP32", shape=[2, 2])
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.extend([np.ones(4, "<f4").tobytes(), b"\x02\x00\x00\x00hi"])
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="i", datatype="INT64", shape=[3]).contents.int64_contents.extend(
        [1, -2, 3]
    )
    response = pb.ModelInferResponse(model_name="m")
    response.outputs.add(name="p", datatype="FP64", shape=[1, 2])
    response.raw_output_contents.append(np.array([0.2, 0.8], "<f8").tobytes())
    return [m.SerializeToString() for m in (request, typed, response)]


def _decode_all(data: bytes) -> None:
    for decode in (_CODEC.decode_request, _CODEC.decode_response):
        try:
            tensors = decode(data)
        except CodecError:
            continue
        assert tensors is not None
        assert all(isinstance(t, Tensor) for t in tensors)
        for tensor in tensors:
            tensor.as_row()


def test_ten_thousand_random_byte_strings() -> None:
    rng = np.random.default_rng(20240607)
    seeds = _seeds()
    for i in range(10_000):
        if i % 2:
            data = rng.bytes(int(rng.integers(0, 96)))
        else:
            mutated = bytearray(seeds[i % len(seeds)])
            for _ in range(int(rng.integers(1, 4))):
                position = int(rng.integers(0, len(mutated)))
                mutated[position] = int(rng.integers(0, 256))
            cut = int(rng.integers(len(mutated) // 2, len(mutated) + 1))
            data = bytes(mutated[:cut])
        _decode_all(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hypothesis_binary(data: bytes) -> None:
    _decode_all(data)
