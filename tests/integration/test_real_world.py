"""Real-world inputs that used to give other results than the reference, on every path that can
carry them (issue "Real-world inputs"): a phone photo with EXIF orientation 6, the same photo as a
reranker document, a reranker side made of several text parts, and texts longer than the
embedding's 8,192 tokens (cut as the reference cuts them when asked; a 400 naming the fix
otherwise). The table goes to .cache/reports/real_world.json and is printed.

Each row failed before the fix: cosine 0.94 for the photo on every embedding path, |Δ| 0.033
for it as a document, |Δ| 0.02 for text lists, and a 400 for every long text.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from cases import TEXT_LIST_PARTS, exif_photo, long_text, real_world_rerank

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / ".cache" / "reports" / "real_world.json"
COS_BOUND, SCORE_BOUND = 0.999999, 1e-5
CUT = {"truncate_prompt_tokens": -1, "truncation_side": "right"}


def _record(key, value):
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=2))
    print(f"REAL-WORLD {key}: {json.dumps(value)}")


def _jpeg_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def _messages(model, content, **extra):
    return {"model": model, "add_generation_prompt": True, "encoding_format": "float", **extra,
            "messages": [{"role": "system", "content": "Represent the user's input."},
                         {"role": "user", "content": content}]}


def _vec(r) -> np.ndarray:
    assert r.status_code == 200, r.text[:400]
    return np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return exif_photo(tmp_path_factory.mktemp("real") / "phone.jpg", orientation=6)


def test_phone_photo_on_every_embedding_path(photo, offline_results, embedding_server, reference_embedder):
    from qwen3vl_vllm.clients.embedding import EmbeddingClient

    data, _, media = offline_results
    ref = reference_embedder.process([{"image": str(photo)}])[0]
    ref_off = reference_embedder.process([{"image": str(media / "real" / "phone.jpg")}])[0]
    model, url = embedding_server.model, embedding_server.base_url
    with EmbeddingClient(base_url=url) as client:
        got = {"offline": float(data["real/phone"] @ ref_off),
               "client": float(client.embed([{"image": str(photo)}])[0] @ ref)}
    part = {"type": "image_url", "image_url": {"url": _jpeg_url(photo)}}
    got["plain HTTP messages"] = float(_vec(httpx.post(url + "/embeddings", timeout=120,
                                                       json=_messages(model, [part]))) @ ref)
    r = httpx.post(embedding_server.url + "/v2/embed", timeout=120, json={
        "model": model, "images": [_jpeg_url(photo)], "input_type": "clustering",
        "embedding_types": ["float"]})
    assert r.status_code == 200, r.text
    got["/v2/embed"] = float(np.asarray(r.json()["embeddings"]["float"][0]) @ ref)
    _record("phone photo (EXIF 6), embedding cosine", got)
    assert min(got.values()) >= COS_BOUND, got


def test_phone_photo_and_text_lists_as_reranker_sides(photo, offline_rerank, reranker_server,
                                                      reference_reranker):
    from qwen3vl_vllm import RerankClient

    data, media = offline_rerank
    parts = TEXT_LIST_PARTS
    inputs = real_world_rerank(photo)
    ref = reference_reranker.process(inputs)
    url = reranker_server.url
    docs = [{"content": [{"type": "image_url", "image_url": {"url": _jpeg_url(photo)}}]},
            {"content": [{"type": "text", "text": t} for t in parts]},
            {"content": [{"type": "image_url", "image_url": {"url": _jpeg_url(photo)}},
                         {"type": "text", "text": "a cat"}]}]
    rows = {}
    with RerankClient(base_url=reranker_server.base_url) as client:
        rows["client"] = client.score(inputs["query"], inputs["documents"])
    for label, path, body, key, field in (
            ("/rerank", "/v1/rerank", {"query": "a red square on a gradient", "documents": docs}, "results", "relevance_score"),
            ("/score", "/score", {"queries": "a red square on a gradient", "documents": docs}, "data", "score")):
        r = httpx.post(url + path, timeout=120, json={"model": reranker_server.model, **body})
        assert r.status_code == 200, r.text
        rows[label] = [x[field] for x in sorted(r.json()[key], key=lambda x: x["index"])]
    offline_ref = reference_reranker.process(real_world_rerank(media / "real" / "phone.jpg"))
    diffs = {label: max(abs(a - b) for a, b in zip(scores, ref, strict=True)) for label, scores in rows.items()}
    diffs["offline"] = max(abs(a - b) for a, b in zip(data["real"], offline_ref, strict=True))
    _record("photo and text-list documents, reranker max |Δ|", diffs)
    assert max(diffs.values()) <= SCORE_BOUND, diffs


@pytest.mark.parametrize("words", [2500, 4500], ids=["9.3k tokens", "16.7k tokens"])
def test_long_texts_get_the_reference_cut_when_asked(words, offline_results, embedding_server,
                                                     reference_embedder):
    from qwen3vl_vllm.clients.embedding import EmbeddingClient

    text = long_text(words)
    ref = reference_embedder.process([{"text": text}])[0]
    model, url = embedding_server.model, embedding_server.base_url
    got = {}
    part = [{"type": "text", "text": text}]
    got["messages + truncate_prompt_tokens"] = float(_vec(httpx.post(
        url + "/embeddings", timeout=120, json=_messages(model, part, **CUT))) @ ref)
    got["input + truncate_prompt_tokens"] = float(_vec(httpx.post(
        url + "/embeddings", timeout=120, json={"model": model, "input": text, **CUT})) @ ref)
    r = httpx.post(embedding_server.url + "/v2/embed", timeout=120, json={
        "model": model, "texts": [text], "input_type": "clustering", "embedding_types": ["float"]})
    assert r.status_code == 200, r.text  # Cohere's default truncate: END, the reference's cut
    got["/v2/embed (truncate END, default)"] = float(np.asarray(r.json()["embeddings"]["float"][0]) @ ref)
    with EmbeddingClient(base_url=url) as client:
        got["client truncate=True"] = float(client.embed([{"text": text}], truncate=True)[0] @ ref)
    data, errors, _ = offline_results
    got["offline truncate=True"] = float(data[f"real/long{words}"] @ ref)
    refused = {}
    for label, body in (("messages", _messages(model, part)), ("input", {"model": model, "input": text})):
        r = httpx.post(url + "/embeddings", timeout=120, json=body)
        assert r.status_code == 400, r.text[:300]
        message = r.json()["error"]["message"]
        assert "truncate_prompt_tokens" in message and "QWEN3VL_TRUNCATE=1" in message, message
        refused[label] = message[-260:]
    for truncate, fragment in (("NONE", "maximum context length"), ("START", "Send truncate: END")):
        r = httpx.post(embedding_server.url + "/v2/embed", timeout=120, json={
            "model": model, "texts": [text], "input_type": "clustering", "truncate": truncate,
            "embedding_types": ["float"]})
        assert r.status_code == 400 and fragment in r.text, (truncate, r.text[:300])
        refused[f"/v2/embed truncate {truncate}"] = r.json()["error"]["message"][-200:]
    assert errors[f"real/long{words}-default"].startswith("InputError: inputs[0]: the input is")
    assert "truncate=True" in errors[f"real/long{words}-default"]
    _record(f"long text {words} words, cosine with the cut", got)
    _record(f"long text {words} words, refused without the cut", refused)
    assert min(got.values()) >= COS_BOUND, got
