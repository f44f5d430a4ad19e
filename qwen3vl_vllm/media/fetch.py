"""One media download: connect to the address that was checked, finish within one deadline.

Why not ``httpx.get``: it resolves the host again when it connects, so a DNS answer that
changes between the check and the connection (DNS rebinding) reaches an address that was never
checked; and its timeouts are per read, so a server that sends one byte a second holds a fetch
for ever. Here every hop of a fetch is:

1. checked by the caller's ``check(url)`` (scheme, allowed hosts, the addresses it resolves to),
   which returns those addresses;
2. fetched over a connection to the first of *those* addresses (the TLS certificate is still
   verified for the URL's host name), with every connect, read and write given only the time
   left of one deadline for the whole fetch (redirects included);
3. refused above ``max_bytes`` (from ``Content-Length`` before reading, and while reading);
4. on a redirect, the next URL goes through 1-3 again, at most ``max_redirects`` times.

No proxy is used (a proxy would resolve the name itself, past the check). Used by ``sources``
for the clients, the offline API and the server's media connector alike.

Example::

    from qwen3vl_vllm.media.fetch import fetch
    from qwen3vl_vllm.media.sources import DEFAULT_POLICY, check_url
    data = fetch("https://example.com/cat.png", "inputs[0].image", DEFAULT_POLICY, check=check_url)
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """The download failed or was refused; the message says why (the caller names the item)."""


def _ssl_context():
    import ssl

    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()


def _pinned_backend(address: str, deadline: float, timeout: float):
    """An httpcore network backend that connects to ``address`` whatever host it is asked for,
    and caps every operation's timeout by the time left until ``deadline``."""
    import httpcore

    def left(given: float | None) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpcore.ReadTimeout(f"the fetch took longer than its {timeout:g} s")
        return min(remaining, given) if given is not None else remaining

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner):
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, left(timeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, left(timeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(self, ssl_context, server_hostname=None, timeout=None):
            return Stream(self.inner.start_tls(ssl_context, server_hostname, left(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        def __init__(self):
            self.inner = httpcore.SyncBackend()

        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            return Stream(self.inner.connect_tcp(address, port, left(timeout), local_address,
                                                 socket_options))

        def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
            raise httpcore.ConnectError("unix sockets are not used for media")

        def sleep(self, seconds: float) -> None:  # pragma: no cover
            time.sleep(seconds)

    return Backend()


def _one_hop(url: str, address: str, deadline: float, timeout: float,
             max_bytes: int) -> tuple[int, str | None, bytes]:
    """(status, Location, body) of one GET; the body only for a 2xx answer."""
    import httpcore

    with httpcore.ConnectionPool(ssl_context=_ssl_context(), retries=0,
                                 network_backend=_pinned_backend(address, deadline, timeout)) as pool:
        headers = [(b"Accept-Encoding", b"identity"), (b"User-Agent", b"qwen3vl-vllm")]
        ext = {"timeout": {k: timeout for k in ("connect", "read", "write", "pool")}}
        with pool.stream("GET", url, headers=headers, extensions=ext) as response:
            found = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
            if response.status in REDIRECTS:
                return response.status, found.get("location"), b""
            if not 200 <= response.status < 300:
                return response.status, None, b""
            length = found.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"download exceeds {max_bytes} bytes (Content-Length {length}): {url}")
            chunks, total = [], 0
            for chunk in response.iter_stream():
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError(f"download exceeds {max_bytes} bytes: {url}")
                chunks.append(chunk)
            return response.status, None, b"".join(chunks)


def _first_reachable(url: str, addresses: list[str], deadline: float, timeout: float,
                     max_bytes: int) -> tuple[int, str | None, bytes]:
    """``_one_hop`` over the checked addresses in resolver order, the next one only when a
    connection cannot be made (e.g. an IPv6 address on a host without IPv6)."""
    import httpcore

    for k, address in enumerate(addresses):
        try:
            return _one_hop(url, address, deadline, timeout, max_bytes)
        except httpcore.ConnectError:
            if k == len(addresses) - 1 or time.monotonic() >= deadline:
                raise
    raise FetchError(f"no address for {url}")  # pragma: no cover - addresses is never empty


def fetch(url: str, where: str, policy: Any, *, check: Callable[[str, str, Any], list[str]]) -> bytes:
    """The body of ``url`` under ``policy`` (``url_timeout`` for everything, ``max_bytes``,
    ``max_redirects``); ``check(url, where, policy)`` refuses a hop or returns its addresses."""
    import httpcore

    timeout = float(policy.url_timeout)
    deadline = time.monotonic() + timeout
    for _ in range(policy.max_redirects + 1):
        addresses = check(url, where, policy)  # every hop, redirects included
        if not addresses:
            raise FetchError(f"no address for {url}")
        try:
            status, location, body = _first_reachable(url, addresses, deadline, timeout, policy.max_bytes)
        except FetchError:
            raise
        except httpcore.TimeoutException:
            raise FetchError(f"URL timed out after {timeout:g}s (the whole fetch): {url}") from None
        except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.UnsupportedProtocol,
                OSError) as e:
            if time.monotonic() >= deadline:
                raise FetchError(f"URL timed out after {timeout:g}s (the whole fetch): {url}") from None
            raise FetchError(f"cannot fetch {url}: {type(e).__name__}: {e}") from None
        if status in REDIRECTS:
            if not location:
                raise FetchError(f"URL answered HTTP {status} without a Location: {url}")
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                check(url, where, policy)  # names the scheme it refuses
            continue
        if not 200 <= status < 300:
            raise FetchError(f"URL answered HTTP {status}: {url}")
        return body
    raise FetchError(f"more than {policy.max_redirects} redirects, last to {url}")
