import asyncio
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


def _policy_run(monkeypatch, body: bytes, **env):
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

    asyncio.run(PolicyMiddleware(app)({"type": "http", "method": "POST", "path": "/v1/embeddings",
                                       "headers": []}, receive, send))
    return sent[0]["status"], sent[1]["body"], reached


def test_policy_local_files(monkeypatch, tmp_path):
    allowed = tmp_path / "ok"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(b"x")
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    body = lambda p: json.dumps({"messages": [{"content": [{"type": "image_url", "image_url": {"url": f"file://{p}"}}]}]}).encode()  # noqa: E731
    status, out, reached = _policy_run(monkeypatch, body(allowed / "a.png"), QWEN3VL_LOCAL_MEDIA_DIR=str(allowed))
    assert status == 200 and reached
    for bad in (allowed / ".." / "secret.png", allowed / "link.png", "/etc/passwd"):
        status, out, reached = _policy_run(monkeypatch, body(bad), QWEN3VL_LOCAL_MEDIA_DIR=str(allowed))
        assert status == 400 and b"outside the allowed folder" in out and not reached
    status, out, reached = _policy_run(monkeypatch, body(allowed / "a.png"), QWEN3VL_LOCAL_MEDIA_DIR="")
    assert status == 400 and b"reads no local files" in out and not reached


def test_policy_body_limit_and_remote(monkeypatch):
    status, out, reached = _policy_run(monkeypatch, b"x" * 101, QWEN3VL_MAX_BODY_BYTES="100")
    assert status == 413 and not reached
    remote = json.dumps({"query": {"content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}}).encode()
    status, out, reached = _policy_run(monkeypatch, remote, QWEN3VL_REMOTE_MEDIA="0", QWEN3VL_MAX_BODY_BYTES="0")
    assert status == 400 and b"remote_fetch" in out and not reached
    status, out, reached = _policy_run(monkeypatch, remote, QWEN3VL_REMOTE_MEDIA="1", QWEN3VL_MAX_BODY_BYTES="0")
    assert status == 200 and reached == [remote]
