"""One grpc.aio server interceptor that runs every call inside a stack of async context layers.

A layer is `layer(method, streaming, context)` -> an async context manager entered before the
servicer runs and left after it (also when it fails). A layer turns a call away by aborting
inside its `__aenter__` (`await context.abort(...)`); the layers before it see the abort. The
original handler's kind (unary or streaming) and style (async generator or coroutine that
writes with context.write) are kept, so any aio servicer can sit behind it. With a
MessageGuard (server/messages.py), request bytes that do not parse and messages over the size
limit are refused inside the layers, so the layers see and count those refusals too.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing
from typing import Any, Protocol

import grpc

from vaeserve.server.messages import CheckedRequests, MessageGuard


class Layer(Protocol):
    """Builds the context a call runs in."""

    def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AbstractAsyncContextManager[Any]:
        """method: the full method name; streaming: whether requests arrive as a stream."""


class LayeredInterceptor(grpc.aio.ServerInterceptor):
    """Runs each call of the server inside `layers`, outermost first; `guard` checks its
    messages (undecodable bytes, size) inside them."""

    def __init__(self, layers: Sequence[Layer], guard: MessageGuard | None = None) -> None:
        self.layers = list(layers)
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler grpc found for this method (None: unknown method, left alone)."""
        handler = await continuation(handler_call_details)
        if handler is None or not (self.layers or self.guard):
            return handler
        return wrap_handler(handler, handler_call_details.method, self.layers, self.guard)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    method: str,
    layers: Sequence[Layer],
    guard: MessageGuard | None = None,
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

    async def begin(request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The request as the servicer gets it: a refused unary request aborts the call; a
        request stream ends at its first refused message."""
        if guard is None:
            return request
        if streaming:
            return CheckedRequests(request)
        await guard.admit(request, method, context)
        return request

    async def finish(request: Any, context: grpc.aio.ServicerContext) -> None:
        """Abort with the refused message that ended a request stream, if one did."""
        if guard is not None and isinstance(request, CheckedRequests) and request.refused:
            await guard.refuse(request.refused, method, context)

    async def check(response: Any, context: grpc.aio.ServicerContext) -> None:
        if guard is not None:
            await guard.check_response(response, method, context)

    if inspect.isasyncgenfunction(behavior):

        async def wrapped_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            async with AsyncExitStack() as stack:
                await enter(stack, context)
                request = await begin(request, context)
                async with aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        await check(response, context)
                        yield response
                await finish(request, context)

        wrapped: Callable[..., Any] = wrapped_gen
    else:

        async def wrapped_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with AsyncExitStack() as stack:
                await enter(stack, context)
                request = await begin(request, context)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                await finish(request, context)
                if not handler.response_streaming:
                    await check(result, context)
                return result

        wrapped = wrapped_call
    deserializer = handler.request_deserializer
    return make(
        wrapped,
        request_deserializer=guard.deserializer(deserializer) if guard else deserializer,
        response_serializer=handler.response_serializer,
    )
