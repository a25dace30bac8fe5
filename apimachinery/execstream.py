"""The opening of an exec stream, shared by the scheduler's proxy and the agent's server.

An ``Exec`` call is a bidirectional stream whose first message must be the
``ExecStart`` naming the pod, container and command; everything after it is
input. Both ends of the proxied call check that the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from apimachinery.pb import agent_pb2 as pb

__all__ = ["exec_start"]


async def exec_start(requests: AsyncIterator[pb.ExecInput], context: grpc.aio.ServicerContext) -> pb.ExecStart:
    """The stream's first message, which must be its start; the call is aborted with
    INVALID_ARGUMENT otherwise. ``requests`` is then positioned after it."""
    try:
        first: pb.ExecInput | None = await requests.__anext__()
    except StopAsyncIteration:
        first = None
    if first is None or first.WhichOneof("input") != "start":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of an exec must be its start")
    assert first is not None  # context.abort raised
    return first.start
