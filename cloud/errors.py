"""The documented exceptions of ``cloud``. Each carries the HTTP status the service answers with;
the translation to HTTP happens only in ``bentos/`` (the boundary)."""

from __future__ import annotations


class CloudError(Exception):
    """Base class; ``status`` is the HTTP status code of this kind of failure."""

    status = 500


class BadRequest(CloudError):
    """Corrupt, empty or non-audio upload; a clip whose bytes do not match its sha256."""

    status = 400


class Unauthorized(CloudError):
    """A missing or wrong device / admin token."""

    status = 401


class Forbidden(CloudError):
    """A device acting on another device's data (its tour, detection, clip or feedback UUID)."""

    status = 403


class NotFound(CloudError):
    status = 404


class Conflict(CloudError):
    status = 409


class DeviceExists(Conflict, ValueError):
    """``add_device`` with a name that is taken."""


class UserExists(Conflict, ValueError):
    """``add_user`` with a name that is taken (console users)."""


class PayloadTooLarge(CloudError):
    status = 413


class UnsupportedMediaType(CloudError):
    status = 415


class Unprocessable(CloudError):
    """Malformed JSON or a payload that does not follow the wire schema."""

    status = 422


class NotReady(CloudError):
    """No model could be loaded (the message says why)."""

    status = 503


class StoreError(CloudError):
    """The store cannot be opened or used: an unsupported database URL, a server that does not
    answer, migrations not applied (the message says which, never the password)."""

    status = 503


class TooManyRequests(CloudError):
    """Too many requests with a wrong token from one client address: wait ``retry_after`` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SigningError(CloudError):
    """The release signing key cannot be created, read or used (the message says which file)."""

    status = 500
