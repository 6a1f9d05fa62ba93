"""Who may talk to the server: where it may listen, TLS and mutual TLS, bearer tokens.

Defaults are safe: plaintext is served only on a loopback address; anything else needs TLS, or
`insecure=True` said out loud. With a token file every RPC except health checks needs
`authorization: Bearer <token>` metadata (reflection too); tokens are compared in constant time
and never logged, echoed in errors or reported by GetServerInfo.

Token file: one token per line, optionally preceded by a name (`alice 3f9a...`); blank lines and
lines starting with `#` are ignored. Tokens must be at least MIN_TOKEN_LENGTH characters.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tuneyard.common.addresses import is_loopback  # one notion of "local" for client and server

log = logging.getLogger(__name__)
MIN_TOKEN_LENGTH = 16
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # load balancers and probes check health without a token
BEARER = "bearer "


class SecurityConfigError(ValueError):
    """The server's security settings are unusable; raised before any socket is bound."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            chain, key = Path(self.cert).read_bytes(), Path(self.key).read_bytes()
            ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        except OSError as exc:
            raise SecurityConfigError(f"cannot read a TLS file: {exc.strerror}: {exc.filename}") from None
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def check_bind(host: str, tls: TlsFiles | None, insecure: bool) -> None:
    """Refuses plaintext on a non-loopback address unless `insecure`; warns loudly when it is."""
    if tls is not None or is_loopback(host):
        return
    if not insecure:
        raise SecurityConfigError(
            f"refusing to serve plaintext on {host}: give --tls-cert and --tls-key, bind 127.0.0.1, or pass "
            "--insecure to accept unencrypted traffic from the network"
        )
    log.warning("INSECURE: serving plaintext on %s: anyone on the network can read and forge every request", host)


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes


def load_tokens(path: Path) -> list[Token]:
    """Reads a token file (see the module docstring); errors name the line, never the token."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the token file: {exc.strerror}: {exc.filename}") from None
    tokens: list[Token] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise SecurityConfigError(f"{path}:{number}: expected 'TOKEN' or 'NAME TOKEN'")
        name, secret = (fields[0], fields[1]) if len(fields) == 2 else (f"token-{number}", fields[0])
        if len(secret) < MIN_TOKEN_LENGTH:
            raise SecurityConfigError(f"{path}:{number}: the token is shorter than {MIN_TOKEN_LENGTH} characters")
        tokens.append(Token(name, secret.encode()))
    if not tokens:
        raise SecurityConfigError(f"{path}: no tokens in the token file")
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise SecurityConfigError(f"{path}: a token name appears twice")
    return tokens


class Authenticator:
    """Maps a call's metadata to the name of its token; None when it carries no valid one."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._tokens = list(tokens)

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        presented = _bearer(metadata)
        if presented is None:
            return None
        found = None
        for token in self._tokens:  # no early exit: the time taken does not depend on which matched
            if hmac.compare_digest(presented, token.secret):
                found = token.name
        return found


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip().encode()
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Lets a call through only with a valid bearer token; health checks are always open."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        if details.method.startswith(OPEN_METHODS):
            return continuation(details)
        metadata = details.invocation_metadata
        if self._auth.identify(metadata) is not None:
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED as usual
        why = "invalid bearer token" if _bearer(metadata) is not None else "missing bearer token"
        return _refusing(handler, f"{why}: send 'authorization: Bearer <token>' metadata")


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED without reading the request."""

    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def refuse_stream(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)
