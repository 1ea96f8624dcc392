"""Server-side fetches of recorded pages' assets, guarded against being turned on the server's network.

A recording names URLs chosen by whoever sent it (the write key is public), so every fetch is checked:

- only `http` and `https`, and only hosts the caller allows (the project's domains);
- the host name is resolved once and every address it resolves to must be public: loopback, private,
  link-local, multicast, reserved and unspecified addresses are refused (`allow_private`, a test
  setting, lets loopback and private ranges through, never link-local such as 169.254.169.254);
- the connection goes to the address that was checked (the URL's host is replaced by it; `Host` and
  TLS SNI/certificate checks keep the name), so a second DNS answer cannot point elsewhere;
- redirects are followed by hand, at most a few, each target checked like the first URL;
- a size limit (announced `Content-Length` and bytes actually read) and a time limit for the whole
  fetch; no proxies from the environment, no cookies.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

USER_AGENT = "usertrail-asset-fetcher/1"
REDIRECTS = {301, 302, 303, 307, 308}

Resolver = Callable[[str, int], list[str]]
HostRule = Callable[[httpx.URL], bool]
# Given the URL and the announced media type, the type to keep; raises FetchRefused to stop before the body.
TypeRule = Callable[[str, str], str]


class FetchRefused(Exception):
    """A fetch the guard does not make or aborts (`refused`), or that did not work (`failed`)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Fetched:
    url: str  # the URL finally answered (after redirects)
    content_type: str  # the media type as `accept` decided it
    body: bytes


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why connecting to `address` is refused, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    private = f"{ip} is a loopback or private address"
    if ip.is_loopback:  # before `is_reserved`, which ::1 also is
        return None if allow_private else private
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return f"{ip} is a link-local, multicast, unspecified or reserved address"
    if ip.is_private or not ip.is_global:
        return None if allow_private else private
    return None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # One per process: building it loads the CA bundle (~75 ms of CPU), which every server start
    # (each test's, each worker's) would pay again for a client that seldom fetches over TLS.
    return httpx.create_ssl_context(trust_env=False)


class SafeFetcher:
    """Fetches one URL under the guard above; `resolver` and `transport` are replaceable for tests."""

    def __init__(
        self,
        allow_private: bool = False,
        max_bytes: int = 5 * 1_048_576,
        timeout_s: float = 10.0,
        max_redirects: int = 3,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow_private, self.max_bytes, self.timeout_s = allow_private, max_bytes, timeout_s
        self.max_redirects, self.resolver, self.clock = max_redirects, resolver, clock
        self.client = httpx.Client(
            verify=_ssl_context(),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout_s),
            headers={"User-Agent": USER_AGENT, "Accept": "text/css,image/*,font/*,*/*;q=0.1"},
        )

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str, host_allowed: HostRule, accept: TypeRule) -> Fetched:
        """The body of `url`; FetchRefused when the guard refuses or the fetch fails.

        `host_allowed` decides on every URL (the first and each redirect's); `accept` sees the answer's
        media type before its body is read.
        """
        deadline = self.clock() + self.timeout_s
        for _ in range(self.max_redirects + 1):
            target = self._checked(url, host_allowed)
            try:
                answer = self._get(url, target, deadline, accept)
            except httpx.TimeoutException:
                raise FetchRefused("failed", f"no answer within {self.timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise FetchRefused("failed", f"fetch failed: {type(exc).__name__}") from None
            if isinstance(answer, Fetched):
                return answer
            url = answer
        raise FetchRefused("refused", f"more than {self.max_redirects} redirects")

    def _checked(self, url: str, host_allowed: HostRule) -> tuple[httpx.URL, str]:
        """The URL to connect to (its host replaced by a checked address) and the original host."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise FetchRefused("refused", "not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise FetchRefused("refused", "only http and https URLs are fetched")
        host = parsed.host
        if not host_allowed(parsed):
            raise FetchRefused("refused", f"{host} is not one of the project's domains")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError):
            raise FetchRefused("failed", f"{host} does not resolve") from None
        if not addresses:
            raise FetchRefused("failed", f"{host} does not resolve")
        for address in addresses:
            refusal = address_refusal(address, self.allow_private)
            if refusal is not None:
                raise FetchRefused("refused", f"{host} resolves to {refusal}")
        return parsed.copy_with(host=addresses[0].split("%", 1)[0]), host

    def _get(self, url: str, target: tuple[httpx.URL, str], deadline: float, accept: TypeRule) -> Fetched | str:
        """One request: the Fetched answer, or the next URL of a redirect."""
        address_url, host = target
        default_port = 443 if address_url.scheme == "https" else 80
        parsed_port = httpx.URL(url).port
        headers = {"Host": host if parsed_port in (None, default_port) else f"{host}:{parsed_port}"}
        extensions = {"sni_hostname": host} if address_url.scheme == "https" else {}
        request = self.client.build_request("GET", address_url, headers=headers, extensions=extensions)
        response = self.client.send(request, stream=True)
        try:
            if response.status_code in REDIRECTS and "location" in response.headers:
                return str(httpx.URL(url).join(response.headers["location"]))
            if response.status_code != 200:
                raise FetchRefused("failed", f"HTTP {response.status_code}")
            announced_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            content_type = accept(url, announced_type)
            announced = response.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > self.max_bytes:
                raise FetchRefused("refused", f"larger than {self.max_bytes} bytes ({announced})")
            body = bytearray()
            for piece in response.iter_bytes():
                body += piece
                if len(body) > self.max_bytes:
                    raise FetchRefused("refused", f"larger than {self.max_bytes} bytes")
                if self.clock() > deadline:
                    raise FetchRefused("failed", f"not complete within {self.timeout_s:g} s")
            return Fetched(url, content_type, bytes(body))
        finally:
            response.close()
