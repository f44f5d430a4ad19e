"""The API-key middleware with fake apps (the live route table: test_security, test_launcher)."""

from __future__ import annotations

import asyncio
import json
import types

import pytest

from qwen3vl_vllm.serving import auth as A


class _App:
    """A fake inner app that records whether it was reached (and whether the body was read)."""

    def __init__(self, keys=None):
        self.reached = []
        self.state = types.SimpleNamespace(args=types.SimpleNamespace(api_key=keys))

    async def __call__(self, scope, receive, send):
        self.reached.append(scope["path"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def _call(mw, app, path, *, method="POST", headers=(), kind="http"):
    sent, read = [], []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(m):
        sent.append(m)

    scope = {"type": kind, "path": path, "method": method, "headers": list(headers), "app": app,
             "root_path": ""}
    asyncio.run(mw(scope, receive, send))
    return sent, read


@pytest.fixture()
def guarded(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv(A.OPEN_ROUTES_ENV, raising=False)
    app = _App(keys=["k1", "k2"])
    return A.ApiKeyMiddleware(app), app


@pytest.mark.parametrize("path", ["/rerank", "/score", "/invocations", "/pooling", "/v1/embeddings",
                                  "/metrics", "/version", "/docs", "/openapi.json", "/anything/new",
                                  "/health/", "//health"])
def test_every_path_needs_the_key_and_nothing_is_read(guarded, path):
    mw, app = guarded
    for headers in ((), [(b"authorization", b"Bearer wrong")], [(b"authorization", b"Basic k1")]):
        sent, read = _call(mw, app, path, headers=headers)
        assert sent[0]["status"] == 401 and not read and app.reached == []
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        assert "Authorization: Bearer" in json.loads(sent[1]["body"])["error"]["message"]


def test_either_key_is_accepted(guarded):
    mw, app = guarded
    for key in (b"k1", b"k2"):
        sent, _ = _call(mw, app, "/rerank", headers=[(b"authorization", b"Bearer " + key)])
        assert sent[0]["status"] == 200
    assert app.reached == ["/rerank", "/rerank"]


def test_probes_stay_open_for_their_methods_only(guarded):
    mw, app = guarded
    for path, method in (("/health", "GET"), ("/ping", "GET"), ("/ping", "POST"), ("/readyz", "GET")):
        assert _call(mw, app, path, method=method)[0][0]["status"] == 200, (path, method)
    assert _call(mw, app, "/health", method="POST")[0][0]["status"] == 401


def test_cors_preflight_passes_but_a_bare_options_does_not(guarded):
    mw, app = guarded
    preflight = [(b"origin", b"https://app.example"), (b"access-control-request-method", b"POST")]
    assert _call(mw, app, "/v1/rerank", method="OPTIONS", headers=preflight)[0][0]["status"] == 200
    assert _call(mw, app, "/metrics", method="OPTIONS")[0][0]["status"] == 401


def test_websockets_are_closed_before_accept(guarded):
    mw, app = guarded
    sent, _ = _call(mw, app, "/v1/realtime", kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}] and app.reached == []
    _call(mw, app, "/v1/realtime", kind="websocket", headers=[(b"authorization", b"Bearer k1")])
    assert app.reached == ["/v1/realtime"]


def test_no_key_configured_changes_nothing(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    app = _App(keys=None)
    assert _call(A.ApiKeyMiddleware(app), app, "/rerank")[0][0]["status"] == 200


def test_vllm_api_key_environment_is_the_fallback(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "envkey")
    app = _App(keys=None)
    mw = A.ApiKeyMiddleware(app)
    assert _call(mw, app, "/rerank")[0][0]["status"] == 401
    assert _call(mw, app, "/rerank", headers=[(b"authorization", b"Bearer envkey")])[0][0]["status"] == 200


def test_open_routes_can_be_replaced(monkeypatch):
    monkeypatch.setenv(A.OPEN_ROUTES_ENV, "/health,/metrics")
    assert A.open_routes() == {"/health": A.READ_METHODS, "/metrics": A.READ_METHODS}


def test_route_table_covers_mounts_and_websockets(tmp_path, monkeypatch):
    """The table written at start-up lists every route of a real FastAPI app, mounted apps and
    websocket routes included, and marks which the key guards."""
    from fastapi import FastAPI, WebSocket
    from starlette.applications import Starlette

    app = FastAPI()

    @app.post("/rerank")
    def rerank():  # pragma: no cover - never called
        return {}

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):  # pragma: no cover - never called
        await ws.close()

    app.mount("/metrics", Starlette())
    app.state.args = types.SimpleNamespace(api_key=["k"])
    monkeypatch.setenv(A.ROUTE_TABLE_ENV, str(tmp_path / "routes.json"))
    mw = A.ApiKeyMiddleware(app)

    mw._report({"type": "lifespan", "app": app})  # what the first lifespan message triggers
    table = json.loads((tmp_path / "routes.json").read_text())
    rows = {(r["path"], tuple(r["methods"])): r for r in table["routes"]}
    assert rows[("/rerank", ("POST",))]["guarded"]
    assert rows[("/v1/realtime", ("WEBSOCKET",))]["guarded"]
    assert rows[("/metrics", ("*",))]["kind"] == "Mount" and rows[("/metrics", ("*",))]["guarded"]
    assert table["api_key"] is True
