"""One redaction helper for every text that leaves the process: logs, errors, metadata.

Secrets are registered once, when settings are read, and every known value is
replaced wherever it appears. Credential-bearing parts of URLs (query strings
of pre-signed links, ``Signature=``/``Access=`` pairs, auth headers) are masked
by pattern, so even values never registered do not leak.
"""

from __future__ import annotations

import logging
import re
import threading

_lock = threading.Lock()
_secrets: set[str] = set()

_PATTERNS = [
    # Authorization: SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...
    (re.compile(r"(Access=)[^,\s]+"), r"\1***"),
    (re.compile(r"(Signature=)[0-9A-Za-z%+/=._-]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"((?:X-Auth-Token|X-Security-Token|X-Subject-Token)\s*[:=]\s*)\S+", re.IGNORECASE), r"\1***"),
    # query strings of http(s) URLs may carry credentials (pre-signed object-storage links)
    (re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s#\"'<>]*"), r"\1?***"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` removes it from any text."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """``text`` as a string with every registered secret and credential pattern masked."""
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        out = out.replace(secret, "***")
    for pattern, repl in _PATTERNS:
        out = pattern.sub(repl, out)
    return out


class RedactingFilter(logging.Filter):
    """Logging filter that redacts the formatted message of every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are rendered from exc_info; replace it with its redacted text.
            record.msg = f"{record.msg}\n{redact(logging.Formatter().formatException(record.exc_info))}"
            record.exc_info = None
            record.exc_text = None
        return True


def install_log_redaction(logger_names: tuple[str, ...] = ("", "voicejobs", "dagster", "httpx", "httpcore")) -> None:
    """Attach the redacting filter to the named loggers and their handlers."""
    flt = RedactingFilter()
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(flt)
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(flt)
