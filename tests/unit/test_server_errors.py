import asyncio

import pytest
import base64
import io
import json

from PIL import Image

from qwen3vl_vllm.server_errors import NameBadItemsMiddleware, find_bad_item


def _good():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BAD = "data:image/png;base64," + base64.b64encode(b"nope").decode()


def test_find_bad_item_rerank_and_messages():
    body = {"query": "q", "documents": ["a", {"content": [{"type": "image_url", "image_url": {"url": _good()}}]},
                                      {"content": [{"type": "text", "text": "t"},
                                                   {"type": "image_url", "image_url": {"url": BAD}}]}]}
    assert find_bad_item(body) == ("documents[2].content[1]", "image")
    frames = _good().split(",", 1)[1]
    body = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{frames},{base64.b64encode(b'x').decode()}"}}]}]}
    assert find_bad_item(body) == ("messages[0].content[0]", "video")
    assert find_bad_item({"documents": ["fine"]}) is None


def _run(app, body: dict, path="/v1/rerank"):
    sent = []
    chunks = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(NameBadItemsMiddleware(app)({"type": "http", "method": "POST", "path": path}, receive, send))
    return sent


def _app(status, message):
    async def app(scope, receive, send):
        request = await receive()
        assert json.loads(request["body"])  # the body is replayed to vLLM intact
        payload = json.dumps({"error": {"message": message, "code": status}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
    return app


def test_middleware_rewrites_media_400():
    body = {"query": "q", "documents": ["ok", {"content": [{"type": "image_url", "image_url": {"url": BAD}}]}]}
    sent = _run(_app(400, "Failed to load image: cannot identify image file"), body)
    assert sent[0]["status"] == 400
    msg = json.loads(sent[1]["body"])["error"]["message"]
    assert msg.startswith("documents[1].content[0]: cannot decode the image (Failed to load image")
    # a vLLM 500 that is really a bad input becomes a named 400
    sent = _run(_app(500, "Image size (900000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack."), body)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("documents[1].content[0]: cannot load the image")
    remote = {"query": "q", "documents": [{"content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]}
    sent = _run(_app(500, "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /x.png"), remote)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("documents[0].content[0]: cannot load the image")
    sent = _run(_app(500, "some real server bug"), body)
    assert sent[0]["status"] == 500
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_middleware_passes_other_responses():
    body = {"query": "q", "documents": ["ok"]}
    sent = _run(_app(200, "fine"), body)
    assert json.loads(sent[1]["body"])["error"]["message"] == "fine"
    sent = _run(_app(400, "some other problem"), body)
    assert json.loads(sent[1]["body"])["error"]["message"] == "some other problem"


def _policy_run(monkeypatch, body: bytes, path="/v1/embeddings", **env):
    from qwen3vl_vllm.server_policy import PolicyMiddleware

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reached = []

    async def app(scope, receive, send):
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0)

    async def send(m):
        sent.append(m)

    asyncio.run(PolicyMiddleware(app)({"type": "http", "method": "POST", "path": path,
                                       "headers": []}, receive, send))
    return sent[0]["status"], sent[1]["body"], reached


def test_policy_body_limit(monkeypatch):
    status, out, reached = _policy_run(monkeypatch, b"x" * 101, QWEN3VL_MAX_BODY_BYTES="100")
    assert status == 413 and not reached
    status, out, reached = _policy_run(monkeypatch, b"{}", QWEN3VL_MAX_BODY_BYTES="100")
    assert status == 200 and reached == [b"{}"]


@pytest.mark.parametrize("body,fragment", [
    ({"query": [], "documents": ["a"]}, "query: empty"),
    ({"query": {"content": []}, "documents": ["a"]}, "query: empty"),
    ({"query": "q", "documents": []}, "documents: empty"),
    ({"query": "q", "documents": ["a", "b"], "top_n": 3}, "top_n: 3 is out of range"),
    ({"query": "q", "documents": ["a", "b"], "top_n": -1}, "top_n: -1"),
])
def test_policy_rerank_checks(monkeypatch, body, fragment):
    status, out, reached = _policy_run(monkeypatch, json.dumps(body).encode(), path="/v1/rerank",
                                       QWEN3VL_MAX_BODY_BYTES="0")
    assert status == 400 and fragment in json.loads(out)["error"]["message"] and not reached


@pytest.mark.parametrize("query", ["q", ""])  # "" is an empty text part, scored as the reference does
def test_policy_passes_good_rerank(monkeypatch, query):
    body = json.dumps({"query": query, "documents": ["a", ""], "top_n": 2}).encode()
    status, out, reached = _policy_run(monkeypatch, body, path="/v1/rerank", QWEN3VL_MAX_BODY_BYTES="0")
    assert status == 200 and reached == [body]


def test_local_file_error_is_named():
    body = {"query": "q", "documents": ["ok", {"content": [{"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}]}]}
    sent = _run(_app(500, "Cannot load local files without `--allowed-local-media-path`."), body)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("documents[1].content[0]: this server reads no local files")


def test_remote_off_error_is_named():
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"},
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]}
    msg = "The URL must be from one of the allowed domains: ['remote-fetch-is-off.invalid']. Input URL domain: 127.0.0.1"
    for status in (400, 500):
        sent = _run(_app(status, msg), body, path="/v1/embeddings")
        assert sent[0]["status"] == 400
        assert json.loads(sent[1]["body"])["error"]["message"] == (
            "messages[0].content[1]: this server does not fetch media URLs (media.remote_fetch is off). "
            "Send the image as a data URL")
