"""uvicorn's httptools protocol as `stalwart serve` runs it.

On top of the prepared fields (prepared_fields.py): a request that is not valid HTTP (a
malformed request line, `Content-Length: abc`, a body longer than its length) never reaches
the app, and uvicorn answers it itself with `text/plain` "Invalid HTTP request received.".
Here that answer is the policy's: an RFC 9457 problem with a request id, the security fields
that matter for an error document, HSTS where the headers policy would send it (over TLS; over
plain HTTP too outside production), and `Connection: close`, as uvicorn closes the connection.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from uvicorn.config import Config

from stalwart.policies.exchange import render_fields
from stalwart.prepared_fields import PreparedFieldsProtocol

RawFields = tuple[tuple[bytes, bytes], ...]

__all__ = ["StalwartConfig", "StalwartProtocol"]

logger = logging.getLogger("stalwart.server")


# What every answer to a malformed request carries besides its length, id and security fields.
_FIXED_FIELDS = (
    b"content-type: application/problem+json\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n"
)


@cache
def _default_security_fields() -> tuple[bytes, bytes]:
    """The headers policy's defaults, for a plain uvicorn Config.

    Imported on first use: each worker imports this module (through stalwart.server) before
    it answers the supervisor's first health check, and the policy modules bring pydantic.
    """
    from stalwart.policies.headers import error_document_fields

    return _render(error_document_fields())


def _render(fields: tuple[RawFields, RawFields]) -> tuple[bytes, bytes]:
    http, https = render_fields(fields[0]), render_fields(fields[1])
    # Every field of the headers policy passes (parse_header_overrides refuses the rest).
    assert http is not None
    assert https is not None
    return http, https


class StalwartConfig(Config):
    """uvicorn's Config plus the security fields of the protocol's own answers.

    uvicorn builds the protocol with only the config, and the config is what reaches each
    worker process, so the fields travel here rather than in a global. `security_fields`: what
    the app's headers policy sends on an error document over HTTP and over HTTPS
    (`policies.headers.error_document_fields`), overrides and HSTS included.
    """

    def __init__(
        self,
        app: Any,
        *,
        security_fields: tuple[RawFields, RawFields] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.security_fields = None if security_fields is None else _render(security_fields)


class StalwartProtocol(PreparedFieldsProtocol):
    """PreparedFieldsProtocol whose answer to a malformed request is a problem+json 400."""

    def send_400_response(self, msg: str) -> None:
        import orjson

        from stalwart.policies.problem import problem_body
        from stalwart.policies.request_log import new_request_id

        request_id = new_request_id()
        # uvicorn has logged "Invalid HTTP request received."; this line ties it to the answer.
        logger.warning(
            "malformed request answered with 400",
            extra={"request.id": request_id, "http.response.status_code": 400},
        )
        body = orjson.dumps(
            problem_body(
                400,
                title="Bad Request",
                detail="The request is not valid HTTP/1.1.",
                request_id=request_id,
            )
        )
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:  # Date, as uvicorn sends it
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"content-length: %d\r\nx-request-id: %s\r\n" % (len(body), request_id.encode()))
        head.append(_FIXED_FIELDS)
        config = self.config
        fields = (
            config.security_fields
            if isinstance(config, StalwartConfig) and config.security_fields is not None
            else _default_security_fields()
        )
        head.append(fields[self.scheme == "https"])
        self.transport.write(b"".join((*head, b"\r\n", body)))
        self.transport.close()
