"""One grpc.aio server interceptor that runs every call inside a stack of async context layers.

A layer is `layer(method, streaming, context)` -> an async context manager entered before the
servicer runs and left after it (also when it fails). A layer turns a call away by aborting
inside its `__aenter__` (`await context.abort(...)`); the layers before it see the abort. The
original handler's kind (unary or streaming) and style (async generator or coroutine that
writes with context.write) are kept, so any aio servicer can sit behind it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Protocol

import grpc


class Layer(Protocol):
    """Builds the context a call runs in."""

    def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AbstractAsyncContextManager[Any]:
        """method: the full method name; streaming: whether requests arrive as a stream."""


class LayeredInterceptor(grpc.aio.ServerInterceptor):
    """Runs each call of the server inside `layers`, outermost first."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler grpc found for this method (None: unknown method, left alone)."""
        handler = await continuation(handler_call_details)
        if handler is None or not self.layers:
            return handler
        return wrap_handler(handler, handler_call_details.method, self.layers)


def wrap_handler(
    handler: grpc.RpcMethodHandler, method: str, layers: Sequence[Layer]
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour runs inside the layers."""
    streaming = bool(handler.request_streaming)
    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, make = kinds[(streaming, bool(handler.response_streaming))]
    behavior = getattr(handler, attr)

    async def enter(stack: AsyncExitStack, context: grpc.aio.ServicerContext) -> None:
        for layer in layers:
            await stack.enter_async_context(layer(method, streaming, context))

    if inspect.isasyncgenfunction(behavior):

        async def wrapped_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            async with AsyncExitStack() as stack:
                await enter(stack, context)
                async for response in behavior(request, context):
                    yield response

        wrapped: Callable[..., Any] = wrapped_gen
    else:

        async def wrapped_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with AsyncExitStack() as stack:
                await enter(stack, context)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result

        wrapped = wrapped_call
    return make(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
