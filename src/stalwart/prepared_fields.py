"""uvicorn's httptools protocol, plus response fields the policy prepared at start-up.

The policy adds the same dozen security fields to every response. uvicorn checks each field
of a response head on every response (two regular-expression searches, a lower-casing and
three comparisons): about 0.5 µs a field, 9 µs for those fields alone, which was most of
what the policy costs a small response on this server (docs/performance.md, "floor").
Those fields never change after start-up, so the policy layer renders and checks them once
(`render_fields` in policies/exchange.py) and hands the rendered block to the server.

The hand-over is an ASGI extension (spec: "extensions" in the scope):

* this protocol puts a fresh dict under `PREPARED_FIELDS` in each request's
  `scope["extensions"]`;
* before the response starts, the app may put bytes in that dict under `BLOCK`: complete
  `name: value\r\n` lines, lower-case names, none of the three fields the server acts on
  (Content-Length, Transfer-Encoding, Connection), every byte one uvicorn's own check
  accepts. In the request's dict rather than in the start message, so that a layer outside
  the app's policy stack that builds a new start message cannot drop the fields;
* the cycle here checks the block as uvicorn checks fields (once per distinct block: the
  policy sends one of a few, built at start-up; a bad one fails before the response starts),
  lets uvicorn's own code write the head from the message's `headers` as always, and inserts
  the block before the blank line that ends it.

Everything uvicorn does (its checks and errors, Content-Length, chunking, keep-alive, HEAD,
flow control, the body) stays its own code, run unchanged: a response without a block, a
WebSocket, or a server without this protocol behave exactly as in uvicorn, and the policy
layer then sends the same fields in `headers`. uvicorn is pinned by the lock file;
tests/test_prepared_fields.py compares the bytes written with and without the block.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from stalwart.policies.exchange import BLOCK, PREPARED_FIELDS, is_rendered_block

__all__ = ["PreparedFieldsCycle", "PreparedFieldsProtocol"]

_BLANK_LINE = b"\r\n"
# Blocks already checked (bytes compare by value; the same few objects come back).
_CHECKED: set[bytes] = set()
_MAX_CHECKED = 64


class _Inserting:
    """Stands in for the transport while uvicorn writes one head: adds the block to it."""

    __slots__ = ("block", "transport")

    def __init__(self, transport: Any, block: bytes) -> None:
        self.transport = transport
        self.block = block

    def write(self, head: bytes) -> None:
        # uvicorn writes the whole head in one call, ending with the blank line.
        self.transport.write(b"".join((head[:-2], self.block, _BLANK_LINE)))


class PreparedFieldsCycle(RequestResponseCycle):
    # The request's extension dict (set by PreparedFieldsProtocol when it makes the cycle).
    prepared: dict[str, object]

    def send(self, message: Any) -> Awaitable[None]:  # type: ignore[override]
        # A plain method handing back uvicorn's coroutine: bodies, and heads without a
        # block, cost a comparison or a dict lookup more than in uvicorn.
        if self.response_started or message["type"] != "http.response.start":
            return super().send(message)
        block = self.prepared.get(BLOCK)
        if block is None:
            return super().send(message)
        return self._send_head(message, block)

    async def _send_head(self, message: Any, block: object) -> None:
        # uvicorn checks every field it writes; so is the block, once per distinct block (the
        # policy sends one of a few, built at start-up). A bad one fails before the response
        # starts, so uvicorn answers 500 as for any failure before a response.
        if type(block) is not bytes or block not in _CHECKED:
            if not is_rendered_block(block):
                raise RuntimeError("Invalid prepared header block.")
            if len(_CHECKED) < _MAX_CHECKED:
                _CHECKED.add(block)
        # uvicorn's own wait for a paused transport, done first (until it stays resumed), so
        # that its `send` below cannot suspend: the stand-in transport is never seen by
        # anything else.
        while self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        transport = self.transport
        self.transport = _Inserting(transport, block)  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport


class PreparedFieldsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose requests advertise and honour `PREPARED_FIELDS`."""

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # uvicorn has built the cycle and scheduled (or queued, behind a pipelined request)
        # the app's task, which has not run yet: the class and the extension are in place
        # before the app sees the scope. A WebSocket upgrade builds no cycle.
        if cycle is not previous and type(cycle) is RequestResponseCycle:
            cycle.__class__ = PreparedFieldsCycle
            slot: dict[str, object] = {}
            cycle.prepared = slot  # type: ignore[attr-defined]
            extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
            extensions[PREPARED_FIELDS] = slot
