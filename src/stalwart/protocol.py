"""uvicorn's httptools protocol as `stalwart serve` runs it.

On top of the prepared fields (prepared_fields.py): a request that is not valid HTTP (a
malformed request line, `Content-Length: abc`, a body longer than its length) never reaches
the app, and uvicorn answers it itself with `text/plain` "Invalid HTTP request received.".
Here that answer is the policy's: an RFC 9457 problem with a request id, the security fields
that matter for an error document, and `Connection: close`, as uvicorn closes the connection.
"""

from __future__ import annotations

import logging
from functools import cache

from stalwart.prepared_fields import PreparedFieldsProtocol

__all__ = ["StalwartProtocol"]

logger = logging.getLogger("stalwart.server")


@cache
def _fixed_fields() -> bytes:
    """What every answer to a malformed request carries besides its length and id.

    Imported on first use: each worker imports this module (through stalwart.server) before
    it answers the supervisor's first health check, and the policy modules bring pydantic.
    """
    from stalwart.policies.headers import JSON_CSP
    from stalwart.policies.problem import PROBLEM_CONTENT_TYPE

    return b"".join(
        b"%s: %s\r\n" % field
        for field in (
            (b"content-type", PROBLEM_CONTENT_TYPE),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", JSON_CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-resource-policy", b"same-origin"),
            (b"connection", b"close"),
        )
    )


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
        head.append(_fixed_fields())
        self.transport.write(b"".join((*head, b"\r\n", body)))
        self.transport.close()
