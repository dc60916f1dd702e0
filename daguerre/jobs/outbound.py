"""The one guarded HTTP client for every user-given URL (image inputs, webhookURL, uploadEndpoint).

Rules (SSRF): http/https only, no userinfo; the host is resolved once and *every* address is
checked: private, loopback, link-local (169.254.169.254), CGNAT (100.64/10), multicast,
reserved and unspecified addresses are refused, after unwrapping IPv4 that hides inside IPv6
(::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo). The connection then goes to
the checked address itself (Host header and TLS SNI keep the name), so a second DNS answer
cannot move it (no rebinding). Redirects are never followed automatically: callers allow
none (webhooks, uploads) or up to 3, each re-checked (image fetches). Connect timeout 3 s,
total 10 s, body size capped while streaming. Loopback is allowed only when the setting
says so (tests turn it on).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from daguerre.errors import RequestError

NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class OutboundError(RequestError):
    """A user-given URL is not allowed, or the request to it failed."""

    code = "invalidURL"


@dataclass(frozen=True)
class OutboundPolicy:
    allow_loopback: bool = False  # tests only: lets webhooks reach a local receiver
    connect_timeout: float = 3.0
    total_timeout: float = 10.0


@dataclass
class OutboundResponse:
    status: int
    headers: httpx.Headers
    body: bytes
    url: str


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or ip in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool) -> str | None:
    """Why an address may not be contacted, or None if it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = address_problem(inner, allow_loopback=allow_loopback)
            return f"{why} (inside {ip})" if why else None
        if ip.scope_id:
            return "a scoped IPv6 address"
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    for test, name in (
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
    ):
        if test:
            return name
    if not ip.is_global:
        return "a non-public address"  # CGNAT 100.64/10, benchmarking, documentation ranges...
    return None


class OutboundClient:
    """Makes one request to a user-given URL under the rules above."""

    def __init__(self, policy: OutboundPolicy | None = None):
        self.policy = policy or OutboundPolicy()

    def check_url(self, url: str, *, parameter: str) -> tuple[str, str, int, list[str]]:
        """(scheme, host, port, allowed addresses) for a URL, or OutboundError naming the parameter."""
        if not isinstance(url, str) or len(url) > 2048:
            raise OutboundError(f"{parameter} must be an http(s) URL of at most 2048 characters", parameter=parameter)
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https"):
            raise OutboundError(
                f"{parameter}: only http and https URLs are allowed, got {parts.scheme or 'none'!r}",
                parameter=parameter,
            )
        if "@" in parts.netloc or parts.username or parts.password:
            raise OutboundError(f"{parameter}: URLs with user info (user@host) are not allowed", parameter=parameter)
        host = parts.hostname
        if not host:
            raise OutboundError(f"{parameter}: URL has no host", parameter=parameter)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise OutboundError(f"{parameter}: invalid port in URL", parameter=parameter) from e
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise OutboundError(f"{parameter}: cannot resolve host {host!r}", parameter=parameter) from e
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            why = address_problem(ip, allow_loopback=self.policy.allow_loopback)
            if why:
                raise OutboundError(
                    f"{parameter}: host {host!r} resolves to {why}; only public addresses are allowed",
                    parameter=parameter,
                )
            addresses.append(str(ip))
        return parts.scheme, host, port, addresses

    def request(
        self,
        method: str,
        url: str,
        *,
        parameter: str,
        content: bytes | None = None,
        headers: dict | None = None,
        max_redirects: int = 0,
        max_bytes: int = 40 * 2**20,
    ) -> OutboundResponse:
        """Send a request; follows up to `max_redirects` redirects, re-checking each target."""
        deadline = time.monotonic() + self.policy.total_timeout
        for _ in range(max_redirects + 1):
            resp = self._once(
                method,
                url,
                parameter=parameter,
                content=content,
                headers=headers,
                max_bytes=max_bytes,
                deadline=deadline,
            )
            location = resp.headers.get("location")
            if resp.status in (301, 302, 303, 307, 308) and location and max_redirects > 0:
                url = urljoin(url, location)
                if resp.status == 303:
                    method, content = "GET", None
                continue
            return resp
        raise OutboundError(f"{parameter}: more than {max_redirects} redirects", parameter=parameter)

    def _once(self, method, url, *, parameter, content, headers, max_bytes, deadline) -> OutboundResponse:
        scheme, host, port, addresses = self.check_url(url, parameter=parameter)
        ip = addresses[0]
        parts = urlsplit(url)
        # Connect to the checked address; the name travels in Host and SNI only.
        netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        pinned = parts._replace(netloc=netloc).geturl()
        hdrs = {"Host": parts.netloc, "User-Agent": "daguerre", **(headers or {})}
        remaining = max(0.1, deadline - time.monotonic())
        timeout = httpx.Timeout(min(remaining, self.policy.total_timeout), connect=self.policy.connect_timeout)
        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
                client.stream(
                    method,
                    pinned,
                    content=content,
                    headers=hdrs,
                    extensions={"sni_hostname": host} if scheme == "https" else {},
                ) as r,
            ):
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise OutboundError(
                            f"{parameter}: response is over the {max_bytes}-byte cap", parameter=parameter
                        )
                    if time.monotonic() > deadline:
                        raise OutboundError(
                            f"{parameter}: request took over {self.policy.total_timeout:g} s", parameter=parameter
                        )
                return OutboundResponse(status=r.status_code, headers=r.headers, body=bytes(body), url=url)
        except httpx.TimeoutException as e:
            raise OutboundError(f"{parameter}: request to {host} timed out", parameter=parameter) from e
        except httpx.HTTPError as e:
            raise OutboundError(
                f"{parameter}: request to {host} failed ({type(e).__name__})", parameter=parameter
            ) from e
