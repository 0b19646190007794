"""Which webhook URLs pyglue may call: http(s) only, and by default no address inside the
network it runs in (loopback, private, link-local and the cloud metadata service, shared,
multicast, reserved; IPv6 equivalents and IPv4-mapped forms included).

The check runs on the URL and on every address its host resolves to when an endpoint is
added, and again at each connection (GuardedBackend): the delivery connects to the very
address it checked, so a name that resolves elsewhere between check and connect (DNS
rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import httpcore

from pyglue.errors import PyglueError

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address of host (A and AAAA), as strings."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def refused_address(address: str) -> bool:
    """True for any address that is not globally routable (or is IPv4-mapped/NAT64 of one)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return True  # ::ffff:a.b.c.d reaches IPv4 a.b.c.d; never needed for a public endpoint
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            return True
    return not ip.is_global or ip.is_multicast


def split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; PyglueError for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PyglueError(f"invalid webhook URL {describe(url)!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise PyglueError(f"invalid webhook URL {describe(url)!r}: only http:// and https:// URLs with a host"
                          " are accepted")
    return parts.scheme, unquote(parts.hostname), port or (443 if parts.scheme == "https" else 80)


def check(url: str, allow_private: bool = False, resolver: Resolver = resolve) -> None:
    """Refuse a URL pyglue must not call (PyglueError naming the host, never the whole URL)."""
    _, host, port = split(url)
    if allow_private:
        return
    try:
        addresses = resolver(host, port)
    except OSError as exc:
        raise PyglueError(f"webhook URL host {host} does not resolve: {exc}") from None
    bad = [a for a in addresses if refused_address(a)]
    if bad or not addresses:
        raise PyglueError(f"webhook URL host {host} resolves to {bad[0] if bad else 'nothing'}: a loopback, private,"
                          " link-local or metadata address is refused (--allow-private permits it)")


def describe(url: str) -> str:
    """The URL without user:password@, query or fragment (for messages and logs)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return f"{parts.scheme}://{netloc}{parts.path}"
    except ValueError:
        return "(unparseable URL)"


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses that pass refused_address."""

    def __init__(self, resolver: Resolver = resolve):
        self.resolver = resolver

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = self.resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from None
        allowed = [a for a in addresses if not refused_address(a)]
        if not allowed:
            raise httpcore.ConnectError(f"{host} resolves to {addresses[0] if addresses else 'nothing'}: a loopback,"
                                        " private, link-local or metadata address; refused")
        last: Exception | None = None
        for address in allowed:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last
