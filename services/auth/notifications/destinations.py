"""Where messages may go: the webhook URLs and e-mail addresses settings accept, and the DNS
guard that keeps webhooks off the server's own networks.

A webhook URL is the customer's, so without a guard it would let anyone make ReClo send
requests to its loopback, its private network or the cloud's metadata service (SSRF). The
URL is checked when it is saved, and every address its host resolves to is checked again
at each send (a name can be re-pointed after it was saved). IP literals never reach the
resolver, so they are checked before the request.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

SCHEMES = ("http", "https")
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
# RFC 5321: a local part has at most 64 octets.
LOCAL_PART_MAX = 64


class InvalidDestination(ValueError):
    pass


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def check_host(host: str, allow_private: bool) -> None:
    """Refuse a host that is a non-public IP literal or a loopback name."""
    if allow_private:
        return
    literal = _literal_ip(host)
    if literal is not None and not is_public(literal):
        raise InvalidDestination(
            "a webhook may not point at a loopback, private or link-local address")
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        raise InvalidDestination("a webhook may not point at localhost")


def webhook_url(raw: str, *, allow_private: bool) -> str:
    url = raw.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidDestination("a webhook URL may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError:
        raise InvalidDestination("the webhook URL is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise InvalidDestination("a webhook URL must start with http:// or https://")
    if not parts.hostname:
        raise InvalidDestination("the webhook URL has no host")
    if "@" in parts.netloc:
        # It would be stored and listed with every delivery; the signature authenticates.
        raise InvalidDestination("a webhook URL may not carry a user name or password; "
                                 "verify the X-Reclo-Signature header instead")
    check_host(parts.hostname, allow_private)
    return url


def email_address(raw: str) -> str:
    address = raw.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise InvalidDestination("an e-mail address looks like name@example.com")
    if len(local) > LOCAL_PART_MAX or not _DOT_ATOM.match(local):
        raise InvalidDestination("the part of the e-mail address before @ is not valid")
    if not _DOMAIN.match(domain):
        raise InvalidDestination(
            "the domain of the e-mail address is not valid (write an international domain "
            "in its xn-- form)")
    return address


class GuardedResolver(AbstractResolver):
    """DNS for webhooks: refuses a name that resolves to any non-public address, so a name
    pointed at 127.0.0.1 or 169.254.169.254 is never connected to."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for result in results:
                if not is_public(result["host"]):
                    raise OSError(f"{host} resolves to a non-public address, refused")
        return results

    async def close(self) -> None:
        await self._inner.close()
