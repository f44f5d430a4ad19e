"""Any OpenAI- or Cohere-compatible library gets the reference vectors and scores.

The real packages (openai, langchain-openai, llama-index-embeddings-openai-like, cohere) call the
plugin's server exactly as their users do: bare strings, no chat messages. Each result is
compared with the reference vector of ``{"text": t}`` (and its instruction), or the reference
score. Bounds as in the parity matrix: cosine >= 0.999999, |diff| <= 1e-5.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from cases import CLIENT_TEXTS, NAMED_INSTRUCTIONS, noise_image

pytestmark = pytest.mark.slow
COS_BOUND = 0.999999
SCORE_BOUND = 1e-5


def _vec(v) -> np.ndarray:
    """A float list, or base64 little-endian float32 (the SDK leaves it encoded when asked)."""
    if isinstance(v, str):
        return np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32)
    return np.asarray(v, dtype=np.float32)


def _cos_rows(got, ref) -> np.ndarray:
    got = np.stack([_vec(v) for v in got])
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    return (got * ref).sum(axis=1)


@pytest.fixture(scope="module")
def ref_texts(reference_embedder):
    return reference_embedder.process([{"text": t} for t in CLIENT_TEXTS])


@pytest.fixture(scope="module")
def sdk(embedding_server):
    import openai

    return openai.OpenAI(base_url=embedding_server.base_url, api_key="EMPTY", max_retries=0)


def _report(name: str, cos) -> None:
    print(f"ANY-CLIENT {name}: min cosine {float(np.min(cos)):.7f} over {len(cos)} texts")


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_openai_sdk_input_list(sdk, embedding_server, ref_texts, encoding_format):
    resp = sdk.embeddings.create(model=embedding_server.model, input=CLIENT_TEXTS,
                                 encoding_format=encoding_format)
    assert [d.index for d in resp.data] == list(range(len(CLIENT_TEXTS)))  # one batch, in order
    cos = _cos_rows([d.embedding for d in resp.data], ref_texts)
    _report(f"openai SDK input list ({encoding_format})", cos)
    assert cos.min() >= COS_BOUND, cos
    # each vector is its own text's: the nearest reference row is the same index
    assert (np.argmax(np.stack([_vec(d.embedding) for d in resp.data]) @ ref_texts.T, axis=1)
            == np.arange(len(CLIENT_TEXTS))).all()


def test_openai_sdk_single_string_and_dimensions(sdk, embedding_server, reference_embedder):
    text = CLIENT_TEXTS[0]
    raw = reference_embedder.process([{"text": text}], normalize=False)[0]
    one = sdk.embeddings.create(model=embedding_server.model, input=text)
    assert float(np.dot(one.data[0].embedding, raw / np.linalg.norm(raw))) >= COS_BOUND
    for fmt in ("float", "base64"):
        got = sdk.embeddings.create(model=embedding_server.model, input=[text], dimensions=32,
                                    encoding_format=fmt).data[0].embedding
        expected = raw[:32] / np.linalg.norm(raw[:32])
        assert len(_vec(got)) == 32 and np.abs(_vec(got) - expected).max() <= 1e-5


def test_instruction_field_literal_and_named(sdk, embedding_server, reference_embedder):
    texts = CLIENT_TEXTS[:3]
    for instruction, text_of in (("Retrieve images of cars", "Retrieve images of cars"),
                                 ("query", NAMED_INSTRUCTIONS["query"])):
        resp = sdk.embeddings.create(model=embedding_server.model, input=texts,
                                     extra_body={"instruction": instruction})
        ref = reference_embedder.process([{"text": t, "instruction": text_of} for t in texts])
        cos = _cos_rows([d.embedding for d in resp.data], ref)
        _report(f"instruction {instruction!r}", cos)
        assert cos.min() >= COS_BOUND
        plain = reference_embedder.process([{"text": texts[0]}])[0]
        assert float(np.dot(resp.data[0].embedding, plain)) < 0.9999  # the instruction matters


def test_token_ids_are_refused_with_the_fix(embedding_server):
    r = httpx.post(embedding_server.base_url + "/embeddings", timeout=60,
                   json={"model": embedding_server.model, "input": [[1, 2, 3, 4]]})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "token ids" in message and "check_embedding_ctx_length=False" in message, message
    assert "raw_prompt" in message


def test_raw_prompt_opt_in_passes_prebuilt_prompts(embedding_server, reference_embedder,
                                                   embedding_ckpt):
    """A caller who tokenises the whole reference prompt gets the reference vector with
    ``raw_prompt: true``; the same ids without it are refused (above)."""
    from transformers import AutoTokenizer

    conv = reference_embedder.conversations([{"text": "a red car"}])
    prompt = reference_embedder.render(conv)[0]
    ids = AutoTokenizer.from_pretrained(str(embedding_ckpt))(prompt, add_special_tokens=False)["input_ids"]
    ref = reference_embedder.process([{"text": "a red car"}])[0]
    for body_input in ([ids], prompt):
        r = httpx.post(embedding_server.base_url + "/embeddings", timeout=60, json={
            "model": embedding_server.model, "input": body_input, "raw_prompt": True})
        assert r.status_code == 200, r.text
        assert float(np.dot(r.json()["data"][0]["embedding"], ref)) >= COS_BOUND


def test_mixed_input_and_messages_requests_in_order(embedding_server, reference_embedder):
    """One server answers `input` and `messages` requests alike, each with its own vector."""
    import concurrent.futures as cf

    items = [{"text": t} for t in CLIENT_TEXTS[:3]] + [{"text": "a noisy picture", "image": noise_image(64, 64, 3)}]
    ref = reference_embedder.process(items)
    buf = io.BytesIO()
    items[3]["image"].save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    bodies = [{"input": items[0]["text"]},
              {"messages": [{"role": "user", "content": [{"type": "text", "text": items[1]["text"]}]}],
               "add_generation_prompt": True},
              {"input": [items[2]["text"]]},
              {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                         {"type": "text", "text": "a noisy picture"}]}],
               "add_generation_prompt": True}] * 3
    with httpx.Client(timeout=120) as http, cf.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: http.post(embedding_server.base_url + "/embeddings",
                                                    json={"model": embedding_server.model, **b}), bodies))
    for k, r in enumerate(answers):
        assert r.status_code == 200, r.text
        assert float(np.dot(r.json()["data"][0]["embedding"], ref[k % 4])) >= COS_BOUND, k


# ---- third-party libraries


def test_langchain_openai_embeddings(embedding_server, ref_texts, reference_embedder):
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model=embedding_server.model, base_url=embedding_server.base_url,
                           api_key="EMPTY", check_embedding_ctx_length=False)
    docs = emb.embed_documents(CLIENT_TEXTS)
    cos = _cos_rows(docs, ref_texts)
    _report("LangChain embed_documents", cos)
    assert cos.min() >= COS_BOUND
    q = emb.embed_query(CLIENT_TEXTS[1])
    assert float(np.dot(q, ref_texts[1])) >= COS_BOUND
    # a named instruction for queries, through LangChain's model_kwargs -> extra_body
    qemb = OpenAIEmbeddings(model=embedding_server.model, base_url=embedding_server.base_url,
                            api_key="EMPTY", check_embedding_ctx_length=False,
                            model_kwargs={"extra_body": {"instruction": "query"}})
    ref_q = reference_embedder.process([{"text": CLIENT_TEXTS[1],
                                         "instruction": NAMED_INSTRUCTIONS["query"]}])[0]
    assert float(np.dot(qemb.embed_query(CLIENT_TEXTS[1]), ref_q)) >= COS_BOUND


LLAMAINDEX_SCRIPT = """
import json, sys
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
base_url, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
emb = OpenAILikeEmbedding(model_name=model, api_base=base_url, api_key="EMPTY", embed_batch_size=8)
print(json.dumps(emb.get_text_embedding_batch(texts)))
"""


def test_llamaindex_openai_like(embedding_server, reference_embedder):
    """LlamaIndex lives in its own venv (.venv-clients: its setuptools pin clashes with vLLM's),
    as in a user's application; it talks to the server over HTTP like any client."""
    from conftest import ROOT

    python = ROOT / ".venv-clients" / "bin" / "python"
    assert python.exists(), "run ./launch.sh setup first: it creates .venv-clients with LlamaIndex"
    proc = subprocess.run([str(python), "-c", LLAMAINDEX_SCRIPT, embedding_server.base_url,
                           embedding_server.model, json.dumps(CLIENT_TEXTS)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # LlamaIndex's OpenAI embedding client replaces "\n" with " " before sending (its own
    # behaviour): the vector is the reference's for the text it sends
    sent = [t.replace("\n", " ") for t in CLIENT_TEXTS]
    assert sent != CLIENT_TEXTS  # the corpus holds a newline, so this matters
    ref = reference_embedder.process([{"text": t} for t in sent])
    cos = _cos_rows(got, ref)
    _report("LlamaIndex get_text_embedding_batch", cos)
    assert cos.min() >= COS_BOUND


def test_cohere_embed_texts_and_images(embedding_server, ref_texts, reference_embedder):
    import cohere

    co = cohere.ClientV2(base_url=embedding_server.url, api_key="EMPTY")
    texts = [t for t in CLIENT_TEXTS if t]  # Cohere's API refuses empty texts client-side
    ref = ref_texts[[CLIENT_TEXTS.index(t) for t in texts]]
    # input_type -> the named instruction of that name when configured, else the default
    resp = co.embed(model=embedding_server.model, texts=texts, input_type="classification",
                    embedding_types=["float"])
    cos = _cos_rows(resp.embeddings.float_, ref)
    _report("Cohere v2 embed texts (input_type without a named instruction)", cos)
    assert cos.min() >= COS_BOUND
    named = co.embed(model=embedding_server.model, texts=texts[:2], input_type="search_document",
                     embedding_types=["float"])
    ref_named = reference_embedder.process([{"text": t, "instruction": NAMED_INSTRUCTIONS["search_document"]}
                                            for t in texts[:2]])
    cos_named = _cos_rows(named.embeddings.float_, ref_named)
    _report("Cohere v2 embed texts (named input_type)", cos_named)
    assert cos_named.min() >= COS_BOUND
    # (Cohere's v1 embed, POST /v1/embed, is not served by vLLM 0.32: a 404; use ClientV2)
    sized = co.embed(model=embedding_server.model, texts=texts[:1], output_dimension=32,
                     input_type="classification", embedding_types=["float"])
    raw = reference_embedder.process([{"text": texts[0]}], normalize=False)[0]
    assert np.abs(np.asarray(sized.embeddings.float_[0]) - raw[:32] / np.linalg.norm(raw[:32])).max() <= 1e-5
    img = noise_image(150, 100, 1)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    images = co.embed(model=embedding_server.model, images=[url], input_type="image",
                      embedding_types=["float"])
    ref_img = reference_embedder.process([{"image": img}])
    cos_img = _cos_rows(images.embeddings.float_, ref_img)
    _report("Cohere v2 embed images", cos_img)
    assert cos_img.min() >= COS_BOUND


def test_cohere_rerank_v1_v2(reranker_server, reference_reranker):
    import cohere

    docs = ["a cat", "the stock market", "", "a kitten sleeping on a mat"]
    ref = reference_reranker.process({"query": {"text": "a cat sitting on a mat"},
                                      "documents": [{"text": d} for d in docs]})
    for client in (cohere.ClientV2(base_url=reranker_server.url, api_key="EMPTY"),
                   cohere.Client(base_url=reranker_server.url, api_key="EMPTY")):
        resp = client.rerank(model=reranker_server.model, query="a cat sitting on a mat",
                             documents=docs, top_n=4)
        got = {r.index: r.relevance_score for r in resp.results}
        assert sorted(got) == [0, 1, 2, 3]
        diff = max(abs(got[i] - ref[i]) for i in range(4))
        print(f"ANY-CLIENT Cohere {type(client).__name__}.rerank: max |diff| {diff:.2e}")
        assert diff <= SCORE_BOUND
        order = [r.index for r in resp.results]
        assert order == sorted(range(4), key=lambda i: -ref[i])


def test_jina_shaped_rerank_top_n_return_documents(reranker_server, reference_reranker):
    docs = ["a cat", "the stock market", "a kitten sleeping on a mat"]
    ref = reference_reranker.process({"query": {"text": "a cat"}, "documents": [{"text": d} for d in docs]})
    r = httpx.post(reranker_server.url + "/v1/rerank", timeout=60, json={
        "model": reranker_server.model, "query": "a cat", "documents": docs, "top_n": 2,
        "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    best = sorted(range(3), key=lambda i: -ref[i])[:2]
    assert [x["index"] for x in results] == best
    for x in results:
        assert abs(x["relevance_score"] - ref[x["index"]]) <= SCORE_BOUND
        assert x["document"]["text"] == docs[x["index"]]


# ---- vLLM's OpenAI batch runner


def _run_batch(ckpt, lines: list[dict], tmp_path, name: str) -> list[dict]:
    from qwen3vl_vllm.ops.launcher import vllm_env

    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-out.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    env = {**vllm_env(), "QWEN3VL_INSTRUCTIONS": json.dumps(NAMED_INSTRUCTIONS)}
    proc = subprocess.run([sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src),
                           "-o", str(out), "--model", str(ckpt), "--dtype", "float32",
                           "--enforce-eager", "--gpu-memory-utilization", "0.25"],
                          env=env, capture_output=True, text=True, timeout=600)
    # the batch runner's own exit code is vLLM's; the results file is what counts (SPEC §4 abort)
    assert out.exists(), f"run_batch wrote nothing (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert len(rows) == len(lines), rows
    failed = {r["custom_id"]: r.get("error") or (r.get("response") or {}).get("body")
              for r in rows if not ((r.get("response") or {}).get("status_code") == 200)}
    assert not failed, f"rows without a 200: {failed}\n{proc.stderr[-2000:]}"
    return {r["custom_id"]: r for r in rows}


def test_run_batch_embeddings(embedding_ckpt, reference_embedder, tmp_path):
    lines = [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": str(embedding_ckpt), "input": t}} for i, t in enumerate(CLIENT_TEXTS[:3])]
    lines.append({"custom_id": "list", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": str(embedding_ckpt), "input": CLIENT_TEXTS[:2],
                           "instruction": "query"}})
    lines.append({"custom_id": "messages", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": str(embedding_ckpt), "add_generation_prompt": True,
                           "messages": [{"role": "user", "content": [{"type": "text", "text": "a cat"}]}]}})
    # real-world inputs: a phone photo (EXIF orientation 6), a text over 8,192 tokens with the cut
    from cases import exif_photo, long_text

    photo = exif_photo(tmp_path / "phone.jpg")
    lines.append({"custom_id": "photo", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": str(embedding_ckpt), "add_generation_prompt": True, "messages": [
                      {"role": "system", "content": "Represent the user's input."},
                      {"role": "user", "content": [{"type": "image_url", "image_url": {
                          "url": "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()}}]}]}})
    lines.append({"custom_id": "long", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": str(embedding_ckpt), "input": long_text(2500),
                           "truncate_prompt_tokens": -1, "truncation_side": "right"}})
    rows = _run_batch(embedding_ckpt, lines, tmp_path, "embed")
    ref = reference_embedder.process([{"text": t} for t in CLIENT_TEXTS[:3]] + [{"text": "a cat"}])
    real = reference_embedder.process([{"image": str(photo)}, {"text": long_text(2500)}])
    real_cos = _cos_rows([rows[k]["response"]["body"]["data"][0]["embedding"] for k in ("photo", "long")], real)
    _report("run_batch phone photo and long text (cut)", real_cos)
    assert real_cos.min() >= COS_BOUND
    ref_named = reference_embedder.process([{"text": t, "instruction": NAMED_INSTRUCTIONS["query"]}
                                            for t in CLIENT_TEXTS[:2]])
    got = [rows[f"t{i}"]["response"]["body"]["data"][0]["embedding"] for i in range(3)]
    got.append(rows["messages"]["response"]["body"]["data"][0]["embedding"])
    cos = _cos_rows(got, ref)
    named = _cos_rows([d["embedding"] for d in rows["list"]["response"]["body"]["data"]], ref_named)
    _report("run_batch /v1/embeddings", np.concatenate([cos, named]))
    assert cos.min() >= COS_BOUND and named.min() >= COS_BOUND


def test_run_batch_rerank_and_score(reranker_ckpt, reference_reranker, tmp_path):
    from cases import TEXT_LIST_PARTS

    docs = ["a cat", "", "the stock market",
            {"content": [{"type": "text", "text": t} for t in TEXT_LIST_PARTS]}]  # a text list
    ref = reference_reranker.process({"query": {"text": "a cat on a mat"},
                                      "documents": [{"text": d} for d in docs[:3]]
                                      + [{"text": list(TEXT_LIST_PARTS)}]})
    lines = [{"custom_id": "rerank", "method": "POST", "url": "/v1/rerank",
              "body": {"model": str(reranker_ckpt), "query": "a cat on a mat", "documents": docs}},
             {"custom_id": "score", "method": "POST", "url": "/score",
              "body": {"model": str(reranker_ckpt), "queries": "a cat on a mat", "documents": docs}}]
    rows = _run_batch(reranker_ckpt, lines, tmp_path, "rerank")
    rr = {x["index"]: x["relevance_score"] for x in rows["rerank"]["response"]["body"]["results"]}
    sc = {x["index"]: x["score"] for x in rows["score"]["response"]["body"]["data"]}
    diff = max(max(abs(rr[i] - ref[i]), abs(sc[i] - ref[i])) for i in range(len(docs)))
    print(f"ANY-CLIENT run_batch /rerank and /score: max |diff| {diff:.2e}")
    assert sorted(rr) == sorted(sc) == list(range(len(docs))) and diff <= SCORE_BOUND
