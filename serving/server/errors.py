"""OpenAI's error answer: an HTTP status and `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI answers errors with."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None) -> dict:
    """`{"error": {...}}` with every key present (OpenAI's clients read them all)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request's own fault."""
    return APIError(400, message, INVALID_REQUEST, param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """404: no such object (OpenAI answers unknown ids and models with invalid_request_error)."""
    return APIError(404, message, INVALID_REQUEST, param, code)


def server_error(message: str, code: str | None = None) -> APIError:
    """500: the server's fault."""
    return APIError(500, message, SERVER_ERROR, None, code)
