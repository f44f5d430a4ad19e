"""Where media bytes come from, and what the loader may touch.

Sources: local path, ``file://``, http(s) URL, ``data:`` URL, raw bytes. ``MediaPolicy`` says
what is allowed: local files (optionally confined to a folder), remote URLs with a timeout, a
size cap and checked redirects, and never an address on this machine or its network unless the
caller opts in. Decoding and sizing live in ``media``; this module only reads bytes.

Example::

    >>> from qwen3vl_vllm.media.sources import decode_data_url
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

from qwen3vl_vllm.errors import MediaError

FORMAT_HINT = "Send a PNG, JPEG, WebP, BMP or GIF image as a path, URL, data URL, bytes or PIL image"


@dataclass(frozen=True)
class MediaPolicy:
    """What the loader may touch.

    Local files are the caller's own and allowed (``local_root`` confines them): regular files
    only (no devices, FIFOs or sockets), at most ``max_bytes``, the folder checked on the opened
    file itself (a symlink swapped after a check cannot escape). URLs are fetched only over
    http(s), from a host that resolves to public addresses only (``special_address``: loopback,
    private, link-local, CGNAT, multicast, reserved, IPv4-mapped and NAT64 forms of those...),
    connecting to the very address that was checked (no second DNS lookup), within
    ``url_timeout`` seconds for the whole fetch (every redirect and byte), at most ``max_bytes``,
    and through at most ``max_redirects`` redirects, each checked the same way.

    ``allowed_origins`` (``"http://127.0.0.1:8080"``, exact scheme, host and port) may be
    fetched even when private: a finer opt-in than ``allow_private_urls``, which switches the
    address check off entirely. ``allowed_domains``, when set, is the only hosts that may be
    fetched (every hop), as vLLM's ``--allowed-media-domains``.
    """

    allow_local_files: bool = True
    local_root: str | None = None  # when set, local files must resolve inside it
    allow_remote: bool = True
    allow_private_urls: bool = False
    url_timeout: float = 10.0
    max_bytes: int = 256 * 1024 * 1024
    max_redirects: int = 5
    allowed_origins: tuple[str, ...] = ()
    allowed_domains: tuple[str, ...] = ()


DEFAULT_POLICY = MediaPolicy()


def _regular_file_bytes(path: str, where: str, *, root: str | None, max_bytes: int) -> bytes:
    """A regular file's bytes, checked on the opened descriptor: its type, its size before
    anything is read, and (with ``root``) the folder it really is in."""
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except FileNotFoundError:
        raise MediaError(where, f"file not found: {path!r}", "Check the path") from None
    except IsADirectoryError:
        raise MediaError(where, f"{path!r} is a directory, not a file") from None
    except PermissionError:
        raise MediaError(where, f"permission denied: {path!r}") from None
    except OSError as e:
        raise MediaError(where, f"cannot open {path!r}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise MediaError(where, f"{path!r} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(where, f"{path!r} is not a regular file (a device, FIFO or socket)",
                             "Give the path of an image or video file")
        if root is not None:
            real = _fd_path(fd, path)
            top = os.path.realpath(root)
            if os.path.commonpath([top, real]) != top:
                raise MediaError(where, f"path {path!r} is outside the allowed folder",
                                 "Move the file under the allowed folder or send its bytes")
        if info.st_size > max_bytes:
            raise MediaError(where, f"file is {info.st_size} bytes, above the {max_bytes} limit")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)  # a file that grew after fstat is still capped
        if len(data) > max_bytes:
            raise MediaError(where, f"file is larger than the {max_bytes} limit")
        return data
    finally:
        os.close(fd)


def _fd_path(fd: int, path: str) -> str:
    """The real path of an open file: from the descriptor (Linux ``/proc``, macOS
    ``F_GETPATH``), so a symlink swapped after the open cannot fool the check."""
    proc = f"/proc/self/fd/{fd}"
    if os.path.islink(proc):
        return os.readlink(proc)
    try:
        import fcntl

        if hasattr(fcntl, "F_GETPATH"):
            return os.fsdecode(fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024)).rstrip(b"\0"))
    except OSError:
        pass
    return os.path.realpath(path)


def _read_local(path: str, where: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_local_files:
        raise MediaError(where, "reading local files is disabled", "Send the bytes or a data URL instead")
    return _regular_file_bytes(path, where, root=policy.local_root, max_bytes=policy.max_bytes)


def read_local_file(path: str, where: str, *, root: str | None, max_bytes: int) -> bytes:
    """A local media file under ``root`` (the server's ``--allowed-local-media-path``)."""
    return _regular_file_bytes(path, where, root=root, max_bytes=max_bytes)


_NAT64 = ("64:ff9b::/96", "64:ff9b:1::/48")


def special_address(ip) -> bool:
    """True for every address that is not a public unicast address: loopback, private,
    link-local, CGNAT (100.64.0.0/10, where cloud metadata services live), multicast,
    reserved, unspecified, documentation and benchmarking ranges, and IPv6 forms that carry such
    an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, Teredo).

    >>> import ipaddress
    >>> [special_address(ipaddress.ip_address(a)) for a in
    ...  ("8.8.8.8", "100.100.100.200", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2001:4860::8888")]
    [False, True, True, True, False]
    """
    import ipaddress

    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and any(ip in ipaddress.ip_network(n) for n in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and special_address(embedded):
            return True
    return not ip.is_global or ip.is_multicast


def _origin(parts) -> str:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _allowed_origin(origin: str, policy: MediaPolicy) -> bool:
    from urllib.parse import urlsplit

    return any(_origin(urlsplit(o)) == origin for o in policy.allowed_origins)


def check_url(url: str, where: str, policy: MediaPolicy) -> list[str]:
    """Refuse a URL the policy does not allow; return the addresses to connect to (the ones
    checked: the fetch uses them, never a second lookup). Refused: a non-http(s) scheme, a host
    outside ``allowed_domains`` (when set), and (unless ``allow_private_urls`` or the URL's exact
    origin is in ``allowed_origins``) a host that resolves to any special address."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise MediaError(where, f"URL scheme {parts.scheme!r} is not allowed ({url})",
                         "Use an http(s) URL, or send the bytes or a data URL")
    host = parts.hostname
    if not host:
        raise MediaError(where, f"URL has no host: {url}")
    if policy.allowed_domains and host.lower() not in {d.lower() for d in policy.allowed_domains}:
        raise MediaError(where, f"URL {url}: the host {host!r} is not one of the allowed domains "
                         f"{list(policy.allowed_domains)}", "Send the bytes or a data URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise MediaError(where, f"cannot resolve the host of {url}: {e}", "Check the URL") from None
    addresses = []
    for info in infos:
        text = info[4][0].split("%", 1)[0]
        if text not in addresses:
            addresses.append(text)
    if policy.allow_private_urls or _allowed_origin(_origin(parts), policy):
        return addresses
    for text in addresses:
        ip = ipaddress.ip_address(text)
        if special_address(ip):
            raise MediaError(where, f"URL {url} points to {ip}, an address on this machine or its "
                             "network (or another special-purpose range); fetching it is refused",
                             "Send the bytes or a data URL, or allow its exact origin with "
                             "MediaPolicy(allowed_origins=(...,))")
    return addresses


def _read_url(url: str, where: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_remote:
        raise MediaError(where, "fetching remote URLs is disabled",
                         "Download the file yourself and send its bytes or a data URL")
    from qwen3vl_vllm.media.fetch import FetchError, fetch

    try:
        return fetch(url, where, policy, check=check_url)
    except FetchError as e:
        raise MediaError(where, str(e), "Check the URL or send the bytes") from None


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
