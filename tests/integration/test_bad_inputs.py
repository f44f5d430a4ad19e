"""The bad-input matrix: every case gets a 4xx naming the item (server) or a typed error
(client, offline), and the server keeps answering good requests correctly afterwards."""

from __future__ import annotations

from pathlib import Path

import json

import httpx
import numpy as np
import pytest

from cases import (b64, corrupt_mp4, crafted_png, data_url, frames, noise_image, png_bytes,
                   truncated_png, zero_frame_mp4)

pytestmark = pytest.mark.slow
GOOD_FRAME = b64(png_bytes(noise_image(64, 64, 1)))


def _img(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _vid(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def media_cases(tmp: Path) -> dict[str, tuple[dict, str]]:
    """name -> (content part, fragment expected in the 4xx message)."""
    from qwen3vl_vllm.ops.launcher import free_port

    closed = free_port()
    return {
        "corrupt image bytes": (_img("data:image/png;base64," + b64(b"\x89PNG\r\n\x1a\nrubbish")), "cannot decode the image"),
        "truncated PNG": (_img("data:image/png;base64," + b64(truncated_png())), "cannot decode the image"),
        "data URL not an image": (_img("data:text/plain;base64," + b64(b"hello there")), "image"),
        "zero-size image": (_img("data:image/png;base64," + b64(crafted_png(0, 0))), "cannot decode the image"),
        "decompression bomb": (_img("data:image/png;base64," + b64(crafted_png(30000, 30000))), "decompression bomb"),
        "unsupported URL scheme": (_img("ftp://127.0.0.1/x.png"), "must be either a HTTP, data or file URL"),
        # plain `vllm serve` fetches no URL unless enabled (test_security: fetches when enabled)
        "media URL, fetches off": (_img(f"http://127.0.0.1:{closed}/x.png"), "does not fetch media URLs"),
        "file:// outside allowed folder": (_img("file:///etc/hostname"), "reads no local files"),
        "corrupt mp4": (_vid("data:video/mp4;base64," + b64(corrupt_mp4())), "video"),
        "zero-frame video": (_vid("data:video/mp4;base64," + b64(zero_frame_mp4(tmp / "zero.mp4"))), "video"),
        "frame list with a bad frame": (_vid(f"data:video/jpeg;base64,{GOOD_FRAME},{b64(b'nope')}"), "cannot decode the video"),
    }


MEDIA_NAMES = list(media_cases(Path("/tmp/qwen3vl-bad-names")).keys())


@pytest.fixture(scope="module")
def bad_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


def _embed_body(model, content, **extra):
    return {"model": model, "add_generation_prompt": True,
            "messages": [{"role": "system", "content": "Represent the user's input."},
                         {"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def emb(embedding_server):
    model = httpx.get(embedding_server.base_url + "/models", timeout=30).json()["data"][0]["id"]
    good = httpx.post(embedding_server.base_url + "/embeddings", timeout=60,
                      json=_embed_body(model, [{"type": "text", "text": "the good request"}]))
    assert good.status_code == 200
    return embedding_server, model, np.asarray(good.json()["data"][0]["embedding"])


def _still_good(emb):
    server, model, expected = emb
    r = httpx.post(server.base_url + "/embeddings", timeout=60,
                   json=_embed_body(model, [{"type": "text", "text": "the good request"}]))
    assert r.status_code == 200
    assert float(np.dot(np.asarray(r.json()["data"][0]["embedding"]), expected)) > 0.99999


@pytest.mark.parametrize("case", MEDIA_NAMES)
def test_server_embedding_media(case, emb, bad_tmp):
    server, model, _ = emb
    part, fragment = media_cases(bad_tmp)[case]
    r = httpx.post(server.base_url + "/embeddings", timeout=60,
                   json=_embed_body(model, [{"type": "text", "text": "x"}, part]))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    msg = r.json()["error"]["message"]
    assert fragment.lower() in msg.lower(), msg
    if "decode" in fragment or "load the" in fragment or "bomb" in fragment or "fetch" in fragment:
        assert msg.startswith("messages[1].content[1]"), msg
    _still_good(emb)


@pytest.mark.parametrize("case,body_extra,fragment", [
    ("text over max length", {"messages": [{"role": "user", "content": "hello " * 9000}]}, "maximum context length"),
    ("too many images", {"messages": [{"role": "user", "content": [_img(data_url(noise_image(32, 32, i))) for i in range(17)]}]}, "At most 16 image(s)"),
    ("dimensions 0", {"dimensions": 0}, "dimensions"),
    ("dimensions negative", {"dimensions": -3}, "dimensions"),
    ("dimensions above model size", {"dimensions": 65}, "dimensions"),
    ("wrong JSON type: messages", {"messages": "hello"}, "body.messages"),
    ("wrong JSON type: dimensions", {"dimensions": "sixty-four"}, "body.dimensions"),
])
def test_server_embedding_requests(case, body_extra, fragment, emb):
    server, model, _ = emb
    body = {**_embed_body(model, [{"type": "text", "text": "x"}]), **body_extra}
    r = httpx.post(server.base_url + "/embeddings", timeout=60, json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert fragment in r.json()["error"]["message"], r.text
    _still_good(emb)


@pytest.fixture(scope="module")
def rr(reranker_server):
    good = httpx.post(reranker_server.url + "/v1/rerank", timeout=60,
                      json={"query": "a cat", "documents": ["a cat", "a dog"]})
    assert good.status_code == 200
    return reranker_server, good.json()["results"]


def _rr_still_good(rr):
    server, expected = rr
    r = httpx.post(server.url + "/v1/rerank", timeout=60, json={"query": "a cat", "documents": ["a cat", "a dog"]})
    assert r.status_code == 200 and r.json()["results"] == expected


@pytest.mark.parametrize("case", MEDIA_NAMES)
def test_server_rerank_media(case, rr, bad_tmp):
    server, _ = rr
    part, fragment = media_cases(bad_tmp)[case]
    r = httpx.post(server.url + "/v1/rerank", timeout=60, json={
        "query": "a cat", "documents": ["fine", {"content": [part]}, "also fine"]})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    msg = r.json()["error"]["message"]
    assert fragment.lower() in msg.lower(), msg
    if "decode" in fragment or "load the" in fragment or "bomb" in fragment or "fetch" in fragment:
        assert msg.startswith("documents[1].content[0]"), msg
    _rr_still_good(rr)


@pytest.mark.parametrize("case,body,fragment", [
    ("empty documents", {"query": "a cat", "documents": []}, "documents: empty"),
    ("empty query", {"query": {"content": []}, "documents": ["a"]}, "query: empty"),
    ("top_n above documents", {"query": "a cat", "documents": ["a", "b"], "top_n": 3}, "top_n: 3 is out of range"),
    ("top_n negative", {"query": "a cat", "documents": ["a", "b"], "top_n": -1}, "top_n"),
    ("wrong JSON type: documents", {"query": "a cat", "documents": 5}, "body.documents"),
    # a too-long text pair is cut as the reference cuts it (test_rerank_server); with a video, text
    # alone over the limit is refused by vLLM's tokenizer check (text + video over it: fewer frames,
    # test_long_videos)
    ("pair over max length with a video", {"query": "hello " * 11000, "documents": [{"content": [
        {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(
            b64(png_bytes(f)) for f in frames(2))}}]}]}, "maximum context length"),
    # the reference keeps every special token when it cuts, also those a text spells out: a
    # document of 11,000 "<|endoftext|>" stays over the limit after its cut
    ("pair of special tokens over max length", {"query": "q", "documents": ["<|endoftext|>" * 11000]},
     "nor one whose special tokens alone (the reference keeps them all, also when a text spells "
     "them, e.g. \"<|im_end|>\") are over the limit"),
])
def test_server_rerank_requests(case, body, fragment, rr):
    server, _ = rr
    r = httpx.post(server.url + "/v1/rerank", timeout=60, json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert fragment in r.json()["error"]["message"], r.text
    _rr_still_good(rr)


# half of a UTF-16 pair, as a JavaScript client sends a string sliced through an emoji
# (JSON.stringify writes it as "\ud83d"); the openai SDK and httpx cannot send one at all
CUT_EMOJI = "cut \ud83d"


@pytest.mark.parametrize("server_kind,path,body,where", [
    ("emb", "/v1/embeddings", {"input": ["fine", CUT_EMOJI]}, "input[1]"),
    ("emb", "/v1/embeddings", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": CUT_EMOJI}]}]}, "messages[0].content[0].text"),
    ("emb", "/v2/embed", {"texts": [CUT_EMOJI], "input_type": "search_document",
                          "embedding_types": ["float"]}, "texts[0]"),
    ("rr", "/v1/rerank", {"query": "q", "documents": ["fine", CUT_EMOJI]}, "documents[1]"),
    ("rr", "/v1/score", {"text_1": CUT_EMOJI, "text_2": ["fine"]}, "text_1"),
])
def test_text_that_is_not_unicode_gets_a_400_naming_it(server_kind, path, body, where, emb, rr):
    server, model = (emb[0], emb[1]) if server_kind == "emb" else (rr[0], None)
    raw = json.dumps({**({"model": model} if model else {}), **body}).encode()  # ASCII: "\ud83d"
    assert b"\\ud83d" in raw
    r = httpx.post(server.url + path, content=raw, timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text[:300])
    message = r.json()["error"]["message"]
    assert message.startswith(f"{where}: text is not valid Unicode: a lone surrogate U+D83D at "
                              "character 4. Send valid Unicode text"), message
    _still_good(emb)
    _rr_still_good(rr)


# ---- the same bad items through the clients: typed errors naming the item, nothing sent


def client_cases(tmp: Path) -> dict[str, tuple[dict, type, str]]:
    from qwen3vl_vllm.errors import InputError, MediaError

    bad_frames = frames(2) + [b"not a frame"]
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "corrupt.mp4").write_bytes(corrupt_mp4())
    zero = tmp / "zero2.mp4"
    zero_frame_mp4(zero)
    return {
        "corrupt image bytes": ({"image": b"\x89PNG\r\n\x1a\nrubbish"}, MediaError, "inputs[0].image[0]: cannot decode image"),
        "truncated PNG": ({"image": truncated_png()}, MediaError, "truncated"),
        "data URL not an image": ({"image": "data:text/plain;base64," + b64(b"hi")}, MediaError, "not a recognised image format"),
        "zero-size image": ({"image": crafted_png(0, 0)}, MediaError, "inputs[0].image[0]"),
        "decompression bomb": ({"image": crafted_png(30000, 30000)}, MediaError, "decompression bomb"),
        "unsupported URL scheme": ({"image": "ftp://127.0.0.1/x.png"}, MediaError, "unsupported URL scheme"),
        "corrupt mp4": ({"video": str(tmp / "corrupt.mp4")}, MediaError, "inputs[0].video[0]: cannot decode video"),
        "zero-frame video": ({"video": str(zero)}, MediaError, "inputs[0].video[0]"),
        "frame list with a bad frame": ({"video": bad_frames}, MediaError, "inputs[0].video[0].frames["),
        "wrong type": ({"text": 5}, InputError, "inputs[0].text[0]: text must be a string"),
        "lone surrogate": ({"text": CUT_EMOJI}, InputError,
                           "inputs[0].text[0]: text is not valid Unicode: a lone surrogate U+D83D"),
        "unknown key": ({"txet": "typo"}, InputError, "unknown key(s) ['txet']"),
    }


@pytest.mark.parametrize("case", list(client_cases(Path("/tmp/qwen3vl-bad-client-names"))))
def test_client_typed_errors(case, embedding_server, bad_tmp):
    from qwen3vl_vllm import EmbeddingClient

    item, exc, fragment = client_cases(bad_tmp)[case]
    with EmbeddingClient(base_url=embedding_server.base_url) as client:
        with pytest.raises(exc) as err:
            client.embed([item])
        assert fragment in str(err.value)
        ok = client.embed([{"text": "fine"}])
        assert ok.shape == (1, 64)


@pytest.mark.parametrize("dims", [0, -1, 65])
def test_client_dimensions(dims, embedding_server):
    from qwen3vl_vllm import EmbeddingClient
    from qwen3vl_vllm.errors import BadRequestError, InputError

    with EmbeddingClient(base_url=embedding_server.base_url) as client:
        with pytest.raises((InputError, BadRequestError)) as err:
            client.embed([{"text": "x"}], dimensions=dims)
        assert "dimensions" in str(err.value)


def test_client_text_over_max_length(embedding_server):
    from qwen3vl_vllm import EmbeddingClient
    from qwen3vl_vllm.errors import BadRequestError

    with EmbeddingClient(base_url=embedding_server.base_url) as client:
        with pytest.raises(BadRequestError, match=r"inputs\[1\].*maximum context length"):
            client.embed([{"text": "ok"}, {"text": "hello " * 9000}])


def test_rerank_client_errors(reranker_server):
    from qwen3vl_vllm import RerankClient
    from qwen3vl_vllm.errors import InputError, MediaError

    with RerankClient(base_url=reranker_server.base_url) as rc:
        with pytest.raises(InputError, match="documents"):
            rc.rerank({"text": "q"}, [])
        with pytest.raises(InputError, match="query"):
            rc.rerank({}, [{"text": "d"}])
        for top_n in (0, 3, -1, True):
            with pytest.raises(InputError, match="top_n"):
                rc.rerank({"text": "q"}, [{"text": "a"}, {"text": "b"}], top_n=top_n)
        with pytest.raises(MediaError, match=r"^documents\[1\]\.image\[0\]"):
            rc.rerank({"text": "q"}, [{"text": "a"}, {"image": crafted_png(30000, 30000)}])
        assert len(rc.score({"text": "q"}, [{"text": "a"}])) == 1


def test_every_case_expects_a_message(bad_tmp):
    """An empty expected fragment would match any message: every case names what it expects."""
    assert all(fragment.strip() for _, fragment in media_cases(bad_tmp).values())
    assert all(fragment.strip() for _, _, fragment in client_cases(bad_tmp / "c").values())
