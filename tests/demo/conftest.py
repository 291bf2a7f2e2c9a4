"""Fixtures for the demo model tests: a real grpc.aio model server on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from sidecar._proto import inference_pb2_grpc as pb_grpc
from sidecar.demo import LogisticModel, ModelServerHandle, make_demo_models, start_model_server


@pytest.fixture
def primary() -> LogisticModel:
    return make_demo_models()[0]


@pytest.fixture
async def model_server(primary: LogisticModel) -> AsyncIterator[ModelServerHandle]:
    async with await start_model_server(primary) as handle:
        yield handle


@pytest.fixture
async def channel(model_server: ModelServerHandle) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(model_server.target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)
