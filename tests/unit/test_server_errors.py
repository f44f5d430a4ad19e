import asyncio

import pytest
import base64
import io
import json

from PIL import Image

from qwen3vl_vllm.serving.error_naming import NameBadItemsMiddleware, find_bad_item


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
    from qwen3vl_vllm.serving.policy import PolicyMiddleware

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
        text = json.loads(sent[1]["body"])["error"]["message"]
        assert text.startswith("messages[0].content[1]: this server does not fetch media URLs"), text
        assert "Send the image as a data URL" in text and "media.remote_fetch: true" in text


@pytest.mark.parametrize("message", [
    "EngineCore encountered an issue: request timed out",
    "Connection refused by the engine core",
    "Failed to load the model output",
    "Read timed out.",
])
@pytest.mark.parametrize("with_image", [False, True])
def test_engine_faults_stay_5xx(message, with_image):
    """Only an input fault that names an input becomes a 4xx: an engine-side failure on a text
    request or on a request with a valid image stays 500 (and clients retry it)."""
    content = [{"type": "text", "text": "x"}]
    if with_image:
        content.append({"type": "image_url", "image_url": {"url": _good()}})
    body = {"messages": [{"role": "user", "content": content}]}
    sent = _run(_app(500, message), body, path="/v1/embeddings")
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["message"] == message

    async def raising(scope, receive, send):  # vLLM letting an exception escape
        await receive()
        raise RuntimeError(message)

    with pytest.raises(RuntimeError, match=message.split(":")[0]):
        _run(raising, body, path="/v1/embeddings")


def test_naming_runs_off_the_event_loop_and_is_bounded(monkeypatch):
    """Decoding for the error message happens in a worker thread: the event loop keeps
    serving (a heartbeat task keeps ticking while a slow decode runs), and a decode that takes
    longer than the bound leaves the error unchanged."""
    import threading
    import time

    from qwen3vl_vllm.serving import error_naming as se

    loop_thread = {}
    real = se._decodes

    def slow_decodes(url, kind, deadline=None):
        loop_thread["decode"] = threading.get_ident()
        time.sleep(0.3)
        return real(url, kind, deadline)

    monkeypatch.setattr(se, "_decodes", slow_decodes)
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BAD}}]}]}
    ticks = []

    async def main():
        loop_thread["loop"] = threading.get_ident()
        stop = asyncio.Event()

        async def heartbeat():
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        hb = asyncio.create_task(heartbeat())
        sent = []
        chunks = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

        async def receive():
            return chunks.pop(0)

        async def send(m):
            sent.append(m)

        await NameBadItemsMiddleware(_app(400, "Failed to load image: cannot identify image file"))(
            {"type": "http", "method": "POST", "path": "/v1/embeddings"}, receive, send)
        stop.set()
        await hb
        return sent

    sent = asyncio.run(main())
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("messages[0].content[0]")
    assert loop_thread["decode"] != loop_thread["loop"]
    assert len(ticks) >= 8, ticks  # the loop ticked during the 0.3 s decode
    monkeypatch.setattr(se, "NAMING_TIMEOUT_S", 0.05)
    sent = _run(_app(400, "Failed to load image: cannot identify image file"), body, path="/v1/embeddings")
    assert json.loads(sent[1]["body"])["error"]["message"] == "Failed to load image: cannot identify image file"


def test_oversized_items_are_not_decoded(monkeypatch):
    from qwen3vl_vllm.serving import error_naming as se

    monkeypatch.setattr(se, "MAX_DECODE_BYTES", 4)
    assert se._decodes(BAD, "image") is True  # not judged: too large for the bound
    monkeypatch.setattr(se, "MAX_DECODE_BYTES", 10**6)
    assert se._decodes(BAD, "image") is False


def test_policy_body_limit_is_on_by_default(monkeypatch):
    from qwen3vl_vllm.serving.policy import DEFAULT_MAX_BODY_BYTES, PolicyMiddleware

    monkeypatch.delenv("QWEN3VL_MAX_BODY_BYTES", raising=False)
    assert PolicyMiddleware(None).max_body == DEFAULT_MAX_BODY_BYTES == 64 * 1024 * 1024
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(True)

    async def send(m):
        sent.append(m)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    headers = [(b"content-length", str(DEFAULT_MAX_BODY_BYTES + 1).encode())]
    asyncio.run(PolicyMiddleware(app)({"type": "http", "method": "POST", "path": "/v1/embeddings",
                                       "headers": headers}, receive, send))
    assert sent[0]["status"] == 413 and not reached
    assert "limit of 67108864" in json.loads(sent[1]["body"])["error"]["message"]
    monkeypatch.setenv("QWEN3VL_MAX_BODY_BYTES", "0")
    assert PolicyMiddleware(None).max_body == 0  # explicitly off


def test_connector_errors_are_named_by_key_without_decoding(monkeypatch):
    """The media connector tags its errors with the payload's key; the middleware finds the
    item by it, decoding nothing (a 20 MB image is not decoded twice)."""
    from qwen3vl_vllm.serving import error_naming as se
    from qwen3vl_vllm.errors import MediaError
    from qwen3vl_vllm.serving.media_connector import ReferenceImageIO, ReferenceVideoIO

    monkeypatch.setattr(se, "_decodes", lambda *a: pytest.fail("decoded again"))
    good = _good().split(",", 1)[1]
    bad = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 64).decode()
    for io_, payload, kind, suffix in (
            (ReferenceImageIO(min_pixels=4096, max_pixels=1843200), bad, "image", ""),
            (ReferenceVideoIO(fps=1.0, max_frames=64, frame_list_max_frames=64, total_pixels=7864320),
             f"{good},{bad}", "video", ".frames[1]")):
        mime = "image/png" if kind == "image" else "video/jpeg"
        with pytest.raises(MediaError) as err:
            io_.load_base64(mime, payload)
        body = {"messages": [{"role": "user", "content": [
            {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{good}"}},
            {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{payload}"}}]}]}
        sent = _run(_app(400, str(err.value)), body, path="/v1/embeddings")
        message = json.loads(sent[1]["body"])["error"]["message"]
        assert message.startswith(f"messages[0].content[1]{suffix}: cannot decode the {kind}"), message
        assert "item#" not in message


def test_items_sharing_their_start_and_length_are_told_apart():
    """The payload key is a digest of the whole payload: two images with the same length and the
    same first 4 KB (which the former fingerprint could not tell apart) are named correctly."""
    from qwen3vl_vllm.serving.error_naming import payload_key

    head = "A" * 5000
    good, bad = head + "B" * 100, head + "C" * 100
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + good}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + bad}}]}]}
    sent = _run(_app(400, f"item#{payload_key(bad)}: cannot decode image: broken"), body,
                path="/v1/embeddings")
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("messages[0].content[1]: "), sent


def test_naming_stops_when_its_time_is_up(monkeypatch):
    """The search checks its deadline between items: past it, no further item is decoded and
    the original error goes out."""
    import time

    from qwen3vl_vllm.serving import error_naming as se

    calls = []

    def slow(url, kind, deadline=None):
        calls.append(time.monotonic())
        time.sleep(0.05)
        return True

    monkeypatch.setattr(se, "_decodes", slow)
    body = {"documents": [{"content": [{"type": "image_url", "image_url": {"url": BAD}}]}] * 200}
    t0 = time.monotonic()
    assert find_bad_item(body, "Failed to load image", deadline=t0 + 0.2) is None
    assert len(calls) <= 6 and time.monotonic() - t0 < 2, len(calls)  # stopped, not 200 decodes


def test_busy_pool_is_a_503_with_retry_after():
    from qwen3vl_vllm.media.budget import BUSY_MARKER

    body = {"query": "q", "documents": ["a"]}
    sent = _run(_app(500, f"{BUSY_MARKER} documents[0]: the server holds as much decoded media as "
                          "it may (4.00 GiB, QWEN3VL_MAX_DECODED_BYTES_IN_FLIGHT); retry shortly"), body)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"2") in sent[0]["headers"]
    message = json.loads(sent[1]["body"])["error"]["message"]
    assert message.startswith("documents[0]: the server holds") and BUSY_MARKER not in message


def test_every_post_route_is_watched():
    """/invocations, /v2/embed and any route a later vLLM adds get their media errors named."""
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BAD}}]}]}
    for path in ("/invocations", "/v2/embed", "/some/new/route"):
        sent = _run(_app(400, "Failed to load image: cannot identify image file"), body, path=path)
        assert sent[0]["status"] == 400
        assert json.loads(sent[1]["body"])["error"]["message"].startswith("messages[0].content[0]"), path


def test_over_long_inputs_get_the_fix_named():
    too_long = ("This model's maximum context length is 8192 tokens. However, your prompt contains "
                "at least 8193 input tokens.")
    sent = _run(_app(400, too_long), {"model": "m", "input": "x"}, path="/v1/embeddings")
    message = json.loads(sent[1]["body"])["error"]["message"]
    assert message.startswith(too_long[:-1]) and '"truncate_prompt_tokens": -1' in message
    assert "QWEN3VL_TRUNCATE=1" in message
    sent = _run(_app(400, too_long), {"query": "q", "documents": ["d"]}, path="/v1/rerank")
    assert "fewer frames" in json.loads(sent[1]["body"])["error"]["message"]


def test_text_that_is_not_unicode_is_named():
    """vLLM passes on the tokenizer's TypeError for a lone surrogate ("TextEncodeInput must be
    Union[...]"), naming no text: the 400 names the first such text by its place."""
    raw = "TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]"
    cases = [({"model": "m", "input": ["fine", "cut \ud83d"]}, "/v1/embeddings", "input[1]", "U+D83D at character 4"),
             ({"query": "q", "documents": ["a", {"text": "\udc00"}]}, "/v1/rerank", "documents[1].text", "U+DC00"),
             ({"messages": [{"role": "user", "content": [{"type": "text", "text": "ok"},
                                                          {"type": "text", "text": "x\ud800"}]}]},
              "/v1/embeddings", "messages[0].content[1].text", "U+D800 at character 1")]
    for body, path, where, char in cases:
        sent = _run(_app(400, raw), body, path=path)
        message = json.loads(sent[1]["body"])["error"]["message"]
        assert sent[0]["status"] == 400 and message.startswith(
            f"{where}: text is not valid Unicode: a lone surrogate {char}"), message
    # no such text in the body: vLLM's message is passed on as it was
    sent = _run(_app(400, raw), {"model": "m", "input": "fine"}, path="/v1/embeddings")
    assert json.loads(sent[1]["body"])["error"]["message"] == raw


def _texts_body(n: int) -> bytes:
    return json.dumps({"model": "m", "input": ["a"] * n}).encode()


@pytest.mark.parametrize("body,field,n", [
    ({"input": ["a"] * 2049}, "input", 2049),
    ({"input": [[1, 2]] * 2049}, "input", 2049),                      # token-id prompts
    ({"texts": ["t"] * 3000, "input_type": "search_document"}, "texts", 3000),   # Cohere /v2/embed
    ({"images": ["data:image/png;base64,AA=="] * 2049}, "images", 2049),
    ({"query": "q", "documents": ["d"] * 2049}, "documents", 2049),  # rerank
    ({"text_1": "q", "text_2": ["d"] * 2500}, "text_2", 2500),        # score
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}] * 2049}]},
     "messages", 2049),
])
def test_policy_item_limit_names_the_field(monkeypatch, body, field, n):
    """More than 2,048 items in any list a request carries: 400 naming the field, the count and
    the fix, on any path, before the app (vLLM) reads a byte."""
    monkeypatch.delenv("QWEN3VL_MAX_ITEMS_PER_REQUEST", raising=False)
    for path in ("/v1/embeddings", "/v2/embed", "/invocations", "/score", "/pooling"):
        status, out, reached = _policy_run(monkeypatch, json.dumps(body).encode(), path=path)
        msg = json.loads(out)["error"]["message"]
        assert status == 400 and not reached, (path, msg)
        assert msg.startswith(f"{field}: {n} ") and "limit of 2048" in msg, msg
        assert "QWEN3VL_MAX_ITEMS_PER_REQUEST" in msg and "at most 2048 per request" in msg


def test_policy_item_limit_passes_what_fits(monkeypatch):
    monkeypatch.delenv("QWEN3VL_MAX_ITEMS_PER_REQUEST", raising=False)
    body = _texts_body(2048)
    status, out, reached = _policy_run(monkeypatch, body)
    assert status == 200 and reached == [body]  # the same bytes, read once
    flat = json.dumps({"input": list(range(5000))}).encode()  # one prompt of token ids
    status, out, reached = _policy_run(monkeypatch, flat)
    assert status == 200 and reached == [flat]
    junk = b"{" * 5000  # not JSON: vLLM's own validation answers it
    status, out, reached = _policy_run(monkeypatch, junk)
    assert status == 200 and reached == [junk]
    deep = b"[" * 5000 + b"]" * 5000  # JSON that Python's parser cannot read: a 400, not a 500
    status, out, reached = _policy_run(monkeypatch, deep)
    assert status == 400 and not reached
    assert "nested too deeply" in json.loads(out)["error"]["message"]


def test_policy_item_limit_setting(monkeypatch):
    from qwen3vl_vllm.serving.policy import PolicyMiddleware, max_items

    monkeypatch.delenv("QWEN3VL_MAX_ITEMS_PER_REQUEST", raising=False)
    assert max_items() == PolicyMiddleware(None).max_items == 2048
    status, out, _ = _policy_run(monkeypatch, _texts_body(11), QWEN3VL_MAX_ITEMS_PER_REQUEST="10")
    assert status == 400 and "input: 11 items" in json.loads(out)["error"]["message"]
    status, _, reached = _policy_run(monkeypatch, _texts_body(5000), QWEN3VL_MAX_ITEMS_PER_REQUEST="0")
    assert status == 200 and reached  # off
    for bad in ("-1", "lots"):
        with pytest.raises(ValueError, match="QWEN3VL_MAX_ITEMS_PER_REQUEST"):
            max_items({"QWEN3VL_MAX_ITEMS_PER_REQUEST": bad})


def test_policy_item_limit_reads_no_small_body(monkeypatch):
    """A body of at most 2 bytes per allowed item cannot go over: with its length known, the
    middleware passes its stream on untouched (the app reads it chunk by chunk)."""
    from qwen3vl_vllm.serving.policy import PolicyMiddleware

    monkeypatch.delenv("QWEN3VL_MAX_ITEMS_PER_REQUEST", raising=False)
    parts = [b'{"input": ', b'"hello"}']
    chunks = [{"type": "http.request", "body": c, "more_body": i == 0} for i, c in enumerate(parts)]
    got = []

    async def receive():
        return chunks.pop(0)

    async def app(scope, receive_, send):
        got.append(await receive_())
        got.append(await receive_())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(m):
        pass

    headers = [(b"content-length", str(sum(map(len, parts))).encode())]
    asyncio.run(PolicyMiddleware(app)({"type": "http", "method": "POST", "path": "/v1/embeddings",
                                       "headers": headers}, receive, send))
    assert [m["body"] for m in got] == parts  # two chunks: not buffered
