"""The caller's address, correct behind reverse proxies and never taken blindly from a header.

``X-Forwarded-For`` is written by whoever sent the request, so only the hops appended by our own
proxies (GATEWAY_TRUSTED_PROXIES, CIDRs) can be believed. Walking the header from the right, each
address a trusted proxy appended is skipped; the first one not in the trusted list is the client.
A request whose direct peer is not a trusted proxy is that peer, whatever headers it carries.

Entry points call one of:
- ``client_ip_for_request(request)`` — Django/DRF views (webhooks, the messages API);
- ``client_ip_for_scope(scope)`` — ASGI scopes (the web chat websocket).
Do not enable Daphne's ``--proxy-headers``: it trusts the header from anyone.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip_for_request(request) -> str | None:
    meta = request.META
    return resolve_client_ip(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"))


def client_ip_for_scope(scope) -> str | None:
    peer = (scope.get("client") or [None])[0]
    forwarded = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-forwarded-for"]
    return resolve_client_ip(peer, ",".join(forwarded) or None)


def resolve_client_ip(peer: str | None, forwarded_for: str | None) -> str | None:
    """The client address given the direct peer and the X-Forwarded-For header (if any)."""
    address = parse_ip(peer)
    if address is None:
        return None
    if not forwarded_for or not is_trusted_proxy(address):
        return str(address)
    for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
        hop_address = parse_ip(hop)
        if hop_address is None:
            # Only the client can have written garbage; the last good hop is the best we know.
            return str(address)
        address = hop_address
        if not is_trusted_proxy(address):
            return str(address)
    return str(address)


def parse_ip(value: str | None) -> IPAddress | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]:80``; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted_proxy(address: IPAddress) -> bool:
    return any(address in network for network in _trusted_networks(tuple(settings.GATEWAY_TRUSTED_PROXIES)))


@lru_cache(maxsize=8)
def _trusted_networks(cidrs: tuple[str, ...]):
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())
