"""`vllm serve` on a reranker checkpoint with the plugin vs the reference reranker."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest

from cases import noise_image, rerank_cases, twenty_documents
from plain_http import plain_side

pytestmark = pytest.mark.slow
TOL = 1e-5  # fp32, tiny checkpoint: measured parity is <= 5e-7
CASES = list(rerank_cases(Path("/tmp/qwen3vl-rerank-case-names")))


@pytest.fixture(scope="session")
def rerank_media(tmp_path_factory):
    return tmp_path_factory.mktemp("rerank-server-media")


@pytest.fixture(scope="session")
def rclient(reranker_server):
    from qwen3vl_vllm import RerankClient

    with RerankClient(base_url=reranker_server.base_url) as c:
        yield c




@pytest.mark.parametrize("case", CASES)
def test_client_score_parity(case, rclient, reference_reranker, rerank_media):
    inputs = rerank_cases(rerank_media)[case]
    ref = reference_reranker.process(inputs)
    got = rclient.score(inputs["query"], inputs["documents"], instruction=inputs.get("instruction"))
    for g, r in zip(got, ref, strict=True):
        print(f"PARITY rerank server+client {case}: reference {r:.7f} vllm {g:.7f} diff {abs(g - r):.2e}")
        assert abs(g - r) <= TOL


# ---- plain HTTP, no project code: original media (tests/plain_http.py)


PLAIN = CASES  # over-long pairs included: the plugin truncates them as the reference does


@pytest.mark.parametrize("endpoint", ["/v1/rerank", "/score"])
@pytest.mark.parametrize("case", PLAIN)
def test_plain_http_parity(case, endpoint, reranker_server, reference_reranker, rerank_media):
    inputs = rerank_cases(rerank_media)[case]
    ref = reference_reranker.process(inputs)
    body = {"model": reranker_server.model}
    if inputs.get("instruction"):
        body["instruction"] = inputs["instruction"]
    q, docs = plain_side(inputs["query"]), [plain_side(d) for d in inputs["documents"]]
    if endpoint == "/v1/rerank":
        body.update(query=q, documents=docs)
    else:
        body.update(queries=q, documents=docs)
    r = httpx.post(reranker_server.url + endpoint, json=body, timeout=120)
    assert r.status_code == 200, r.text
    if endpoint == "/v1/rerank":
        got = [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])]
    else:
        got = [x["score"] for x in sorted(r.json()["data"], key=lambda x: x["index"])]
    for g, e in zip(got, ref, strict=True):
        print(f"PARITY rerank plain {endpoint} {case}: reference {e:.7f} vllm {g:.7f} diff {abs(g - e):.2e}")
    assert max(abs(g - e) for g, e in zip(got, ref, strict=True)) <= TOL


def test_over_length_cut_position_matters(reference_reranker, rerank_media):
    """The over-length cases can fail: cutting the pair 14 tokens off (an image counted as one
    token instead of its 15) moves the reference score by more than the parity bound."""
    inputs = rerank_cases(rerank_media)["over max_length+image"]
    right = reference_reranker.process(inputs)[0]
    keep = reference_reranker.max_length
    try:
        reference_reranker.max_length = keep - 14
        wrong = reference_reranker.process(inputs)[0]
    finally:
        reference_reranker.max_length = keep
    print(f"PARITY rerank cut sensitivity: right {right:.7f} off-by-14 {wrong:.7f}")
    assert abs(right - wrong) > 10 * TOL


def test_twenty_documents_one_request(rclient, reference_reranker):
    inputs = twenty_documents()
    ref = reference_reranker.process(inputs)  # 20 single-pair forwards
    rclient.chunk_size = 32  # all 20 in one /rerank request
    hits = rclient.rerank(inputs["query"], inputs["documents"])
    assert sorted(h.index for h in hits) == list(range(20))
    for h in hits:
        assert abs(h.relevance_score - ref[h.index]) <= TOL
    scores = [h.relevance_score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_top_n_sorting_and_documents(rclient, reference_reranker):
    inputs = twenty_documents()
    ref = reference_reranker.process(inputs)
    hits = rclient.rerank(inputs["query"], inputs["documents"], top_n=5, return_documents=True)
    expected = sorted(range(20), key=lambda i: -ref[i])[:5]
    assert [h.index for h in hits] == expected
    assert all(h.document is inputs["documents"][h.index] for h in hits)


def test_chunked_requests_keep_indices(rclient, reference_reranker):
    inputs = twenty_documents()
    ref = reference_reranker.process(inputs)
    rclient.chunk_size = 6
    try:
        got = rclient.score(inputs["query"], inputs["documents"])
    finally:
        rclient.chunk_size = 32
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) <= TOL


def test_same_prompt_for_any_part_order(rclient, reranker_server, reference_reranker):
    """Whatever the order of a document's parts (dict keys for the client, content parts over
    plain HTTP), the score is the reference's, which puts images before texts. The image must
    count: the same document without it scores differently (so this test can fail)."""
    img = noise_image(64, 64, 5)
    ref = reference_reranker.process({"query": {"text": "q"}, "documents": [{"text": "t", "image": img}]})[0]
    a = rclient.score({"text": "q"}, [{"text": "t", "image": img}])[0]
    b = rclient.score({"text": "q"}, [{"image": img, "text": "t"}])[0]
    assert a == b and abs(a - ref) <= TOL
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    text, image = {"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": url}}
    r = httpx.post(reranker_server.url + "/score", timeout=60, json={
        "model": reranker_server.model, "queries": "q",
        "documents": [{"content": [text, image]}, {"content": [image, text]}]})
    assert r.status_code == 200, r.text
    assert all(abs(d["score"] - ref) <= TOL for d in r.json()["data"])  # vLLM puts media first
    text_only = reference_reranker.process({"query": {"text": "q"}, "documents": [{"text": "t"}]})[0]
    assert abs(text_only - ref) > 10 * TOL


@pytest.mark.parametrize("top_n", [0, 21, -1])
def test_top_n_out_of_range(rclient, top_n):
    from qwen3vl_vllm.errors import InputError

    inputs = twenty_documents()
    with pytest.raises(InputError, match="top_n"):
        rclient.rerank(inputs["query"], inputs["documents"], top_n=top_n)


def test_corrupt_document_400_and_server_keeps_serving(reranker_server, rclient):
    from qwen3vl_vllm.errors import MediaError

    with pytest.raises(MediaError, match=r"^documents\[1\]\.image\[0\]"):
        rclient.score({"text": "q"}, [{"text": "ok"}, {"image": b"broken"}, {"text": "ok"}])
    bad = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    r = httpx.post(reranker_server.url + "/v1/rerank", timeout=60, json={
        "query": "a cat", "documents": ["ok", {"content": [{"type": "image_url", "image_url": {"url": bad}}]}]})
    assert r.status_code == 400
    assert "documents[1]" in r.json()["error"]["message"]
    assert len(rclient.score({"text": "q"}, [{"text": "still"}, {"text": "serving"}])) == 2


def test_async_rerank_matches(reranker_server, rclient):
    import asyncio

    from qwen3vl_vllm import AsyncRerankClient

    inputs = twenty_documents()

    async def run():
        async with AsyncRerankClient(base_url=reranker_server.base_url) as ac:
            return await ac.score(inputs["query"], inputs["documents"])

    got, want = asyncio.run(run()), rclient.score(inputs["query"], inputs["documents"])
    # the same scores up to float32 noise: two requests for the same pairs are not bit-identical
    # on a server (batch composition, cached prefixes; seen once: |diff| 1.2e-7); the parity
    # matrix's bound
    assert len(got) == len(want) == len(inputs["documents"])
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-5, list(zip(got, want))
