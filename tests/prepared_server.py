"""A stand-in for `stalwart serve` in ASGI tests: takes prepared fields, writes them as fields.

httpx's ASGI transport advertises no `stalwart.prepared_fields`, so tests through it see the
policy's fields as header tuples. Wrapping the app in `taking_prepared_fields` makes the policy
layer hand them over as a block, as under `stalwart serve`; the block's lines come back as
fields at the end of the head, where the server writes them, so the same assertions hold.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.exchange import PREPARED_FIELDS

__all__ = ["taking_prepared_fields"]


def taking_prepared_fields(app: ASGIApp, blocks: list[bytes] | None = None) -> ASGIApp:
    """`app` under a server that advertises PREPARED_FIELDS; each block seen goes to `blocks`."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        scope = {**scope, "extensions": {**scope.get("extensions", {}), PREPARED_FIELDS: {}}}

        async def write(message: Message) -> None:
            block = message.pop(PREPARED_FIELDS, None)
            if block is not None:
                assert message["type"] == "http.response.start"
                if blocks is not None:
                    blocks.append(block)
                lines = block.split(b"\r\n")
                assert lines[-1] == b""
                fields = [tuple(line.split(b": ", 1)) for line in lines[:-1]]
                assert all(len(field) == 2 for field in fields)
                message["headers"] = [*message.get("headers", ()), *fields]
            await send(message)

        await app(scope, receive, write)

    return server
