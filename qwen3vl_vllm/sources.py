"""Where media bytes come from, and what the loader may touch.

Sources: local path, ``file://``, http(s) URL, ``data:`` URL, raw bytes. ``MediaPolicy`` says
what is allowed: local files (optionally confined to a folder), remote URLs with a timeout, a
size cap and checked redirects, and never an address on this machine or its network unless the
caller opts in. Decoding and sizing live in ``media``; this module only reads bytes.

Example::

    >>> from qwen3vl_vllm.sources import decode_data_url
    >>> decode_data_url("data:text/plain;base64,aGk=", "x")
    ('text/plain', b'hi')
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import MediaError

FORMAT_HINT = "Send a PNG, JPEG, WebP, BMP or GIF image as a path, URL, data URL, bytes or PIL image"


@dataclass(frozen=True)
class MediaPolicy:
    """What the loader may touch.

    Local files are the caller's own and allowed (``local_root`` confines them). URLs are
    fetched with a timeout, a size cap and at most ``max_redirects`` redirects, each checked:
    only http(s), and never an address on this machine or its network (loopback, private,
    link-local, reserved) unless ``allow_private_urls``. A service that forwards its users'
    input dicts therefore cannot be turned into a proxy into its own network.
    """

    allow_local_files: bool = True
    local_root: str | None = None  # when set, local files must resolve inside it
    allow_remote: bool = True
    allow_private_urls: bool = False
    url_timeout: float = 10.0
    max_bytes: int = 256 * 1024 * 1024
    max_redirects: int = 5


DEFAULT_POLICY = MediaPolicy()



def _read_local(path: str, where: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_local_files:
        raise MediaError(where, "reading local files is disabled", "Send the bytes or a data URL instead")
    real = os.path.realpath(path)
    if policy.local_root is not None:
        root = os.path.realpath(policy.local_root)
        if os.path.commonpath([root, real]) != root:
            raise MediaError(where, f"path {path!r} is outside the allowed folder",
                             "Move the file under the allowed folder or send its bytes")
    try:
        size = os.path.getsize(real)
        if size > policy.max_bytes:
            raise MediaError(where, f"file is {size} bytes, above the {policy.max_bytes} limit")
        with open(real, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MediaError(where, f"file not found: {path!r}", "Check the path") from None
    except IsADirectoryError:
        raise MediaError(where, f"{path!r} is a directory, not a file") from None
    except PermissionError:
        raise MediaError(where, f"permission denied: {path!r}") from None


def check_url(url: str, where: str, policy: MediaPolicy) -> None:
    """Refuse a URL the policy does not allow: a non-http(s) scheme, or (unless
    ``allow_private_urls``) a host that resolves to a loopback/private/link-local address."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise MediaError(where, f"URL scheme {parts.scheme!r} is not allowed ({url})",
                         "Use an http(s) URL, or send the bytes or a data URL")
    if not parts.hostname:
        raise MediaError(where, f"URL has no host: {url}")
    if policy.allow_private_urls:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise MediaError(where, f"cannot resolve the host of {url}: {e}", "Check the URL") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
                or ip.is_multicast or ip.is_unspecified):
            raise MediaError(where, f"URL {url} points to {ip}, an address on this machine or its "
                             "network; fetching it is refused",
                             "Send the bytes or a data URL, or allow it with "
                             "MediaPolicy(allow_private_urls=True)")


def _read_url(url: str, where: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_remote:
        raise MediaError(where, "fetching remote URLs is disabled",
                         "Download the file yourself and send its bytes or a data URL")
    import httpx
    from urllib.parse import urljoin

    try:
        for _ in range(policy.max_redirects + 1):
            check_url(url, where, policy)  # every hop, redirects included
            with httpx.stream("GET", url, timeout=policy.url_timeout, follow_redirects=False) as r:
                if r.is_redirect:
                    url = urljoin(url, r.headers.get("location", ""))
                    continue
                r.raise_for_status()
                chunks, total = [], 0
                for chunk in r.iter_bytes():
                    total += len(chunk)
                    if total > policy.max_bytes:
                        raise MediaError(where, f"download exceeds {policy.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise MediaError(where, f"more than {policy.max_redirects} redirects, last to {url}")
    except httpx.HTTPStatusError as e:
        raise MediaError(where, f"URL answered HTTP {e.response.status_code}: {url}") from None
    except httpx.TimeoutException:
        raise MediaError(where, f"URL timed out after {policy.url_timeout}s: {url}",
                         "Check the URL or send the bytes") from None
    except httpx.HTTPError as e:
        raise MediaError(where, f"cannot fetch {url}: {type(e).__name__}: {e}",
                         "Check the URL or send the bytes") from None


def decode_data_url(url: str, where: str) -> tuple[str, bytes]:
    """``data:<mime>;base64,<payload>`` -> (mime, bytes)."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or ";base64" not in head:
        raise MediaError(where, "malformed data URL", "Use data:<mime>;base64,<payload>")
    try:
        return head[5:].split(";", 1)[0], base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise MediaError(where, "data URL payload is not valid base64") from None


def source_bytes(src: Any, where: str, policy: MediaPolicy = DEFAULT_POLICY) -> bytes:
    """Raw bytes of a path/URL/data URL/bytes source."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, os.PathLike):
        return _read_local(os.fspath(src), where, policy)
    if not isinstance(src, str):
        raise MediaError(where, f"unsupported source type {type(src).__name__}", FORMAT_HINT)
    if src.startswith("data:"):
        return decode_data_url(src, where)[1]
    if src.startswith(("http://", "https://")):
        return _read_url(src, where, policy)
    if src.startswith("file://"):
        return _read_local(src[7:], where, policy)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", src) and not os.path.exists(src):
        scheme = src.split("://", 1)[0]
        raise MediaError(where, f"unsupported URL scheme {scheme!r}",
                         "Use a local path, file://, http(s):// or a data: URL")
    return _read_local(src, where, policy)
