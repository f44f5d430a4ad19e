"""EmbeddingClient against an in-process fake (httpx.MockTransport): no server needed."""

import base64
import json
import threading
import time

import httpx
import numpy as np
import pytest

from qwen3vl_vllm import errors
from qwen3vl_vllm.clients.embedding import EmbeddingClient


def _vec(seed, d=8):
    v = np.random.RandomState(seed).randn(d).astype(np.float32)
    return v / np.linalg.norm(v)


def fake_server(seen):
    lock = threading.Lock()

    def handler(request: httpx.Request):
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})
        body = json.loads(request.content)
        with lock:
            seen.append(body)
        last = body["messages"][-1]["content"]
        text = "".join(p.get("text", "") for p in last if p["type"] == "text")
        if text == "boom":
            return httpx.Response(400, json={"error": {"message": "bad thing", "type": "BadRequestError", "code": 400}})
        seed = int(text.split()[-1]) if text.split() and text.split()[-1].isdigit() else 0
        time.sleep(0.01 * (seed % 3))  # answers arrive out of order
        emb = base64.b64encode(_vec(seed).tobytes()).decode() if body["encoding_format"] == "base64" else _vec(seed).tolist()
        return httpx.Response(200, json={"object": "list", "model": "m", "data": [{"index": 0, "object": "embedding", "embedding": emb}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_order_and_decoding():
    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", http_client=fake_server(seen), max_concurrency=4)
    out = c.embed([{"text": f"item {i}"} for i in range(10)])
    assert out.shape == (10, 8)
    for i in range(10):
        assert np.allclose(out[i], _vec(i))
    assert all(b["add_generation_prompt"] is True for b in seen)
    assert seen[0]["messages"][0] == {"role": "system", "content": "Represent the user's input."}


def test_image_sent_as_resized_png_data_url():
    from PIL import Image

    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server(seen))
    img = Image.new("RGB", (1200, 40), (10, 20, 30))
    c.embed([{"image": img, "text": "x 1", "instruction": "Find it"}])
    parts = seen[0]["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    import io
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (1216, 32)
    assert seen[0]["messages"][0]["content"] == "Find it."


def test_http_errors_are_typed():
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server([]), max_retries=0)
    with pytest.raises(errors.BadRequestError) as err:
        c.embed([{"text": "ok 1"}, {"text": "boom"}])
    assert err.value.status == 400
    assert "inputs[1]" in str(err.value) and "bad thing" in str(err.value)


def test_settings_resolution(monkeypatch):
    monkeypatch.setenv("QWEN3VL_BASE_URL", "http://env-host:1/v1")
    monkeypatch.setenv("QWEN3VL_MAX_CONCURRENCY", "3")
    c = EmbeddingClient(http_client=fake_server([]))
    assert c._s.base_url == "http://env-host:1/v1" and c._s.max_concurrency == 3
    c = EmbeddingClient(base_url="http://arg/v1", max_concurrency=5, http_client=fake_server([]))
    assert c._s.base_url == "http://arg/v1" and c._s.max_concurrency == 5
    monkeypatch.delenv("QWEN3VL_BASE_URL")
    assert EmbeddingClient(http_client=fake_server([]))._s.base_url == "http://127.0.0.1:8000/v1"


def test_connection_error_is_typed():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    c = EmbeddingClient(base_url="http://fake/v1", model="m", max_retries=0,
                        http_client=httpx.Client(transport=httpx.MockTransport(down)))
    with pytest.raises(errors.APIConnectionError, match="inputs\\[0\\]"):
        c.embed([{"text": "x"}])


def test_bad_media_fails_before_sending():
    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server(seen))
    with pytest.raises(errors.MediaError, match=r"^inputs\[1\]\.image\[0\]"):
        c.embed([{"text": "a 1"}, {"image": b"garbage"}])
    assert seen == []


def test_keyword_only():
    with pytest.raises(TypeError):
        EmbeddingClient("http://x/v1")  # noqa


def test_video_file_carries_its_fps_and_max_frames(tmp_path):
    from cases import write_mp4

    clip = write_mp4(tmp_path / "clip.mp4")
    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server(seen))
    c.embed([{"video": str(clip), "fps": 2, "max_frames": 6}, {"video": str(clip)}])
    heads = sorted(m["messages"][-1]["content"][0]["video_url"]["url"].split(",", 1)[0] for m in seen)
    assert heads == ["data:video/mp4;fps=1.0;max_frames=64;base64",
                     "data:video/mp4;fps=2.0;max_frames=6;base64"]


def test_frame_list_travels_as_original_frames():
    import base64 as b64
    import io

    from PIL import Image

    frames = [Image.new("LA", (50, 30), (k * 20, 128)) for k in range(3)]
    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server(seen))
    c.embed([{"video": frames}])
    url = seen[0]["messages"][-1]["content"][0]["video_url"]["url"]
    head, payload = url.split(",", 1)
    assert head == "data:video/jpeg;base64"
    sent = [Image.open(io.BytesIO(b64.b64decode(p))) for p in payload.split(",")]
    assert len(sent) == 3  # not stretched, not padded: the server does the reference's work
    for got, orig in zip(sent, frames, strict=True):
        assert got.mode == "RGB" and got.size == (50, 30)
        assert got.tobytes() == orig.convert("RGB").tobytes()


def test_frame_files_travel_as_their_own_bytes(tmp_path):
    """JPEG and PNG frame files are sent as they are (the server decodes them with the same RGB
    rule); other formats as a PNG of the reference's RGB conversion; a corrupt frame is named."""
    import base64 as b64
    import io

    from PIL import Image

    paths = []
    for k, fmt in enumerate(("JPEG", "PNG", "BMP")):
        p = tmp_path / f"f{k}.{fmt.lower()}"
        Image.new("RGB", (40, 30), (10 * k, 200, 30)).save(p, format=fmt)
        paths.append(p)
    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server(seen))
    c.embed([{"video": [str(p) for p in paths]}])
    url = seen[0]["messages"][-1]["content"][0]["video_url"]["url"]
    payloads = [b64.b64decode(x) for x in url.split(",", 1)[1].split(",")]
    assert payloads[0] == paths[0].read_bytes() and payloads[1] == paths[1].read_bytes()
    bmp = Image.open(io.BytesIO(payloads[2]))
    assert bmp.format == "PNG" and bmp.tobytes() == Image.open(paths[2]).convert("RGB").tobytes()
    (tmp_path / "bad.jpg").write_bytes(paths[0].read_bytes()[:40])
    with pytest.raises(errors.MediaError, match=r"^inputs\[0\]\.video\[0\]\.frames\[1\]"):
        c.embed([{"video": [str(paths[0]), str(tmp_path / "bad.jpg")]}])


def test_corrupt_video_file_named_before_sending(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    seen = []
    c = EmbeddingClient(base_url="http://fake/v1", model="m", http_client=fake_server(seen))
    with pytest.raises(errors.MediaError, match=r"^inputs\[0\]\.video\[0\]: cannot decode video"):
        c.embed([{"video": str(bad)}])
    assert seen == []


def test_retries_with_backoff_then_recovers():
    calls = {"n": 0}

    def flaky(request):
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})
        calls["n"] += 1
        if calls["n"] <= 2:
            raise httpx.ConnectError("down", request=request)
        if calls["n"] == 3:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, json={"object": "list", "model": "m", "data": [{"index": 0, "object": "embedding", "embedding": [1.0, 0.0]}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    c = EmbeddingClient(base_url="http://fake/v1", model="m", max_retries=3, backoff=0.01,
                        http_client=httpx.Client(transport=httpx.MockTransport(flaky)))
    out = c.embed([{"text": "x"}], encoding_format="float")
    assert calls["n"] == 4 and out.tolist() == [[1.0, 0.0]]


def test_retries_are_bounded_and_typed():
    calls = {"n": 0}

    def down(request):
        calls["n"] += 1
        raise httpx.ConnectError("refused", request=request)

    c = EmbeddingClient(base_url="http://fake/v1", model="m", max_retries=2, backoff=0.01,
                        http_client=httpx.Client(transport=httpx.MockTransport(down)))
    with pytest.raises(errors.APIConnectionError, match="after 3 attempts"):
        c.embed([{"text": "x"}])
    assert calls["n"] == 3


def test_no_retry_on_400():
    calls = {"n": 0}

    def bad(request):
        calls["n"] += 1
        return httpx.Response(400, json={"error": {"message": "nope"}})

    c = EmbeddingClient(base_url="http://fake/v1", model="m", max_retries=5, backoff=0.01,
                        http_client=httpx.Client(transport=httpx.MockTransport(bad)))
    with pytest.raises(errors.BadRequestError):
        c.embed([{"text": "x"}])
    assert calls["n"] == 1


def test_engine_gone_500_is_retried_as_unavailable():
    calls = {"n": 0}

    def dying(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(500, json={"error": {"message": "EngineCore encountered an issue. See stack trace"}})
        return httpx.Response(200, json={"object": "list", "model": "m", "data": [{"index": 0, "object": "embedding", "embedding": [0.0, 1.0]}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    c = EmbeddingClient(base_url="http://fake/v1", model="m", max_retries=1, backoff=0.01,
                        http_client=httpx.Client(transport=httpx.MockTransport(dying)))
    assert c.embed([{"text": "x"}], encoding_format="float").tolist() == [[0.0, 1.0]]
    assert calls["n"] == 2


@pytest.mark.parametrize("item", [{"text": "x"}, {"text": "x", "image": b"\x89PNG"}])
def test_any_500_is_retried(item, monkeypatch):
    """The server keeps 5xx for its own faults (an input fault is a named 400), so a 500 is
    worth another try; the image case is checked before sending, so use a valid image."""
    import io as _io

    from PIL import Image

    if "image" in item:
        buf = _io.BytesIO()
        Image.new("RGB", (40, 40), (1, 2, 3)).save(buf, format="PNG")
        item = {**item, "image": buf.getvalue()}
    calls = {"n": 0}

    def faulty(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(500, json={"error": {"message": "internal error: timed out"}})
        return httpx.Response(200, json={"object": "list", "model": "m", "data": [{"index": 0, "object": "embedding", "embedding": [0.0, 1.0]}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    c = EmbeddingClient(base_url="http://fake/v1", model="m", max_retries=1, backoff=0.01,
                        http_client=httpx.Client(transport=httpx.MockTransport(faulty)))
    assert c.embed([item], encoding_format="float").tolist() == [[0.0, 1.0]]
    assert calls["n"] == 2


# ---- both twins, the same behaviour (parametrised over sync and async)


def _twin(kind: str, handler, **kw):
    """A sync or async client over a fake transport, and a runner for its calls."""
    import asyncio

    from qwen3vl_vllm import AsyncEmbeddingClient, AsyncRerankClient, RerankClient

    sync_cls, async_cls = {"embed": (EmbeddingClient, AsyncEmbeddingClient),
                           "rerank": (RerankClient, AsyncRerankClient)}[kind]
    if kw.pop("asynchronous"):
        client = async_cls(base_url="http://fake/v1", model="m", max_retries=0,
                           http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)), **kw)
        return client, lambda coro: asyncio.run(coro)
    client = sync_cls(base_url="http://fake/v1", model="m", max_retries=0,
                      http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)
    return client, lambda value: value


@pytest.mark.parametrize("asynchronous", [False, True])
def test_twins_send_nothing_for_empty_input(asynchronous):
    calls = []

    def handler(request):
        calls.append(request.url.path)
        return httpx.Response(500)

    client, run = _twin("embed", handler, asynchronous=asynchronous)
    out = run(client.embed([]))
    assert out.shape == (0, 0) and calls == []


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("answered", [1, 3])
def test_twins_check_the_score_count(asynchronous, answered):
    def handler(request):
        data = [{"index": i, "object": "score", "score": 0.5} for i in range(answered)]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m",
                                         "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    client, run = _twin("rerank", handler, asynchronous=asynchronous)
    with pytest.raises(errors.InputError, match=f"server answered {answered} scores for 2 documents"):
        run(client.score({"text": "q"}, [{"text": "a"}, {"text": "b"}]))
