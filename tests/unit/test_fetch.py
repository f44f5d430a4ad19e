"""Fetches and local files under a MediaPolicy (client, offline and server share them)."""

from __future__ import annotations

import http.server
import ipaddress
import io
import os
import socket
import threading
import time

import pytest
from PIL import Image

from qwen3vl_vllm.media import sources as S
from qwen3vl_vllm.errors import MediaError

PNG = io.BytesIO()
Image.new("RGB", (40, 30), (9, 8, 7)).save(PNG, format="PNG")
PNG = PNG.getvalue()


class _Server:
    """An HTTP server on 127.0.0.1 that records what reached it (paths, Host headers)."""

    def __init__(self, routes=None):
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits.append((self.path, self.headers.get("Host", "")))
                action = (routes or {}).get(self.path)
                if callable(action):
                    action(self)
                    return
                if isinstance(action, str):
                    self.send_response(302)
                    self.send_header("Location", action)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *a):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                import sys

                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a client cut off is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def servers():
    made = []

    def make(routes=None):
        made.append(_Server(routes))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "100.100.100.200", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1",
    "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
    "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a00:1::", "2001:db8::1"])
def test_every_special_purpose_address_is_refused(address):
    assert S.special_address(ipaddress.ip_address(address)), address


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address):
    assert not S.special_address(ipaddress.ip_address(address)), address


@pytest.mark.parametrize("url", ["http://100.100.100.200/latest/meta-data", "http://[::ffff:127.0.0.1]/x",
                                 "http://[64:ff9b::7f00:1]/x", "http://0x7f000001/x", "http://2130706433/x"])
def test_refused_urls_never_connect(url, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(MediaError, match="refused"):
        S.source_bytes(url, "inputs[0].image[0]")


def test_an_exact_origin_may_be_allowed_and_its_redirects_are_checked(servers):
    other = servers()
    allowed = servers({"/to-other": f"{other.origin}/img.png", "/to-private": "http://10.255.255.1/x",
                       "/to-self": "/img.png"})
    policy = S.MediaPolicy(allowed_origins=(allowed.origin,))
    assert S.source_bytes(allowed.origin + "/img.png", "x", policy) == PNG
    assert S.source_bytes(allowed.origin + "/to-self", "x", policy) == PNG  # same origin: fine
    for path, fragment in (("/to-other", "points to 127.0.0.1"), ("/to-private", "points to 10.255.255.1")):
        with pytest.raises(MediaError, match=fragment):
            S.source_bytes(allowed.origin + path, "x", policy)
    assert other.hits == []  # refused without connecting
    with pytest.raises(MediaError, match="points to 127.0.0.1"):
        S.source_bytes(other.origin + "/img.png", "x", policy)  # another port of the same host
    assert other.hits == []


def test_the_checked_address_is_the_one_connected_to(servers, monkeypatch):
    """One DNS lookup per hop, and the connection goes to its answer (a resolver that would
    answer differently the second time never gets asked)."""
    server = servers()
    real = socket.getaddrinfo
    calls = []

    def resolver(host, port, *a, **k):
        calls.append(host)
        if host == "media.test":
            if calls.count("media.test") > 1:
                pytest.fail("resolved twice")
            return real("127.0.0.1", port, *a, **k)
        return real(host, port, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    url = f"http://media.test:{server.port}/img.png"
    policy = S.MediaPolicy(allowed_origins=(f"http://media.test:{server.port}",))
    assert S.source_bytes(url, "x", policy) == PNG
    assert calls == ["media.test", "127.0.0.1"]  # the name once; then the checked address itself
    assert server.hits == [("/img.png", f"media.test:{server.port}")]  # the URL's own Host


def test_a_slow_drip_is_cut_at_the_whole_fetch_deadline(servers):
    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.1)  # far below any per-read timeout
        except OSError:
            pass

    server = servers({"/drip": drip})
    policy = S.MediaPolicy(allowed_origins=(server.origin,), url_timeout=0.6)
    t0 = time.monotonic()
    with pytest.raises(MediaError, match=r"timed out after 0.6s \(the whole fetch\)"):
        S.source_bytes(server.origin + "/drip", "x", policy)
    print(f"FETCH drip cut after {time.monotonic() - t0:.2f} s (deadline 0.6 s)")


def test_downloads_over_the_cap_are_refused(servers):
    def chunked(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(20):
            handler.wfile.write(b"100\r\n" + b"y" * 256 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    server = servers({"/chunked": chunked})
    policy = S.MediaPolicy(allowed_origins=(server.origin,), max_bytes=100)
    with pytest.raises(MediaError, match="download exceeds 100 bytes \\(Content-Length"):
        S.source_bytes(server.origin + "/img.png", "x", policy)
    with pytest.raises(MediaError, match="download exceeds 100 bytes"):
        S.source_bytes(server.origin + "/chunked", "x", policy)


def test_allowed_domains_are_checked_at_every_hop(servers):
    server = servers({"/away": "http://elsewhere.invalid/x.png"})
    policy = S.MediaPolicy(allow_private_urls=True, allowed_domains=("127.0.0.1",))
    assert S.source_bytes(server.origin + "/img.png", "x", policy) == PNG
    with pytest.raises(MediaError, match="not one of the allowed domains"):
        S.source_bytes(server.origin + "/away", "x", policy)


# ---- local files: regular files only, size checked first, the folder checked on the descriptor


def test_devices_and_fifos_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        t0 = time.monotonic()
        with pytest.raises(MediaError, match="is not a regular file"):
            S.source_bytes(path, "inputs[0].image[0]")
        assert time.monotonic() - t0 < 30  # answered at all: opening the FIFO did not wait


def test_size_is_checked_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(b"0" * 1000)
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(MediaError, match="file is 1000 bytes, above the 999 limit"):
        S.source_bytes(str(big), "x", S.MediaPolicy(max_bytes=999))


def test_the_folder_is_checked_on_the_opened_file(tmp_path, monkeypatch):
    """A path that resolves inside the folder when checked but is another file when opened (a
    symlink swapped in between) is caught: the check reads the open descriptor's real path."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    link = root / "img.png"
    link.symlink_to(outside)
    monkeypatch.setattr(os.path, "realpath", lambda p: str(root / "img.png") if "img.png" in str(p) else str(p))
    with pytest.raises(MediaError, match="outside the allowed folder"):
        S.source_bytes(str(link), "x", S.MediaPolicy(local_root=str(root)))
    inside = root / "ok.png"
    inside.write_bytes(PNG)
    assert S.source_bytes(str(inside), "x", S.MediaPolicy(local_root=str(root))) == PNG
