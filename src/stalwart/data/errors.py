"""Failures of the database that the API reports as 503, not 500."""

from __future__ import annotations

import sqlalchemy.exc

__all__ = ["UNAVAILABLE_ERRORS", "DatabaseUnavailable", "DependencyUnavailable"]


class DatabaseUnavailable(Exception):
    """The database cannot serve the request now (down, or the pool is exhausted)."""


class DependencyUnavailable(Exception):
    """Another dependency a request needs (Redis holding the job locks) cannot serve it now."""


# Connection refused, pool exhausted, server gone: retryable, the client should back off.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    DependencyUnavailable,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)
