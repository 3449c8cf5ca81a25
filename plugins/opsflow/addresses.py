"""Addresses a health check must never probe: link-local ones, where cloud metadata
services answer. Below every other layer: the stack model refuses them at load time and
the probes again after name resolution."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_NUMERIC_V4 = re.compile(r"[0-9a-fA-FxX.]+")


def literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a resolver takes literally, else ``None``.

    Besides dotted quads and IPv6 (with or without brackets and zone), C resolvers read
    ``2852039166``, ``0xa9fea9fe`` and ``169.254.43518`` as IPv4 addresses too.
    """
    text = host.strip().removeprefix("[").removesuffix("]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(text) and any(c.isdigit() for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def is_link_local(address: IPAddress) -> bool:
    """169.254.0.0/16 and fe80::/10, also written as an IPv4-mapped IPv6 address."""
    if address.is_link_local:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped is not None and mapped.is_link_local


LINK_LOCAL_REASON = (
    "is link-local (169.254.0.0/16 or fe80::/10, where cloud metadata services answer); "
    "health checks never probe such addresses"
)


def link_local_problem(host: str) -> str | None:
    """Why a literal ``host`` must not be probed, or ``None`` (names are checked when
    resolved, at check time)."""
    address = literal_ip(host)
    if address is not None and is_link_local(address):
        return f"{host} {LINK_LOCAL_REASON}"
    return None
