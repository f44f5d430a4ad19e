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
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_middleware_passes_other_responses():
    body = {"query": "q", "documents": ["ok"]}
    sent = _run(_app(200, "fine"), body)
    assert json.loads(sent[1]["body"])["error"]["message"] == "fine"
    sent = _run(_app(400, "some other problem"), body)
    assert json.loads(sent[1]["body"])["error"]["message"] == "some other problem"
