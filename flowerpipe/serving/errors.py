"""The one error a request can end in: an HTTP status and a message, answered as {"error": message}."""

from __future__ import annotations

import json


class RequestError(ValueError):
    """A request that cannot be answered: this HTTP status and {"error": message} (TF Serving's and KServe's shape)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def not_found(what: str) -> RequestError:
    """404 in TF Serving's words."""
    return RequestError(f"Servable not found for request: {what}", 404)


def json_object(body: bytes, what: str) -> dict:
    """A request body parsed as a JSON object, or a 400 naming what the object must hold."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(f"malformed JSON: {str(exc)[:200]}") from None
    if not isinstance(req, dict):
        raise RequestError(f"request body must be a JSON object with {what}")
    return req
