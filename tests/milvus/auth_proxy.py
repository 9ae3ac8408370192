"""A token-checking gRPC front for a real `milvus-lite server`, which accepts any token.

A Milvus server with authorization enabled refuses a call whose `authorization` metadata does not carry a
valid token with gRPC status UNAUTHENTICATED ("auth check failure, ..."). This front does the same and
forwards every other call, as raw bytes, to the milvus-lite server behind it: the client, its channel and
every answer are real; only the credential check is added. `token` can be changed while it runs (a
rotated Secret).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from tests.serving.utils import free_port

AUTH_FAILURE = "auth check failure, please check username, password or token are correct"
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_NOT_FORWARDED = {"authorization", "user-agent", ":authority"}


class AuthProxy:
    """127.0.0.1:<port> -> `upstream` (host:port), refusing calls without `token`."""

    def __init__(self, upstream: str, token: str) -> None:
        self.token = token
        self.port = free_port()
        self.refused = 0
        self.forwarded = 0
        self._upstream = grpc.insecure_channel(upstream, options=_UNLIMITED)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[_Handler(self)],
                                   options=_UNLIMITED)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AuthProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._upstream.close()

    def allows(self, metadata: tuple[tuple[str, Any], ...]) -> bool:
        sent = dict(metadata).get("authorization")
        if isinstance(sent, bytes):
            sent = sent.decode()
        return sent == base64.b64encode(self.token.encode()).decode()

    def forward(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        call = self._upstream.unary_unary(method)   # no (de)serializers: the bytes go through untouched

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = tuple(context.invocation_metadata())
            if not self.allows(metadata):
                self.refused += 1
                context.abort(grpc.StatusCode.UNAUTHENTICATED, AUTH_FAILURE)
            self.forwarded += 1
            kept = [(k, v) for k, v in metadata if k not in _NOT_FORWARDED and not k.startswith("grpc-")]
            left = context.time_remaining()   # no deadline: a huge number, which gRPC cannot pass on
            try:
                return call(request, metadata=kept, timeout=left if left < 86400 else None)
            except grpc.RpcError as exc:   # the server's own status, passed on as it came
                context.abort(exc.code(), exc.details() or "")
            raise AssertionError("unreachable")   # context.abort raises

        return unary


class _Handler(grpc.GenericRpcHandler):
    """Every method of every service: Milvus's client calls are all unary."""

    def __init__(self, proxy: AuthProxy) -> None:
        self.proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(self.proxy.forward(handler_call_details.method))
