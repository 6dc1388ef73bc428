"""Errors of the MetaStudio source, each one user-facing sentence: the cause and the fix.

``str(error)`` is safe to show anywhere: it never carries a credential (texts
pass through :func:`pipelines.redact.redact`, and no URL is quoted whole, only
its host). ``.status`` is the HTTP status when the server answered,
``.error_code`` the server's error code when it sent one.
"""

from __future__ import annotations

from pipelines.redact import redact


class MetaStudioError(Exception):
    """Base of every error the MetaStudio client raises."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str | None = None) -> None:
        self.message = redact(message)
        self.status = status
        self.error_code = error_code
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ConfigurationError(MetaStudioError):
    """The settings cannot work (missing or malformed values, an endpoint that is not the API)."""


class AuthenticationError(MetaStudioError):
    """The server refused the credentials (401) or the permission (403)."""

    # Which fix a refusal points to; the message names the environment variable to check.
    SIGNATURE = "signature"
    TOKEN = "token"
    PERMISSION = "permission"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        reason: str = "permission",
    ) -> None:
        super().__init__(message, status=status, error_code=error_code)
        self.reason = reason

    @classmethod
    def from_response(
        cls, status: int, error_code: str | None, error_msg: str | None, *, token_auth: bool
    ) -> AuthenticationError:
        """Classify a 401/403 by what the server said and which credentials were sent."""
        text = f"{error_code or ''} {error_msg or ''}".lower()
        said = _server_said(error_code, error_msg)
        if status == 403 or "project" in text or "permission" in text or "not authorized" in text:
            reason = cls.PERMISSION
            message = (
                f"MetaStudio refused access to the project (HTTP {status}{said}); "
                "check HUAWEICLOUD_SDK_PROJECT_ID and that the credentials may read MetaStudio in that project."
            )
        elif token_auth:
            reason = cls.TOKEN
            message = (
                f"MetaStudio rejected the IAM token as invalid or expired (HTTP {status}{said}); "
                "get a new IAM token into METASTUDIO_AUTH_TOKEN."
            )
        elif "security token" in text or "security_token" in text or "token" in text:
            # With AK/SK the only token is the one of temporary credentials.
            reason = cls.SIGNATURE
            message = (
                f"MetaStudio rejected the temporary credentials' security token (HTTP {status}{said}); "
                "get a fresh HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK/HUAWEICLOUD_SDK_SECURITY_TOKEN set."
            )
        elif "x-sdk-date" in text or "expired" in text or "skew" in text:
            reason = cls.SIGNATURE
            message = (
                f"MetaStudio rejected the request time of the signature (HTTP {status}{said}); "
                "set the local clock right (within minutes of UTC), then check HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK."
            )
        else:
            reason = cls.SIGNATURE
            message = (
                f"MetaStudio rejected the request signature (HTTP {status}{said}); "
                "check HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK (and HUAWEICLOUD_SDK_SECURITY_TOKEN for "
                "temporary keys)."
            )
        return cls(message, status=status, error_code=error_code, reason=reason)


class BadRequestError(MetaStudioError):
    """The server rejected a parameter (400)."""

    def __init__(self, error_code: str | None, error_msg: str | None, *, status: int = 400) -> None:
        self.error_msg = error_msg
        super().__init__(
            f"MetaStudio rejected the request as invalid (HTTP {status}{_server_said(error_code, error_msg)}); "
            "fix the named parameter (filters, time window or page size) and run again.",
            status=status,
            error_code=error_code,
        )


class RetriesExhaustedError(MetaStudioError):
    """A request kept failing with retryable causes until the attempt or time budget ran out."""

    def __init__(
        self,
        cause: str,
        attempts: int,
        elapsed: float,
        *,
        status: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.cause = cause
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(
            f"MetaStudio kept failing ({cause}) after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"over {elapsed:.1f} s; run again later, or raise VOICEJOBS_MAX_ATTEMPTS/"
            "VOICEJOBS_MAX_RETRY_SECONDS or lower VOICEJOBS_MAX_IN_FLIGHT/VOICEJOBS_MAX_RPS if it is throttling.",
            status=status,
            error_code=error_code,
        )


class EndpointUnreachableError(MetaStudioError):
    """No connection could be made to the endpoint: refused after every attempt, or a name that does not resolve."""

    def __init__(self, host: str, detail: str, attempts: int) -> None:
        self.host = host
        self.attempts = attempts
        super().__init__(
            f"Cannot reach the MetaStudio endpoint at host {host!r} ({detail}) after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}; check METASTUDIO_ENDPOINT or METASTUDIO_REGION "
            "and the network path to it."
        )


class ResponseTooLargeError(MetaStudioError):
    """A response body passed the client's size cap; it was abandoned at the cap, not read whole."""

    def __init__(self, host: str, size: int, cap: int, *, declared: bool = False, status: int | None = None) -> None:
        self.host = host
        self.size = size
        self.cap = cap
        if declared:
            what = f"announced a response of {size:,} bytes, over the cap of {cap:,} bytes"
        else:
            what = f"sent a response larger than the cap of {cap:,} bytes (reading stopped at {size:,} bytes)"
        super().__init__(
            f"The MetaStudio endpoint at host {host!r} {what}; raise VOICEJOBS_MAX_RESPONSE_BYTES if the "
            "source really sends such pages, otherwise check METASTUDIO_ENDPOINT points at the MetaStudio API.",
            status=status,
        )


class CertificateError(MetaStudioError):
    """The TLS handshake with the endpoint failed: its certificate could not be verified (or TLS broke)."""

    def __init__(self, host: str, reason: str, *, verification: bool = True) -> None:
        self.host = host
        self.reason = reason
        what = "the TLS certificate could not be verified" if verification else "the TLS handshake failed"
        super().__init__(
            f"Cannot connect securely to the MetaStudio endpoint at host {host!r}: {what}: {reason}; "
            "check the endpoint or the machine's CA certificates."
        )


def _server_said(error_code: str | None, error_msg: str | None) -> str:
    """``", server said CODE: message"`` for embedding in a sentence, or nothing."""
    parts = [p for p in (error_code, error_msg) if p]
    if not parts:
        return ""
    text = ": ".join(parts).replace("\n", " ").strip()
    if len(text) > 300:
        text = text[:297] + "..."
    return f", server said {text}"
