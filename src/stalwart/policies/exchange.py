"""One response watcher per request, shared by every policy layer.

Most policies touch the response only at its start, to add headers (security headers, CORS,
RateLimit, `Vary`, `Connection: close`, `X-Request-ID`), or only read what went out (status
and body size for the access log and the metrics). Done the usual way, each of them wraps
`send`: a closure per request and one more call per message, per layer. With ten layers in
the stack that was a measurable share of a small request (benchmarks/scale.py), so instead:

* the outermost policy layer that cares about the response calls `watch(scope, send)`,
  which puts an `Exchange` in the scope and wraps `send` once;
* every layer inside it calls `watch` too, finds the Exchange, gets `send` back unchanged,
  and records what it wants done: headers to append (`headers`), `Vary` tokens (`vary`), or
  a hook run on the response start (`hooks`);
* `Exchange.send` applies them to the start message, and counts status and body bytes.

A middleware used on its own finds no Exchange and creates one, so each still works alone.

At the response start, in this order: hooks, innermost layer first (the order the separate
wrappers ran in), on a fresh copy of the app's header list; then `headers`; then the `vary`
tokens merged into one `Vary` field. Every response of the request passes through it,
whichever layer sends it: a 500 from the error layer gets the RateLimit and CORS headers an
inner layer recorded before the app failed, as helmet and express-rate-limit (which set
their headers before the handler runs) do.

Fields fixed at start-up can also be handed over already rendered. When the server
advertises the `PREPARED_FIELDS` extension (`stalwart serve` does: stalwart/prepared_fields.py),
`Exchange.prepared` is True and a hook may add a block from `render_fields` to
`Exchange.block` (and its field names to `Exchange.block_names`, which later hooks treat as
present) instead of the fields to the list. At the response start the Exchange puts the block
in the request's extension dict (`scope["extensions"][PREPARED_FIELDS]["block"]`), not in the
message, and the server writes it into that request's head: a layer outside that builds a new
start message cannot lose it. It cannot see or change those fields either, which is why a
layer uses a block only when nothing outside the policy stack can want to (see
`policies/stack.py:install_policies`), and only for the fields no policy layer outside it
reads (the security set).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeGuard

from starlette.types import Message, Scope, Send

__all__ = [
    "BLOCK",
    "EXCHANGE_KEY",
    "PREPARED_FIELDS",
    "Exchange",
    "RawHeaders",
    "StartHook",
    "is_rendered_block",
    "merge_vary",
    "render_fields",
    "watch",
]

EXCHANGE_KEY = "stalwart.exchange"
PREPARED_FIELDS = "stalwart.prepared_fields"
BLOCK = "block"
"""Key of the rendered block in the request's `PREPARED_FIELDS` extension dict."""

RawHeaders = list[tuple[bytes, bytes]]
StartHook = Callable[["Exchange", RawHeaders], None]
"""Called at the response start with the Exchange and the (mutable) header list. A hook may
add, replace or drop fields, but records Vary tokens in `Exchange.vary` instead of adding a
Vary field, so the merge looks at the app's own fields only."""

_VARY = b"vary"
_RELEASED: Scope = {}
# RFC 9110 field names (tokens) and values (visible ASCII, obs-text, space, tab): stricter
# than what servers accept, so a rendered block never holds what a server would refuse.
_NAME_PATTERN = rb"[!#$%&'*+.^_`|~0-9a-z-]+"
_VALUE_PATTERN = rb"[\t\x20-\x7e\x80-\xff]*"
_NAME = re.compile(_NAME_PATTERN)
_VALUE = re.compile(_VALUE_PATTERN)
# Fields a server acts on when it writes the head (framing, keep-alive): never in a block.
_SERVER_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"connection"))
# A whole block as render_fields makes it, for a server that checks what it is handed.
_BLOCK = re.compile(
    rb"(?:(?!(?:content-length|transfer-encoding|connection):)"
    + _NAME_PATTERN + rb": " + _VALUE_PATTERN + rb"\r\n)*"
)
_NO_NAMES: frozenset[bytes] = frozenset()


def render_fields(fields: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """`fields` as the lines of a response head, or None if one cannot go in a block.

    Names must be lower case (servers lower-case them), valid tokens, and not one of the
    fields the server acts on; values must hold no control character but tab.
    """
    lines = []
    for name, value in fields:
        if name in _SERVER_FIELDS or not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)


def is_rendered_block(block: object) -> TypeGuard[bytes]:
    """True if `block` is bytes that `render_fields` could have returned."""
    return type(block) is bytes and _BLOCK.fullmatch(block) is not None


def _block_fields(block: bytes) -> RawHeaders:
    fields: RawHeaders = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        fields.append((name, value))
    return fields


class Exchange:
    """What the policy layers want done to one response, and what was sent."""

    __slots__ = (
        "block",
        "block_names",
        "body_size",
        "headers",
        "hooks",
        "prepared",
        "scope",
        "slot",
        "status",
        "upstream",
        "vary",
    )

    def __init__(self, scope: Scope, upstream: Send) -> None:
        self.scope = scope
        self.upstream = upstream
        self.hooks: list[StartHook] = []
        self.headers: RawHeaders = []
        self.vary: list[bytes] = []
        extensions = scope.get("extensions")
        # The server takes a rendered block in this dict (see the module docstring).
        slot = extensions.get(PREPARED_FIELDS) if extensions is not None else None
        self.slot: dict[str, object] | None = slot if type(slot) is dict else None
        self.prepared = self.slot is not None
        # Built by hooks at each response start: the rendered fields and their names.
        self.block = b""
        self.block_names = _NO_NAMES
        # 0 until the response starts: layers read it to tell "not started" apart.
        self.status = 0
        self.body_size = 0

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function returning the server's awaitable: no coroutine frame of its own.
        kind = message["type"]
        if kind == "http.response.body":
            self.body_size += len(message.get("body", b""))
            if not message.get("more_body", False):
                # The scope holds this Exchange, which holds the server's `send` (in uvicorn a
                # method of the object that holds the scope) and the scope itself: a cycle
                # that would leave each request's scope, and all it reaches, to the garbage
                # collector. Hooks only run at the start, so both links go once the response
                # is complete.
                scope = self.scope
                if scope.get(EXCHANGE_KEY) is self:
                    del scope[EXCHANGE_KEY]
                self.scope = _RELEASED
        elif kind == "http.response.start":
            self.status = message["status"]
            if self.hooks or self.headers or self.vary:
                # A fresh list: the app may reuse the list it sent (a Response's raw_headers).
                headers: RawHeaders = list(message.get("headers", ()))
                slot = self.slot
                if slot is not None:
                    inner_block = slot.pop(BLOCK, None)
                    if inner_block is not None:
                        # The Exchange of an inner copy of the scope handed over a block: back
                        # to fields, so that this one's hooks see them as the app's own.
                        if not is_rendered_block(inner_block):
                            raise RuntimeError("Invalid prepared header block.")
                        headers += _block_fields(inner_block)
                self.block, self.block_names = b"", _NO_NAMES
                # Hooks add no Vary field (they record tokens in `vary`), so only the app's
                # own fields need looking at when merging.
                app_fields = len(headers)
                hooks = self.hooks
                for index in range(len(hooks) - 1, -1, -1):
                    hooks[index](self, headers)
                headers += self.headers
                if self.vary:
                    merge_vary(headers, self.vary, app_fields)
                message["headers"] = headers
                if self.block and slot is not None:
                    slot[BLOCK] = self.block
        return self.upstream(message)


def watch(scope: Scope, send: Send) -> tuple[Exchange, Send]:
    """The request's Exchange and the `send` to pass inward (wrapped only by the first caller)."""
    exchange: Exchange | None = scope.get(EXCHANGE_KEY)
    # `scope` itself, not a copy made from it (a copied scope carries the key too): a copy is
    # another request, or the same one dispatched again, and gets an Exchange of its own.
    if exchange is not None and exchange.scope is scope:
        return exchange, send
    exchange = scope[EXCHANGE_KEY] = Exchange(scope, send)
    return exchange, exchange.send


# Joined token lists seen before: a handful of combinations in practice, bounded anyway.
_JOINED: dict[tuple[bytes, ...], bytes] = {}


def merge_vary(headers: RawHeaders, tokens: list[bytes], within: int | None = None) -> None:
    """Add each of `tokens` to the response's `Vary`, once, into a single field.

    `within`: only the first `within` fields can be a Vary (the rest were added by layers
    that never add one), which saves scanning every security header.
    """
    found = [
        index
        for index, (name, _) in enumerate(headers[:within] if within is not None else headers)
        if name.lower() == _VARY
    ]
    if not found:
        key = tuple(tokens)
        value = _JOINED.get(key)
        if value is None:
            value = b", ".join(dict.fromkeys(tokens))
            if len(_JOINED) < 64:
                _JOINED[key] = value
        headers.append((_VARY, value))
        return
    values = [headers[index][1] for index in found]
    present = {token.strip().lower() for value in values for token in value.split(b",")}
    if b"*" in present:
        return
    added = [t for t in dict.fromkeys(tokens) if t.lower() not in present]
    if not added and len(found) == 1:
        return
    merged = b", ".join([value for value in values if value.strip()] + added)
    for index in reversed(found[1:]):
        del headers[index]
    headers[found[0]] = (_VARY, merged)
