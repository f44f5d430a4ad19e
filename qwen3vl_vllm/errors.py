"""Typed errors shared by the offline API, the client and the reference.

Every message names the offending item and says what to do, e.g.::

    inputs[3].image: cannot decode image bytes (cannot identify image file). Send a PNG, JPEG,
    WebP or GIF file, path, URL or PIL image.
"""

from __future__ import annotations


class Qwen3VLError(Exception):
    """Base class of every error raised by qwen3vl_vllm."""


class InputError(Qwen3VLError, ValueError):
    """An input item is malformed. ``where`` names it (e.g. ``inputs[3].image``)."""

    def __init__(self, where: str, problem: str, fix: str = ""):
        self.where = where
        self.problem = problem
        self.fix = fix
        msg = f"{where}: {problem}"
        if fix:
            msg += f". {fix}"
        super().__init__(msg)


class MediaError(InputError):
    """An image or video could not be loaded, decoded or resized."""


class JobError(Qwen3VLError):
    """An index job cannot start or resume: what is wrong and what to do."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. {fix}" if fix else problem)


# ---- client-side errors, mapped from HTTP status ---------------------------------------------


class APIError(Qwen3VLError):
    """The server answered with an error. ``status`` is the HTTP status (None: no answer)."""

    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, body: object = None):
        super().__init__(message)
        self.status = status if status is not None else type(self).status
        self.body = body


class BadRequestError(APIError, ValueError):
    status = 400


class AuthenticationError(APIError):
    status = 401


class PermissionDeniedError(APIError):
    status = 403


class NotFoundError(APIError):
    status = 404


class RequestTooLargeError(APIError, ValueError):
    status = 413


class UnprocessableEntityError(APIError, ValueError):
    status = 422


class RateLimitError(APIError):
    status = 429


class ServerError(APIError):
    status = 500


class ServiceUnavailableError(ServerError):
    status = 503


class APIConnectionError(APIError):
    """No answer: the server is unreachable or went away (after the configured retries)."""


class APITimeoutError(APIConnectionError):
    """No answer within the client timeout."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_for_status(status: int, message: str, body: object = None) -> APIError:
    """The typed error for an HTTP status (``ServerError`` for any other 5xx)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(message, status=status, body=body)
