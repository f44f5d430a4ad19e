"""The request limits (``serving.request_limits``) and the middleware that applies them.

Expected values are written out by hand from each body: the characters of every text, a rerank
query once per document.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from qwen3vl_vllm.serving.request_limits import item_counts, text_problem

IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 400}}


def _where(body, max_text=10, max_total=0):
    problem = text_problem(body, max_text=max_text, max_total=max_total)
    return problem and problem.split(":", 1)[0]


@pytest.mark.parametrize("body,where", [
    ({"input": "x" * 11}, "input"),
    ({"input": ["ok", "x" * 11]}, "input[1]"),
    ({"prompt": "x" * 11}, "prompt"),                                       # /tokenize
    ({"tokens": list(range(11))}, "tokens"),                                # /detokenize
    ({"input": [list(range(3)), list(range(11))]}, "input[1]"),            # token id prompts
    ({"texts": ["a", "x" * 11], "input_type": "search_query"}, "texts[1]"),  # Cohere embed
    ({"inputs": [{"content": [IMG, {"type": "text", "text": "x" * 11}]}]}, "inputs[0].content[1].text"),
    ({"messages": [{"role": "user", "content": "x" * 11}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [IMG, {"type": "text", "text": "x" * 11}]}]},
     "messages[0].content[1].text"),
    ({"query": "x" * 11, "documents": ["a"]}, "query"),
    ({"query": "q", "documents": ["a", "x" * 11]}, "documents[1]"),
    ({"query": "q", "documents": [{"text": "x" * 11}]}, "documents[0].text"),            # Cohere
    ({"query": "q", "documents": [{"content": [{"type": "text", "text": "x" * 11}]}]},
     "documents[0].content[0].text"),
    ({"text_1": "q", "text_2": ["x" * 11]}, "text_2[0]"),
    ({"data_1": {"content": [{"type": "text", "text": "x" * 11}]}, "data_2": "d"}, "data_1.content[0].text"),
    ({"queries": ["q"], "items": ["x" * 11]}, "items[0]"),
])
def test_a_text_over_the_limit_is_named_by_its_place(body, where):
    assert _where(body) == where
    message = text_problem(body, max_text=10, max_total=0)
    assert " 11 " in message and "limit of 10" in message and "QWEN3VL_MAX_TEXT_CHARS" in message
    assert text_problem(body, max_text=11, max_total=0) is None  # at the limit: fine
    assert text_problem(body, max_text=0, max_total=0) is None   # off


def test_media_is_never_counted_as_text():
    body = {"messages": [{"role": "user", "content": [IMG, {"type": "video_url", "video_url": {"url": "x" * 500}}]}],
            "images": ["data:image/png;base64," + "A" * 500], "query": {"content": [IMG]},
            "documents": [{"content": [IMG]}] * 3}
    assert text_problem(body, max_text=10, max_total=10) is None


def test_a_query_counts_once_per_document():
    # 10 query characters x 3 documents + 1 + 1 + 2 document characters = 34
    body = {"query": "q" * 10, "documents": ["a", "b", "cc"]}
    assert text_problem(body, max_text=0, max_total=34) is None
    message = text_problem(body, max_text=0, max_total=33)
    assert message.startswith("query: 10 characters, tokenised once per document (3 documents): "
                              "34 characters for this request, above this server's limit of 33")
    assert "QWEN3VL_MAX_REQUEST_TEXT_CHARS" in message
    # the same for every spelling of a scoring request, and a one-element query list
    for q, d in (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "items"), ("queries", "documents")):
        assert _where({q: "q" * 10, d: ["a", "b", "cc"]}, 0, 33) == q
        assert _where({q: ["q" * 10], d: ["a", "b", "cc"]}, 0, 33) == q
    # pairwise lists: each query once, as sent (10 + 10 + 1 + 1 = 22)
    assert text_problem({"text_1": ["q" * 10] * 2, "text_2": ["a", "b"]}, max_text=0, max_total=22) is None
    # a multimodal query: only its text counts
    assert text_problem({"query": {"content": [IMG, {"type": "text", "text": "q" * 10}]},
                         "documents": ["a", "b", "cc"]}, max_text=0, max_total=33).startswith("query: 10 ")


def test_a_request_counts_all_its_texts():
    body = {"input": ["abc", "de", list(range(4))]}  # 3 + 2 + 4 token ids = 9
    assert text_problem(body, max_text=0, max_total=9) is None
    assert text_problem(body, max_text=0, max_total=8).startswith("request: 9 characters of text")


def test_random_bodies_count_what_they_carry():
    """Bodies built from a seed: a text one over the limit, placed anywhere, is always found and
    named; a body whose texts are all at the limit always passes."""
    rng = random.Random(26)
    shapes = [
        lambda t: {"input": t},
        lambda t: {"input": ["a", t, "b"]},
        lambda t: {"prompt": t},
        lambda t: {"texts": [t]},
        lambda t: {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [IMG, {"type": "text", "text": t}]}]},
        lambda t: {"query": t, "documents": ["d"]},
        lambda t: {"query": "q", "documents": ["d", {"text": t}]},
        lambda t: {"query": "q", "documents": [{"content": [IMG, {"type": "text", "text": t}]}]},
        lambda t: {"text_1": ["q"], "text_2": [t]},
        lambda t: {"data_1": "q", "data_2": [{"content": [{"type": "text", "text": t}]}]},
    ]
    for _ in range(200):
        limit = rng.randint(1, 300)
        shape = rng.choice(shapes)
        alphabet = rng.choice(["ab ", "字符", "é\u0301", "\n\t ", "😀x"])
        over = "".join(rng.choice(alphabet) for _ in range(limit + 1))
        at = over[:limit]
        assert text_problem(shape(over), max_text=limit, max_total=0) is not None, (shape(over), limit)
        assert f": {limit + 1} characters in one text" in text_problem(shape(over), max_text=limit, max_total=0)
        assert text_problem(shape(at), max_text=limit, max_total=0) is None


def test_data_fields_and_messages_count_as_items():
    assert item_counts({"data_1": "q", "data_2": ["d"] * 5}) == {"data_2": 5}
    # every message is rendered: a string content is one part, a list one per part
    body = {"messages": [{"role": "user", "content": "a"}] * 3 + [{"role": "user", "content": [IMG, IMG]}]}
    assert item_counts(body) == {"messages": 5}


def test_settings(monkeypatch):
    from qwen3vl_vllm.serving.request_limits import max_request_text_chars, max_text_chars

    assert max_text_chars({}) == 4 * 1024 * 1024 and max_request_text_chars({}) == 16 * 1024 * 1024
    assert max_text_chars({"QWEN3VL_MAX_TEXT_CHARS": "0"}) == 0
    assert max_request_text_chars({"QWEN3VL_MAX_REQUEST_TEXT_CHARS": " 77 "}) == 77
    for fn, name in ((max_text_chars, "QWEN3VL_MAX_TEXT_CHARS"),
                     (max_request_text_chars, "QWEN3VL_MAX_REQUEST_TEXT_CHARS")):
        for bad in ("-1", "many", "1e6"):
            with pytest.raises(ValueError, match=name):
                fn({name: bad})


def test_the_smallest_body_read():
    from qwen3vl_vllm.serving.policy import min_body_to_read

    assert min_body_to_read(2048, 4 * 1024 * 1024, 16 * 1024 * 1024) == 4096
    assert min_body_to_read(0, 4 * 1024 * 1024, 16 * 1024 * 1024) == 14188  # isqrt(12 x 16 Mi)
    # a body of L bytes makes at most L^2/12 pair characters (query L/2, L/6 empty documents)
    assert min_body_to_read(0, 0, 1200) == 120
    assert min_body_to_read(0, 0, 5) == 5  # a body of 5 bytes cannot carry 6 characters
    assert min_body_to_read(0, 50, 0) == 50
    assert min_body_to_read(0, 0, 0) is None
    # no body at or under the bound goes over: the most a query and empty documents make
    checked = 0
    for total in (1, 5, 12, 100, 1200, 5000):
        bound = min_body_to_read(0, 0, total)
        for d in range(1, bound):
            # '{"query":"","documents":[]}' is 27 bytes, each empty document 3 more but the last 2
            for body in ({"query": "q" * max(0, bound - 26 - 3 * d), "documents": [""] * d},
                         {"input": "x" * bound}):
                raw = json.dumps(body, separators=(",", ":"))
                if len(raw) <= bound:
                    checked += 1
                    assert text_problem(body, max_text=0, max_total=total) is None, (total, raw)
    assert checked > 50  # the bodies above were built to fit the bound: they were checked


def _policy(monkeypatch, body: bytes, path="/v1/rerank", **env):
    from qwen3vl_vllm.serving.policy import PolicyMiddleware

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reached, sent = [], []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def app(scope, receive, send):
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return chunks.pop(0)

    async def send(m):
        sent.append(m)

    headers = [(b"content-length", str(len(body)).encode())]
    asyncio.run(PolicyMiddleware(app)({"type": "http", "method": "POST", "path": path,
                                       "headers": headers}, receive, send))
    return sent[0]["status"], sent[1]["body"], reached


@pytest.mark.parametrize("path", ["/v1/rerank", "/score", "/v2/rerank", "/invocations", "/tokenize",
                                  "/v1/embeddings", "/pooling"])
def test_the_middleware_applies_them_on_any_path(monkeypatch, path):
    monkeypatch.delenv("QWEN3VL_MAX_TEXT_CHARS", raising=False)
    monkeypatch.delenv("QWEN3VL_MAX_REQUEST_TEXT_CHARS", raising=False)
    # 16,384 x 1,025 + 1,025 = 16,794,625 characters from a 21 KB body
    amplified = json.dumps({"query": "q" * 16384, "documents": ["d"] * 1025}).encode()
    status, out, reached = _policy(monkeypatch, amplified, path=path)
    message = json.loads(out)["error"]["message"]
    assert status == 400 and not reached
    assert message.startswith("query: 16384 characters, tokenised once per document (1025 documents): "
                              "16794625 characters for this request, above this server's limit of 16777216")
    fits = json.dumps({"query": "q" * 16384, "documents": ["d"] * 1023}).encode()  # 16,761,855
    status, out, reached = _policy(monkeypatch, fits, path=path)
    assert status == 200 and reached == [fits]
    long_text = json.dumps({"prompt": "a" * (4 * 1024 * 1024 + 1)}).encode()
    status, out, reached = _policy(monkeypatch, long_text, path=path)
    assert status == 400 and not reached
    assert json.loads(out)["error"]["message"].startswith("prompt: 4194305 characters in one text")


def test_the_middleware_settings(monkeypatch):
    body = json.dumps({"input": ["x" * 3000, "y" * 3000]}).encode()
    status, out, _ = _policy(monkeypatch, body, path="/v1/embeddings", QWEN3VL_MAX_TEXT_CHARS="2999")
    assert status == 400 and json.loads(out)["error"]["message"].startswith("input[0]: 3000 characters")
    status, out, _ = _policy(monkeypatch, body, path="/v1/embeddings", QWEN3VL_MAX_TEXT_CHARS="0",
                             QWEN3VL_MAX_REQUEST_TEXT_CHARS="5999")
    assert status == 400 and json.loads(out)["error"]["message"].startswith("request: 6000 characters")
    status, _, reached = _policy(monkeypatch, body, path="/v1/embeddings", QWEN3VL_MAX_TEXT_CHARS="0",
                                 QWEN3VL_MAX_REQUEST_TEXT_CHARS="0")
    assert status == 200 and reached == [body]
