"""How the client reaches a server: plaintext or TLS (mutual TLS with a client certificate), and a
bearer token sent with every call.

TLS material is given either as a path to a PEM file (``str`` or ``os.PathLike``) or as the PEM
contents themselves (``bytes``). The token travels as ``authorization: Bearer <token>`` metadata,
added by one client interceptor to every call -- unary ones, the ``WatchStudy`` stream and each of
its reconnects -- over TLS and plaintext alike (a plaintext loopback server can require a token too).
The token is kept only inside that interceptor: it is never part of a ``repr``, an error or a log.
"""

from __future__ import annotations

import os
import warnings
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from tuneyard.client.errors import TuneyardError
from tuneyard.common.addresses import is_loopback  # re-exported: part of this module's API

__all__ = [
    "InsecureTokenWarning",
    "PemSource",
    "TOKEN_ENV",
    "channel_credentials",
    "is_loopback",
    "open_channel",
    "resolve_token",
]

PemSource = str | os.PathLike[str] | bytes
TOKEN_ENV = "TUNEYARD_TOKEN"


class InsecureTokenWarning(UserWarning):
    """A bearer token is about to be sent unencrypted over the network."""


def _read_pem(value: PemSource, what: str) -> bytes:
    """PEM bytes from bytes (as they are) or from the file a path names; errors name ``what``."""
    if isinstance(value, bytes):
        data = value
    else:
        try:
            data = Path(value).expanduser().read_bytes()
        except OSError as exc:
            raise TuneyardError(
                grpc.StatusCode.INVALID_ARGUMENT, f"cannot read {what} file {exc.filename}: {exc.strerror}"
            ) from None
    if b"-----BEGIN " not in data:
        source = "the bytes given" if isinstance(value, bytes) else str(value)
        raise TuneyardError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {source} is not PEM ('-----BEGIN ...')")
    return data


def channel_credentials(
    *,
    tls: bool = False,
    tls_ca: PemSource | None = None,
    tls_cert: PemSource | None = None,
    tls_key: PemSource | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when ``tls``, ``tls_ca`` or ``tls_cert`` asks for TLS, else None (plaintext).

    ``tls_ca`` is the CA that signed the server's certificate (default: the system's trusted CAs);
    ``tls_cert`` and ``tls_key`` are the client's own certificate chain and key, for mutual TLS.
    """
    if bool(tls_cert) != bool(tls_key):
        raise TuneyardError(
            grpc.StatusCode.INVALID_ARGUMENT, "tls_cert and tls_key go together (the client certificate and its key)"
        )
    if not (tls or tls_ca or tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls_ca, "tls_ca") if tls_ca else None,
        private_key=_read_pem(tls_key, "tls_key") if tls_key else None,
        certificate_chain=_read_pem(tls_cert, "tls_cert") if tls_cert else None,
    )


def resolve_token(token: str | None) -> str | None:
    """The token to send: ``token``, or ``$TUNEYARD_TOKEN`` when it is None; "" means none."""
    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    token = token.strip()
    if not token:
        return None
    if not all("\x21" <= ch <= "\x7e" for ch in token):  # the message must not quote the token
        raise TuneyardError(
            grpc.StatusCode.INVALID_ARGUMENT, "the bearer token may only hold printable ASCII without spaces"
        )
    return token


def open_channel(address: str, credentials: grpc.ChannelCredentials | None, token: str | None) -> grpc.Channel:
    """A channel to ``address`` (TLS with ``credentials``, else plaintext) sending ``token`` on every call.

    A token sent in plaintext to a non-loopback address is allowed (a server started with
    ``--insecure`` may want one) but warned about: anyone on the path can read it.
    """
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
        if token is not None and not is_loopback(address):
            warnings.warn(
                f"sending the bearer token UNENCRYPTED to {address}: use TLS (tls_ca / --tls-ca) off this machine",
                InsecureTokenWarning,
                stacklevel=3,
            )
    if token is None:
        return channel
    return grpc.intercept_channel(channel, _BearerToken(token))


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call's metadata (replacing any given)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerToken(<hidden>)"

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [item for item in details.metadata or () if item[0].lower() != "authorization"]
        metadata.append(self._header)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)
