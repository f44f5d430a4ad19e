"""Hit every route of a running server, with and without its API key.

The routes come from the server's own route table (``QWEN3VL_ROUTE_TABLE``, written by
``server_auth.ApiKeyMiddleware`` at start-up from the app vLLM built), not from a list in the
tests, so a route a later vLLM adds is covered without editing anything here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

# what a route is sent: a small JSON body for POST (the answer past authentication is then a
# 4xx from validation, or a 200): enough to tell "refused at the door" from "let in"
BODY = {"model": "x"}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)  # /v1/models/{model} -> /v1/models/x


def probe_routes(base_url: str, table_path: Path, key: str, timeout: float = 60) -> list[dict]:
    """One row per (route, method): the status without a key, with a wrong key, with the key."""
    table = json.loads(Path(table_path).read_text())
    rows = []
    with httpx.Client(timeout=timeout) as http:
        for route in table["routes"]:
            paths = _route_paths(route)
            methods = ["GET", "POST"] if route["methods"] == ["*"] else route["methods"]
            for path in paths:
                for method in methods:
                    if method == "WEBSOCKET":
                        rows.append(_websocket_row(base_url, path, key))
                        continue
                    kw = {"json": BODY} if method in ("POST", "PUT", "PATCH") else {}

                    def status(headers, method=method, path=path, kw=kw):
                        return http.request(method, base_url + path, headers=headers, **kw).status_code

                    rows.append({"path": path, "method": method, "guarded": route["guarded"],
                                 "no_key": status({}), "wrong_key": status({"Authorization": "Bearer nope"}),
                                 "key": status({"Authorization": f"Bearer {key}"})})
    return rows


def _route_paths(route: dict) -> list[str]:
    """The concrete paths to send a route: its own, and inside a mounted app too."""
    paths = [_concrete(route["path"])]
    if route["kind"] == "Mount":
        paths.append(paths[0].rstrip("/") + "/anything")
    return paths


def post_paths(table_path: Path) -> list[str]:
    """Every concrete path of the running app that takes a POST (mounted apps included)."""
    table = json.loads(Path(table_path).read_text())
    return [path for route in table["routes"] if route["methods"] == ["*"] or "POST" in route["methods"]
            for path in _route_paths(route)]


def _websocket_row(base_url: str, path: str, key: str) -> dict:
    """A websocket handshake, by hand: 101 means accepted, a 403 refused before accept."""
    import base64
    import os
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)

    def handshake(headers: str) -> int:
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
            nonce = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n{headers}\r\n").encode())
            return int(s.recv(4096).split(b" ", 2)[1])

    return {"path": path, "method": "WEBSOCKET", "guarded": True, "no_key": handshake(""),
            "wrong_key": handshake("Authorization: Bearer nope\r\n"),
            "key": handshake(f"Authorization: Bearer {key}\r\n")}


def assert_every_route_behind_the_key(rows: list[dict]) -> None:
    assert rows, "the route table is empty"
    for row in rows:
        if row["guarded"]:
            assert row["no_key"] == 401 or (row["method"] == "WEBSOCKET" and row["no_key"] == 403), row
            assert row["wrong_key"] in (401, 403), row
            assert row["key"] not in (401, 403), row
        else:
            assert row["no_key"] not in (401, 403), row  # the open probes stay open
