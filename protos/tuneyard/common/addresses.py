"""What counts as "this machine": one answer for the client (may a token go out in plaintext?) and
the server (may it listen in plaintext?)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(address: str) -> bool:
    """True when ``address`` (``host:port``, ``[::1]:port``, ``dns:///host:port``, ``unix:...``) is local."""
    target = address
    if target.startswith("unix:"):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    if target.startswith("["):
        host = target[1:].partition("]")[0]
    elif target.count(":") == 1:
        host = target.partition(":")[0]
    else:
        host = target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
