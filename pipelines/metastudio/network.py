"""Why a connection to the MetaStudio endpoint failed, and which hosts keep plain http local.

A TLS failure that is a verdict on the certificate ends the request (:class:`CertificateError`);
a name that does not resolve is retried no more; a refused connection or a temporary resolver
failure is retried like any broken connection.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

import httpx

from pipelines.metastudio.errors import CertificateError
from pipelines.metastudio.retry import Retryable

_LOOPBACK_NAMES = ("localhost", "localhost.")
#: TLS errors that are a connection dropped mid-handshake, not a verdict on the certificate.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError,
                  ssl.SSLWantWriteError)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the only hosts where plain http keeps credentials on the machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def connect_failure(exc: httpx.ConnectError, host: str) -> Retryable:
    """A failed connection as a retry cause; a TLS failure raises at once (no retry mends a certificate)."""
    tls = tls_failure(exc)
    if tls is not None:
        reason, verification = tls
        raise CertificateError(host, reason, verification=verification) from None
    detail, final = connect_detail(exc)
    return Retryable("connection", detail, unreachable=True, final=final)


def exception_chain(exc: BaseException, limit: int = 10) -> list[BaseException]:
    """The exception and its causes (async transports wrap the OS error a few levels down)."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and len(chain) < limit and node not in chain:
        chain.append(node)
        node = node.__cause__ or node.__context__
    return chain


def tls_failure(exc: BaseException) -> tuple[str, bool] | None:
    """``(reason, is_certificate_verification)`` when the handshake failed for good, else None."""
    for node in exception_chain(exc):
        if isinstance(node, ssl.SSLCertVerificationError):
            reason = node.verify_message or node.reason or str(node)
            return _one_line(str(reason)), True
        if isinstance(node, ssl.SSLError) and not isinstance(node, _TLS_TRANSIENT):
            return _one_line(str(node.reason or node.strerror or node)), False
    return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def connect_detail(exc: BaseException) -> tuple[str, bool]:
    """Why a connection failed, and whether retrying is pointless (a name that does not resolve).

    A temporary resolver failure (EAI_AGAIN) is retried like a refused connection: the name may
    well exist, the resolver did not answer.
    """
    texts = []
    for node in exception_chain(exc):
        if isinstance(node, ConnectionRefusedError):
            return "connection refused", False
        if isinstance(node, socket.gaierror):
            if node.errno == socket.EAI_AGAIN:
                return "the host name could not be resolved just now (temporary DNS failure)", False
            return "the host name does not resolve", True
        texts.append(str(node).lower())
    text = " ".join(texts)
    if "temporary failure in name resolution" in text:
        return "the host name could not be resolved just now (temporary DNS failure)", False
    if "name or service" in text or "nodename" in text or "getaddrinfo" in text or "name resolution" in text:
        return "the host name does not resolve", True
    if "refused" in text:
        return "connection refused", False
    return "connection failed", False
