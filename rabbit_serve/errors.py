"""Errors that carry the HTTP status a client should see."""

from __future__ import annotations


class ClientError(Exception):
    """Something wrong with what the client sent; ``status`` is a 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ServiceUnavailable(Exception):
    """The service cannot take the request now (broker down, publish not confirmed)."""
