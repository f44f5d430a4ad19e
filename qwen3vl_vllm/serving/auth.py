"""ASGI middleware: with an API key configured, every route of the server needs it.

Why: vLLM 0.32's own ``AuthenticationMiddleware`` guards only paths under ``/v1``, ``/v2``,
``/inference`` and ``/cohere``; the same server also answers ``/score``, ``/rerank``,
``/classify``, ``/pooling``, ``/tokenize``, ``/detokenize``, ``/invocations`` (SageMaker) and
whatever a later vLLM or a plugin mounts, all without a key. This middleware turns the rule
around: everything is guarded except the probes a load balancer must reach without a key
(``OPEN_ROUTES``: ``/health``, ``/ping``, ``/ready``, ``/readyz``, each for its read methods, plus
CORS preflights, which carry no credentials and which vLLM's CORS middleware answers itself).
``/metrics``, ``/version``, ``/docs`` and ``/openapi.json`` are guarded: they tell a stranger the
model, the vLLM version and every route, which is what an attacker looks up first; a Prometheus
scrape sends the key as ``authorization: Bearer``. ``QWEN3VL_OPEN_ROUTES`` (comma-separated exact
paths) replaces the open set.

The keys are vLLM's own (``--api-key``, else ``VLLM_API_KEY``; several ``--api-key`` values are
all accepted), read from the app's parsed arguments, so plain ``vllm serve --api-key`` and the
YAML launcher (which passes ``VLLM_API_KEY``) behave the same. The plugin adds this middleware
last, so it is the outermost one: a request without the key is answered 401 before anything
reads its body (a keyless 64 MiB upload is never buffered) or looks at its media. Websocket
routes are refused before the handshake is accepted (the client sees HTTP 403).

At start-up the middleware logs how many routes it guards, and writes the app's whole route
table (path, methods, kind, guarded) as JSON to ``QWEN3VL_ROUTE_TABLE`` when that is set: the
tests hit every route in it, with and without the key, so a route added by a later vLLM is
covered without editing a list.

Example::

    VLLM_API_KEY=s3cret vllm serve Qwen/Qwen3-VL-Reranker-2B
    curl -s localhost:8000/rerank -d '{}'                                # 401
    curl -s localhost:8000/rerank -H 'Authorization: Bearer s3cret' ...  # served
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from typing import Any

logger = logging.getLogger("vllm.qwen3vl_vllm")

OPEN_ROUTES_ENV = "QWEN3VL_OPEN_ROUTES"
ROUTE_TABLE_ENV = "QWEN3VL_ROUTE_TABLE"
READ_METHODS = ("GET", "HEAD")
# probes a load balancer or orchestrator calls without credentials, and the methods they use
OPEN_ROUTES: dict[str, tuple[str, ...]] = {
    "/health": READ_METHODS, "/ping": READ_METHODS + ("POST",),  # SageMaker pings with both
    "/ready": READ_METHODS, "/readyz": READ_METHODS,
}
UNAUTHORIZED = ("missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                "(the key this server was started with: --api-key or VLLM_API_KEY)")


def open_routes(environ: Any = None) -> dict[str, tuple[str, ...]]:
    """The routes answered without a key: ``QWEN3VL_OPEN_ROUTES`` (exact paths, read methods
    and SageMaker's POST ping) when set, else ``OPEN_ROUTES``."""
    raw = (os.environ if environ is None else environ).get(OPEN_ROUTES_ENV)
    if raw is None:
        return dict(OPEN_ROUTES)
    paths = [p.strip() for p in raw.split(",") if p.strip()]
    return {p: OPEN_ROUTES.get(p, READ_METHODS) for p in paths}


def configured_keys(app: Any) -> list[str]:
    """vLLM's rule: ``--api-key`` values (from the app's parsed arguments), else
    ``VLLM_API_KEY``; empty strings are no key."""
    args = getattr(getattr(app, "state", None), "args", None)
    keys = list(getattr(args, "api_key", None) or [])
    if not keys:
        keys = [os.environ.get("VLLM_API_KEY", "")]
    return [k for k in keys if k]


def route_table(app: Any, prefix: str = "") -> list[dict]:
    """Every route of a Starlette/FastAPI app, mounted apps included (a mount whose app has no
    route table is one entry with the methods ``*``)."""
    from starlette.routing import Mount, WebSocketRoute

    out: list[dict] = []
    for route in getattr(app, "routes", None) or []:
        path = prefix + getattr(route, "path", "")
        kind = type(route).__name__
        if isinstance(route, Mount):
            sub = getattr(route, "routes", None)
            if sub:
                out += route_table(route, path)
            else:
                out.append({"path": path or "/", "methods": ["*"], "kind": kind})
        elif isinstance(route, WebSocketRoute):
            out.append({"path": path, "methods": ["WEBSOCKET"], "kind": kind})
        else:
            out.append({"path": path, "methods": sorted(getattr(route, "methods", None) or ["*"]),
                        "kind": kind})
    return out


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


async def _unauthorized(send) -> None:
    body = json.dumps({"error": {"message": UNAUTHORIZED, "type": "AuthenticationError",
                                 "param": None, "code": 401}}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route behind the API key, except ``open_routes()`` and CORS preflights."""

    def __init__(self, app: Any):
        self.app = app
        self.open = open_routes()
        self._hashes: list[bytes] | None = None  # resolved from the app on first use
        self._reported = False

    def _keys(self, scope) -> list[bytes]:
        if self._hashes is None:
            self._hashes = [_hash(k) for k in configured_keys(scope.get("app"))]
        return self._hashes

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = b""
        for name, v in headers:
            if name.lower() == b"authorization":
                value = v
                break
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = _hash(token.strip())
        match = False
        for expected in self._hashes or []:
            match |= secrets.compare_digest(given, expected)  # no early exit: constant time
        return match

    def is_open(self, path: str, method: str, headers: list[tuple[bytes, bytes]]) -> bool:
        if method in self.open.get(path, ()):
            return True
        if method == "OPTIONS":  # a CORS preflight: no credentials by design, answered by CORS
            names = {k.lower() for k, _ in headers}
            return b"origin" in names and b"access-control-request-method" in names
        return False

    def _report(self, scope) -> None:
        self._reported = True
        app = scope.get("app")
        keys = self._keys(scope)
        table = route_table(app)
        for row in table:
            row["guarded"] = bool(keys) and not all(
                m in self.open.get(row["path"], ()) for m in row["methods"])
        if keys:
            open_paths = sorted({r["path"] for r in table if not r["guarded"]})
            logger.info("qwen3vl-vllm: the API key guards %d of %d routes (open: %s)",
                        sum(r["guarded"] for r in table), len(table), ", ".join(open_paths) or "none")
        target = os.environ.get(ROUTE_TABLE_ENV)
        if target:
            with open(target, "w") as f:
                json.dump({"api_key": bool(keys), "open_routes": {k: list(v) for k, v in self.open.items()},
                           "routes": table}, f, indent=1)

    async def __call__(self, scope, receive, send):
        kind = scope.get("type")
        if kind == "lifespan" and not self._reported:
            try:
                self._report(scope)
            except Exception as e:  # noqa: BLE001 - reporting must never stop the server
                logger.warning("qwen3vl-vllm: could not list the routes: %s", e)
        if kind not in ("http", "websocket") or not self._keys(scope):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = scope.get("headers") or []
        method = "WEBSOCKET" if kind == "websocket" else scope.get("method", "GET")
        if self.is_open(path, method, headers) or self.authorized(headers):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        await _unauthorized(send)
