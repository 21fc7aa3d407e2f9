"""The appliance's error tree: every failure a client can see, with its OpenAI envelope fields.

Each class fixes the HTTP status and the OpenAI ``type``/``code`` the official SDKs map to
their own exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
413, 429 RateLimitError, 500 InternalServerError, 503). The api turns any of these into
``{"error": {"message", "type", "param", "code"}}``; engines and config raise them without
knowing about HTTP.

    ApplianceError
    ├── InvalidRequest (400)
    │   └── ContextLengthExceeded (400, code context_length_exceeded)
    ├── AuthenticationFailed (401)
    ├── PermissionDenied (403)
    ├── NotFound (404)
    │   └── ModelNotFound (404, code model_not_found, param model)
    ├── MethodNotAllowed (405)
    ├── PayloadTooLarge (413)
    ├── RateLimited (429, transient: the response says when to retry)
    ├── InsufficientQuota (429, permanent: monthly quota or budget spent)
    ├── EngineFailure (500)
    ├── ServiceUnavailable (503)
    └── ConfigError (not an HTTP error: bad models.toml, the process exits)
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    status: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ApplianceError):
    status = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class AuthenticationFailed(ApplianceError):
    status = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFound(ApplianceError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = "model"):
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param=param
        )


class MethodNotAllowed(ApplianceError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(ApplianceError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class PermissionDenied(ApplianceError):
    status = 403
    error_type = "invalid_request_error"
    default_code = "insufficient_permissions"


class RateLimited(ApplianceError):
    """OpenAI's request-rate 429: type "requests", code rate_limit_exceeded."""

    status = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class InsufficientQuota(ApplianceError):
    """OpenAI's permanent 429 (type and code insufficient_quota): retrying cannot help."""

    status = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class EngineFailure(ApplianceError):
    status = 500
    error_type = "server_error"
    default_code = "engine_error"


class InternalError(ApplianceError):
    """A failure outside any engine (a bug, logged with its traceback): not ``engine_error``,
    which says a model failed the request."""

    status = 500
    error_type = "server_error"
    default_code = "internal_error"


class ServiceUnavailable(ApplianceError):
    status = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class Overloaded(ServiceUnavailable):
    """A model's queue is full: a 503 with retry-after, which the SDKs retry."""

    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(ApplianceError):
    """models.toml is wrong; the message names the file, the model and the key."""
