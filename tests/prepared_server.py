"""A stand-in for `stalwart serve` in ASGI tests: takes prepared fields, writes them as fields.

httpx's ASGI transport advertises no `stalwart.prepared_fields`, so tests through it see the
policy's fields as header tuples. Wrapping the app in `taking_prepared_fields` gives each
request the extension dict, as `stalwart serve` does; a block the app leaves there is checked
as the server checks it and comes back as fields at the end of the head, where the server
writes them, so the same assertions hold.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.exchange import BLOCK, PREPARED_FIELDS, is_rendered_block

__all__ = ["taking_prepared_fields"]


def taking_prepared_fields(app: ASGIApp, blocks: list[bytes] | None = None) -> ASGIApp:
    """`app` under a server that advertises PREPARED_FIELDS; each block written goes to `blocks`."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        slot: dict[str, object] = {}
        scope = {**scope, "extensions": {**scope.get("extensions", {}), PREPARED_FIELDS: slot}}

        async def write(message: Message) -> None:
            block = slot.get(BLOCK) if message["type"] == "http.response.start" else None
            if block is not None:
                assert is_rendered_block(block), block  # what the server would refuse
                if blocks is not None:
                    blocks.append(block)
                fields = [tuple(line.split(b": ", 1)) for line in block.split(b"\r\n")[:-1]]
                message["headers"] = [*message.get("headers", ()), *fields]
            await send(message)

        await app(scope, receive, write)

    return server
